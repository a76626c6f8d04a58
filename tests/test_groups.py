"""The short nodes (issue 28): where ComfyUI has DynamicCombo the Segmentation and Video nodes group their rarely
changed inputs; the groups' values map back onto the engine's options, and workflows saved with the flat inputs
map onto the grouped choices that keep every value."""
import json
import shutil
import subprocess

import pytest

from conftest import ROOT
from nodetools import DYNAMIC_IO, FAKE_IO, schema
from pack import pack_module

groups = pack_module("nodes.groups")
common = pack_module("nodes.common")
errors = pack_module("sa2va.errors")
segmentation = pack_module("nodes.segmentation")
video = pack_module("nodes.video")
NODES = {"Sa2VASegmentation": segmentation.Sa2VASegmentation, "Sa2VAVideoSegmentation": video.Sa2VAVideoSegmentation}
SAVED = ROOT / "tests" / "data" / "workflows" / "flat_inputs_saved_by_comfyui_0.8.json"


def _widgets(declared: dict) -> list:
    return [s for s in declared["inputs"] if s.kind in ("String", "Combo", "Int", "Float", "Boolean")]


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_without_dynamic_combo_the_inputs_stay_flat_in_saved_order_with_the_layout_defaults(node_id):
    layout = groups.LAYOUTS[node_id]
    widgets = _widgets(schema(NODES[node_id], FAKE_IO))
    assert [s.name for s in widgets] == list(layout.flat)
    assert {s.name: s.kw["default"] for s in widgets} == dict(layout.defaults)


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_with_dynamic_combo_every_flat_input_is_shown_set_or_ignored_by_each_choice(node_id):
    layout = groups.LAYOUTS[node_id]
    declared = schema(NODES[node_id], DYNAMIC_IO)["inputs"]
    flat = {s.name: s for s in _widgets(schema(NODES[node_id], FAKE_IO))}
    top = [s.name for s in declared if s.kind in ("String", "Combo", "Int", "Float", "Boolean", "DynamicCombo")]
    assert top == [e if isinstance(e, str) else e.name for e in layout.grouped]
    assert declared[0].kind == "Image" and {s.name for s in declared if s.kind not in ("DynamicCombo",)} - \
        set(top) == {s.name for s in schema(NODES[node_id], FAKE_IO)["inputs"]} - set(layout.flat)
    combos = [s for s in declared if s.kind == "DynamicCombo"]
    assert [groups.LAYOUT_KEY in (s.kw.get("extra_dict") or {}) for s in combos] == [True] + [False] * (len(combos) - 1)
    assert json.loads(json.dumps(combos[0].kw["extra_dict"][groups.LAYOUT_KEY]))["flat"] == list(layout.flat)
    plain = {n for n in top if n in flat}
    for combo, group in zip(combos, layout.groups):
        assert combo.kw["tooltip"] and [o.key for o in combo.kw["options"]] == [c.key for c in group.choices]
        for option, choice in zip(combo.kw["options"], group.choices):
            assert [i.name for i in option.inputs] == list(choice.inputs)
            assert not any(i.optional for i in option.inputs), "choices list their inputs as required, in order"
            assert all(i.kw["tooltip"] == flat[i.name].kw["tooltip"] for i in option.inputs)
            accounted = set(choice.inputs) | set(choice.sets) | set(choice.ignores)
            assert accounted <= set(group.names) and not accounted & plain
    assert plain | {n for g in layout.groups for n in g.names} == set(layout.flat)


def test_each_refinement_choice_maps_onto_the_engine_settings():
    def settings(choice, **shown):
        flat = groups.flatten(groups.SEGMENTATION, {"refinement": {"refinement": choice, **shown}})
        return common.refine_settings(**flat, mask_threshold=0.3, apply_mask_threshold=True)

    default = settings("FastMatte")
    assert (default.process_details, default.detail_method, default.black_point, default.guided_radius) == \
        (True, "FastMatte", 0.05, 8)
    custom = settings("FastMatte (custom)", black_point=0.1, white_point=0.9, detail_erode=1, detail_dilate=2,
                      guided_radius=16, guided_eps=0.05)
    assert (custom.black_point, custom.white_point, custom.detail_erode, custom.detail_dilate, custom.guided_radius,
            custom.guided_eps) == (0.1, 0.9, 1, 2, 16, 0.05)
    matting = settings("VITMatte (custom)", black_point=0.2, white_point=0.8, detail_erode=0, detail_dilate=3,
                       vitmatte_max_megapixels=1.5)
    assert (matting.detail_method, matting.max_megapixels, matting.detail_dilate, matting.needs_matter) == \
        ("VITMatte", 1.5, 3, True)
    assert settings("VITMatte").needs_matter and settings("VITMatte").max_megapixels == 2.0
    levels = settings("levels only", black_point=0.3, white_point=0.7, detail_erode=0, detail_dilate=0)
    assert (levels.process_details, levels.detail_method, levels.black_point) == (True, "none", 0.3)
    assert settings("off").process_details is False
    assert groups.flatten(groups.SEGMENTATION, {"refinement": {}}) == {"process_details": True,
                                                                        "detail_method": "FastMatte"}


def test_a_choice_the_node_does_not_have_is_a_clear_error():
    with pytest.raises(errors.InputError, match="refinement must be one of FastMatte"):
        groups.flatten(groups.SEGMENTATION, {"refinement": {"refinement": "sharpen"}})


@pytest.mark.parametrize("node_id, extra", [("Sa2VASegmentation", {"image": "IMAGE", "segmentation_prompt": "dog"}),
                                            ("Sa2VAVideoSegmentation", {"frames": "IMAGE", "prompt": "dog"})])
def test_execute_passes_grouped_inputs_on_as_the_flat_arguments(node_id, extra, monkeypatch):
    """What ComfyUI gives ``execute`` for grouped inputs (a dict per group, its choice under the group's name)
    reaches the node's work as the flat arguments the engine's options are made of."""
    seen = {}
    node = NODES[node_id]
    monkeypatch.setattr(node, "segment", classmethod(lambda cls, **kw: seen.update(kw)))
    options = {"options": "custom", "max_new_tokens": 64, "mask_threshold": 0.4, "apply_mask_threshold": False,
               "min_score": 0.25}
    options.update({"prompt_per_line": True} if node_id == "Sa2VASegmentation" else
                   {"key_frame_spacing": "even", "offload_frames": False, "offload_state": True})
    node.execute(**extra, model_name="m", task="ask", options=options,
                 model_options={"model_options": "custom", "dtype": "fp16", "quantization": "8bit",
                                "clean_vram_after": True},
                 **({"refinement": {"refinement": "off"}} if node_id == "Sa2VASegmentation" else {}))
    expected = {**extra, "model_name": "m", "task": "ask", "dtype": "fp16", "quantization": "8bit",
                "clean_vram_after": True, **{k: v for k, v in options.items() if k != "options"}}
    if node_id == "Sa2VASegmentation":
        expected["process_details"] = False
    assert seen == expected
    seen.clear()
    node.execute(**extra, model_name="m", task="segment", options={"options": "defaults"},
                 model_options={"model_options": "defaults"},
                 **({"refinement": {"refinement": "FastMatte"}} if node_id == "Sa2VASegmentation" else {}))
    assert seen == {**extra, "model_name": "m", "task": "segment",
                    **({"process_details": True, "detail_method": "FastMatte"} if node_id == "Sa2VASegmentation"
                       else {})}


def test_a_workflow_saved_with_the_flat_inputs_keeps_every_value_in_the_grouped_layout():
    """The nodes of a workflow saved by ComfyUI 0.8's page with the flat inputs (non-default values everywhere):
    the grouped values the page's migration writes (web/sa2va.js does what groups.grouped_values does), and back to
    the flat values through the inputs ComfyUI then passes (nothing that matters is lost)."""
    workflow = json.loads(SAVED.read_text())
    found = {}
    for node in workflow["nodes"]:
        if node["type"] not in groups.LAYOUTS:
            continue
        layout = groups.LAYOUTS[node["type"]]
        flat = dict(zip(layout.flat, node["widgets_values"]))
        values = groups.grouped_values(layout, flat)
        found[node["id"]] = values
        api = groups.api_inputs(layout, flat)
        back = {**layout.defaults, **groups.flat_from_api(layout, api)}
        ignored = {n for g in layout.groups for n in g.choice(api[g.name]).ignores}
        assert {k: v for k, v in back.items() if k not in ignored} == \
            {k: v for k, v in flat.items() if k not in ignored}, node["id"]
    assert found[2] == ["the red box", "Sa2VA-Qwen3-VL-4B", "ask", "VITMatte (custom)", 0.1, 0.9, 0, 2, 1.5,
                        "custom", 64, 0.4, True, 0.25, True, "custom", "auto", "8bit", False]
    assert found[3][3:5] == ["off", "custom"] and found[5][3] == "FastMatte (custom)" and found[5][-2:] == \
        ["defaults", "defaults"]
    assert found[4] == ["the dog", "Sa2VA-Qwen3-VL-4B", "describe", 3, "consistent", "custom", "even", 512, 0.6,
                        True, 0.0, True, True, "custom", "fp16", "none", False]


def test_every_example_workflow_opens_with_its_values_in_the_grouped_layout():
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            layout = groups.LAYOUTS.get(node["type"])
            if layout is not None:
                flat = dict(zip(layout.flat, node["widgets_values"]))
                assert len(node["widgets_values"]) == len(layout.flat), path.name
                values = groups.grouped_values(layout, flat)
                assert values[:3] == [flat[n] for n in layout.grouped[:3]], path.name


def test_the_page_checks_skip_with_a_message_without_a_browser(capsys):
    from live_browser import check_page, unavailable

    assert "no Chromium at /no/such/chromium" in unavailable("/no/such/chromium")
    assert check_page(None, ROOT, report=None, status_of=None, chromium="/no/such/chromium") == []
    assert json.loads(capsys.readouterr().out)["skipped"].startswith("no Chromium")


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run web/migrate.js")
def test_the_page_migration_writes_what_groups_grouped_values_writes(tmp_path):
    """web/migrate.js (what the page runs before it configures a workflow) under Node.js, on the saved workflow and
    every example: the same grouped values as groups.grouped_values, connected inputs kept and re-slotted."""
    tables = {node_id: groups.layout_table(layout) for node_id, layout in groups.LAYOUTS.items()}
    workflows = [json.loads(SAVED.read_text())] + [json.loads(p.read_text()) for p in
                                                    sorted((ROOT / "example_workflows").glob("*.json"))]
    (tmp_path / "in.json").write_text(json.dumps({"tables": tables, "workflows": workflows}))
    script = ("import {migrateGraph} from " + json.dumps((ROOT / "web" / "migrate.js").as_uri()) + ";\n"
              "import {readFileSync} from 'node:fs';\n"
              "const data = JSON.parse(readFileSync(process.argv[1], 'utf8'));\n"
              "const counts = data.workflows.map((w) => migrateGraph(w, data.tables));\n"
              "console.log(JSON.stringify({counts, workflows: data.workflows}));\n")
    run = subprocess.run(["node", "--input-type=module", "-e", script, str(tmp_path / "in.json")],
                         capture_output=True, text=True, timeout=60, check=True)
    migrated = json.loads(run.stdout)
    for before, after, count in zip(workflows, migrated["workflows"], migrated["counts"]):
        ours = [n for n in before["nodes"] if n["type"] in groups.LAYOUTS]
        assert count == len(ours) > 0
        nodes = {n["id"]: n for n in after["nodes"]}
        for node in ours:
            layout = groups.LAYOUTS[node["type"]]
            assert nodes[node["id"]]["widgets_values"] == \
                groups.grouped_values(layout, dict(zip(layout.flat, node["widgets_values"])))
            inputs = nodes[node["id"]]["inputs"]
            assert all("widget" not in i for i in inputs), "unconnected widget inputs are left to the page"
            for slot, entry in enumerate(inputs):
                if entry.get("link") is not None:
                    assert [link[4] for link in after["links"] if link[0] == entry["link"]] == [slot]
    assert grouped_workflows_are_left_alone(migrated["workflows"], tables, tmp_path)


def grouped_workflows_are_left_alone(workflows: list, tables: dict, tmp_path) -> bool:
    """A workflow already in the grouped layout is left as it is (its values do not follow the flat order)."""
    (tmp_path / "again.json").write_text(json.dumps({"tables": tables, "workflows": workflows}))
    script = ("import {migrateGraph} from " + json.dumps((ROOT / "web" / "migrate.js").as_uri()) + ";\n"
              "import {readFileSync} from 'node:fs';\n"
              "const data = JSON.parse(readFileSync(process.argv[1], 'utf8'));\n"
              "console.log(JSON.stringify(data.workflows.map((w) => migrateGraph(w, data.tables))));\n")
    run = subprocess.run(["node", "--input-type=module", "-e", script, str(tmp_path / "again.json")],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(run.stdout) == [0] * len(workflows)
