"""The node logic called directly (bridge in plain mode) on tiny checkpoints, and the declared V3 schemas."""
import os
import shutil
import sys

import pytest
import torch

from conftest import ids
from fakehub import FakeHub
from nodetools import force_answers, refine_mask, segment
from nodetools import schema as node_schema
from pack import load_pack, pack_module

from sa2va.requests import as_request

segmentation = pack_module("nodes.segmentation")
common = pack_module("nodes.common")
refine_nodes = pack_module("nodes.refine")
loader = pack_module("nodes.loader")
comfy = pack_module("nodes.comfy")
errors = pack_module("sa2va.errors")
synthetic = pack_module("sa2va.testing")


@pytest.fixture
def models_dir(tiny_models_dir):
    return tiny_models_dir


@pytest.fixture
def handle(models_dir):
    return loader.load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")


def test_batch_outputs_are_aligned(handle, monkeypatch):
    tok = handle.model.tokenizer
    seg, end = tok.convert_tokens_to_ids("[SEG]"), tok.convert_tokens_to_ids("<|im_end|>")
    answer = ids(handle.model, "<p>cat</p>") + [seg] + ids(handle.model, " <p>dog</p>") + [seg, end]
    force_answers(handle.model, monkeypatch, answer)
    images = torch.rand(3, 48, 64, 3)
    r = segment(images, "cats and dogs", handle, max_new_tokens=16)
    assert r.masks.shape == (6, 48, 64) and r.masks.dtype == torch.float32
    assert r.merged_mask.shape == (3, 48, 64)
    assert r.mask_images.shape == (6, 48, 64, 3) and r.overlay.shape == (3, 48, 64, 3)
    assert r.phrases.splitlines() == ["0: cat", "0: dog", "1: cat", "1: dog", "2: cat", "2: dog"]
    assert len(r.text.split("\n\n")) == 3
    for i in range(3):
        assert torch.equal(r.merged_mask[i], r.masks[2 * i:2 * i + 2].amax(0))
    assert float(r.overlay.min()) >= 0 and float(r.overlay.max()) <= 1


def test_threshold_semantics(handle):
    image = torch.rand(1, 40, 50, 3)
    soft = segment(image, "person", handle, max_new_tokens=16, apply_mask_threshold=False)
    assert soft.masks.shape[0] == 1
    assert ((soft.masks > 0) & (soft.masks < 1)).any(), "unthresholded masks are probabilities"
    hard = segment(image, "person", handle, max_new_tokens=16, mask_threshold=0.3)
    assert set(hard.masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.masks, (soft.masks >= 0.3).float())
    higher = segment(image, "person", handle, max_new_tokens=16, mask_threshold=0.9)
    assert higher.masks.sum() <= hard.masks.sum()


def test_answer_without_seg_gives_empty_masks_and_text(handle, monkeypatch):
    end = handle.model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    force_answers(handle.model, monkeypatch, ids(handle.model, "It is a dog.") + [end])
    r = segment(torch.rand(2, 30, 40, 3), "What is this?", handle, max_new_tokens=16)
    assert r.masks.shape == (2, 30, 40) and float(r.masks.abs().sum()) == 0
    assert r.merged_mask.shape == (2, 30, 40)
    assert r.text == "It is a dog.\n\nIt is a dog."
    assert r.phrases.splitlines() == ["0: (none)", "1: (none)"]


@pytest.mark.parametrize("prompt, expected", [
    ("hair", "Please segment the hair."), ("red car", "Please segment the red car."),
    ("the tall man", "Please segment the tall man."), ("What is this?", "What is this?"),
    ("Please segment the cat.", "Please segment the cat."), ("segment the dog", "segment the dog"),
    ("a dog running on the beach at dusk", "a dog running on the beach at dusk"),
])
def test_bare_noun_becomes_a_segmentation_request(prompt, expected):
    assert as_request(prompt) == expected


def test_bad_inputs(handle):
    with pytest.raises(errors.InputError, match="prompt is empty"):
        segment(torch.rand(1, 8, 8, 3), "   ", handle)
    with pytest.raises(errors.InputError, match=r"Expected a ComfyUI IMAGE"):
        segment(torch.rand(8, 8, 3), "cat", handle)
    with pytest.raises(errors.InputError, match="mask_threshold"):
        segment(torch.rand(1, 8, 8, 3), "cat", handle, mask_threshold=1.5)


def test_cancel_stops_generation_within_a_token(handle, monkeypatch):
    """Cancel pressed after the first generated token: the batch (both images generated together) stops within a
    token, between two layers of the language model or at the token's end, and no mask is made."""
    tokens = {"n": 0}
    lm_head = handle.model.vlm.get_output_embeddings()
    hook = lm_head.register_forward_hook(lambda *args: tokens.update(n=tokens["n"] + 1))

    def throw():
        if tokens["n"] >= 2:
            raise comfy.Interrupted("cancelled")

    monkeypatch.setattr(comfy, "interrupted", lambda: tokens["n"] >= 2)  # prefill's logits, then one token
    monkeypatch.setattr(comfy, "throw_if_interrupted", throw)
    rows = []
    original = handle.model.generator.answer_rows
    monkeypatch.setattr(handle.model.generator, "answer_rows",
                        lambda *a, **k: rows.append(len(a[0])) or original(*a, **k))
    decoded = []
    monkeypatch.setattr(handle.model.decoder, "decode_groups", lambda *a, **k: decoded.append(a))
    try:
        with pytest.raises(comfy.Interrupted):
            segment(torch.rand(2, 20, 20, 3), "person", handle, max_new_tokens=200)
    finally:
        hook.remove()
    assert rows == [2] and tokens["n"] <= 3 and not decoded


def test_node_without_loader_uses_one_slot_and_clean_vram_after_empties_it(models_dir):
    slot = common.MODEL_SLOT
    slot.release()
    image = torch.rand(1, 20, 24, 3)
    segment(image, "person", None, model_name="tiny-qwen3", max_new_tokens=8)
    (first,) = slot.values.values()
    segment(image, "person", None, model_name="tiny-qwen3", max_new_tokens=8)
    assert list(slot.values.values()) == [first], "the same model is reused, not reloaded"
    segment(image, "person", None, model_name="tiny-qwen3", max_new_tokens=8, clean_vram_after=True)
    assert slot.empty


def test_model_choices_list_official_then_local(models_dir):
    choices = loader.model_choices()
    official = [entry.name for entry in pack_module("sa2va.hub.catalog").CATALOG]
    assert choices[0] == "Sa2VA-Qwen3-VL-4B" and choices == official + ["tiny-qwen3"] and len(official) == 13
    (models_dir / "not-a-model").mkdir()
    assert "not-a-model" not in loader.model_choices()


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".hidden"])
def test_model_names_cannot_escape_the_models_folder(models_dir, name):
    with pytest.raises(errors.InputError, match="not a plain folder name"):
        loader.find_local(name)


def test_symlinked_model_folder_is_used_as_it_is(models_dir, tmp_path):
    """Models on another drive: a symlink the user placed in models/sa2va/ is used, as ComfyUI's loaders do."""
    other_drive = tmp_path / "other-drive" / "Sa2VA-Qwen3-VL-4B"
    shutil.copytree(models_dir / "tiny-qwen3", other_drive)
    (models_dir / "Sa2VA-Qwen3-VL-4B").symlink_to(other_drive)
    assert loader.find_local("Sa2VA-Qwen3-VL-4B") == models_dir / "Sa2VA-Qwen3-VL-4B"
    assert loader.ensure_model_folder("Sa2VA-Qwen3-VL-4B") == models_dir / "Sa2VA-Qwen3-VL-4B"
    assert "Sa2VA-Qwen3-VL-4B" in loader.model_choices()


def test_symlinked_sa2va_folder_is_used_as_it_is(models_dir, tmp_path, monkeypatch):
    link = tmp_path / "ComfyUI" / "models" / "sa2va"
    link.parent.mkdir(parents=True)
    link.symlink_to(models_dir)
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(link))
    assert loader.find_local("tiny-qwen3") == link / "tiny-qwen3"
    assert "tiny-qwen3" in loader.local_models()


def test_complete_folder_loads_without_network(models_dir, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network used for a complete local folder")

    monkeypatch.setattr(socket, "create_connection", no_network)  # what http.client connects with
    shutil.copytree(models_dir / "tiny-qwen3", models_dir / "Sa2VA-Qwen3-VL-4B")
    handle = loader.load_handle(model="Sa2VA-Qwen3-VL-4B", dtype="fp32", device="cpu")
    assert handle.model.folder == models_dir / "Sa2VA-Qwen3-VL-4B"


def test_missing_official_model_is_downloaded_then_loaded(models_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub({"ByteDance/Sa2VA-Qwen2_5-VL-3B": models_dir / "tiny-qwen3"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        handle = loader.load_handle(model="Sa2VA-Qwen2_5-VL-3B", dtype="fp32", device="cpu")
    assert handle.model.folder == models_dir / "Sa2VA-Qwen2_5-VL-3B"
    assert not list((models_dir / "Sa2VA-Qwen2_5-VL-3B").glob("*.part"))


def test_unknown_local_name_is_a_clear_error(models_dir):
    with pytest.raises(errors.ModelFolderError, match="not found in"):
        loader.load_handle(model="no-such-model")


def test_v3_schema_with_a_test_double():
    """The declared schema (ids, defaults, tooltips) checked against a stand-in for comfy_api.latest."""
    recorded = {n.__name__: node_schema(n) for n in (loader.Sa2VALoader, segmentation.Sa2VASegmentation,
                                               refine_nodes.Sa2VARefineMask)}
    recorded = {s["node_id"]: s for s in recorded.values()}
    loader_schema, seg_schema = recorded["Sa2VALoader"], recorded["Sa2VASegmentation"]
    assert loader_schema["category"] == seg_schema["category"] == "Sa2VA"
    for schema in (loader_schema, seg_schema):
        for spec in schema["inputs"] + schema["outputs"]:
            assert spec.kw.get("tooltip"), f"{schema['node_id']}.{spec.name or spec.kw.get('display_name')}"
    inputs = {s.name: s for s in seg_schema["inputs"]}
    assert inputs["mask_threshold"].kw["default"] == 0.30
    assert inputs["apply_mask_threshold"].kw["default"] is True
    assert inputs["segmentation_prompt"].kw["multiline"] is True
    assert inputs["model"].kind == "SA2VA_MODEL" and inputs["model"].kw["optional"] is True
    assert inputs["model_name"].kw["options"][0] == "Sa2VA-Qwen3-VL-4B"
    # saved workflows connect outputs by index: new outputs only ever come last
    assert [s.kw["display_name"] for s in seg_schema["outputs"]] == [
        "masks", "merged_mask", "mask_images", "overlay", "text", "phrases", "scores", "boxes"]
    assert seg_schema["outputs"][-1].kind == "String", "no BOUNDING_BOX type in this ComfyUI: boxes as JSON text"
    # new inputs are optional, with defaults that keep the old behaviour, after every older widget
    names = [s.name for s in seg_schema["inputs"]]
    assert names[-4:] == ["regions", "prompt_per_line", "min_score", "task"]
    assert inputs["regions"].kind == "Mask" and inputs["regions"].kw["optional"] is True
    assert inputs["prompt_per_line"].kw == {**inputs["prompt_per_line"].kw, "default": False, "optional": True}
    assert inputs["min_score"].kw["default"] == 0.0 and inputs["min_score"].kw["optional"] is True
    loader_inputs = {s.name: s for s in loader_schema["inputs"]}
    assert [s.name for s in loader_schema["inputs"]] == ["model", "dtype", "quantization", "attention", "device",
                                                         "gpu_split"]
    assert loader_inputs["gpu_split"].kw["default"] == "off" and loader_inputs["gpu_split"].kw["optional"] is True
    for name, default in (("black_point", 0.05), ("white_point", 0.95), ("detail_method", "FastMatte"),
                          ("detail_erode", 0), ("detail_dilate", 0), ("process_details", True),
                          ("vitmatte_max_megapixels", 2.0)):
        assert inputs[name].kw["default"] == default, name
    refine_schema = recorded["Sa2VARefineMask"]
    assert [s.name for s in refine_schema["inputs"]][:2] == ["image", "mask"]
    assert all(s.kw.get("tooltip") for s in refine_schema["inputs"])


def test_pack_imports_outside_comfyui_without_registering_nodes():
    module = load_pack()
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")
    assert os.path.isfile(module.__file__)


def test_nodes_import_without_transformers_and_fail_clearly_when_run(monkeypatch, models_dir):
    """A missing transformers must not break ComfyUI's start-up: only running a node reports it."""
    import importlib.metadata as metadata

    compat = pack_module("sa2va.compat")
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "4.46.0" if name == "transformers" else real(name))
    assert "too old" in compat.transformers_problem()
    with pytest.raises(errors.DependencyError, match=r"Transformers 4\.46\.0 is too old.*pip install -U"):
        loader.load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")


def test_node_modules_do_not_import_transformers_at_import_time():
    import subprocess

    code = ("import sys; sys.path.insert(0, 'tests'); from pack import pack_module; pack_module('nodes.loader'); "
            "pack_module('nodes.segmentation'); print('transformers' in sys.modules)")
    root = str(pack_module("nodes.comfy").__file__).rsplit("/nodes/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"



def test_refine_mask_node_broadcasts_and_resizes():
    image = torch.rand(3, 32, 48, 3)
    mask = torch.zeros(1, 16, 24)
    mask[:, 4:12, 6:18] = 1.0
    out = refine_mask(image, mask, apply_mask_threshold=False).mask
    assert out.shape == (3, 32, 48) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    hard = refine_mask(image, mask, apply_mask_threshold=True, mask_threshold=0.5).mask
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(errors.InputError, match="and MASK batch"):
        refine_mask(torch.rand(3, 8, 8, 3), torch.rand(2, 8, 8))


def test_segmentation_with_vitmatte_uses_the_local_model_and_frees_it(handle, models_dir, tiny_vitmatte):
    target = models_dir.parent / "vitmatte" / "vitmatte-small-composition-1k"
    shutil.copytree(tiny_vitmatte, target)
    settings = dict(detail_method="VITMatte", detail_erode=2, detail_dilate=2, vitmatte_max_megapixels=0.01)
    r = segment(torch.rand(2, 40, 48, 3), "person", handle, max_new_tokens=16, apply_mask_threshold=False,
                **settings)
    assert r.masks.shape == (2, 40, 48)
    assert not refine_nodes.MATTER_SLOT.empty
    segment(torch.rand(1, 40, 48, 3), "person", handle, max_new_tokens=16, clean_vram_after=True, **settings)
    assert refine_nodes.MATTER_SLOT.empty


def test_internvl_release_without_processor_files_downloads_and_counts_complete(models_dir, monkeypatch,
                                                                                checkpoint_factory):
    remote = checkpoint_factory("internvl")
    assert not (remote / "preprocessor_config.json").exists()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub({"ByteDance/Sa2VA-InternVL3-2B": remote}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        folder = loader.ensure_model_folder("Sa2VA-InternVL3-2B")
        requests = len(hub.requests)
        assert loader.ensure_model_folder("Sa2VA-InternVL3-2B") == folder
        assert len(hub.requests) == requests, "a complete InternVL folder is used without any network call"


def test_llava_model_runs_through_the_nodes_unchanged(tmp_path, monkeypatch, checkpoint_factory):
    """Sa2VA-LLaVA through the loader, the segmentation node (a batch, several lines) and the video node."""
    from nodetools import segment_video

    base = tmp_path / "models" / "sa2va"
    base.mkdir(parents=True)
    shutil.copytree(checkpoint_factory("llava"), base / "tiny-llava")
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(base))
    handle = loader.load_handle(model="tiny-llava", dtype="fp32", device="cpu")
    assert handle.model.family == "llava"
    r = segment(torch.rand(2, 48, 64, 3), "person", handle, max_new_tokens=16, process_details=False)
    assert r.masks.shape == (2, 48, 64) and r.merged_mask.shape == (2, 48, 64)
    assert r.text.split("\n\n") == ["Sure, it is."] * 2
    assert r.phrases.splitlines() == ["0: person", "1: person"]
    lines = segment(torch.rand(1, 48, 64, 3), "the cat\nthe dog", handle, max_new_tokens=16, prompt_per_line=True,
                    process_details=False)
    assert lines.masks.shape == (2, 48, 64)
    with pytest.raises(errors.InputError, match="Region prompts need a Sa2VA-InternVL3 model"):
        segment(torch.rand(1, 20, 24, 3), "What is in region1?", handle, max_new_tokens=4,
                regions=torch.ones(1, 20, 24))
    video = segment_video(torch.rand(6, 24, 32, 3), "box", handle, max_new_tokens=16)
    assert video.masks.shape == (6, 24, 32)


def test_llava_release_without_processor_files_downloads_and_counts_complete(tmp_path, monkeypatch,
                                                                             checkpoint_factory):
    remote = checkpoint_factory("llava")
    assert not (remote / "preprocessor_config.json").exists()
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(tmp_path / "models" / "sa2va"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub({"ByteDance/Sa2VA-LLaVA-1.5-7B": remote}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        folder = loader.ensure_model_folder("Sa2VA-LLaVA-1.5-7B")
        requests = len(hub.requests)
        assert loader.ensure_model_folder("Sa2VA-LLaVA-1.5-7B") == folder
        assert len(hub.requests) == requests, "a complete LLaVA folder is used without any network call"


@pytest.mark.parametrize("name, options", [("Sa2VA-8B", {"decoder": "internlm2"}),
                                           ("Sa2VA-26B", {"decoder": "internlm2", "vision_tower": "6b"}),
                                           ("Sa2VA-1B", {"single_file": True})])
def test_internvl2_5_release_layouts_download_and_count_complete(tmp_path, monkeypatch, name, options):
    """Sa2VA-8B / 26B (tokenizer.model, no tokenizer.json) and Sa2VA-1B (one model.safetensors, no index) from the
    fake hub through the Loader's download, then used without any network call and loaded."""
    from sa2va.testing import write_checkpoint

    remote = write_checkpoint(tmp_path / "remote", "internvl", **options)
    assert (remote / "tokenizer.json").exists() != (options.get("decoder") == "internlm2")
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(tmp_path / "models" / "sa2va"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub({f"ByteDance/{name}": remote}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        folder = loader.ensure_model_folder(name)
        requests = len(hub.requests)
        assert loader.ensure_model_folder(name) == folder
        assert len(hub.requests) == requests, "a complete folder is used without any network call"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in remote.iterdir())
    handle = loader.load_handle(model=name, dtype="fp32", device="cpu")
    assert handle.model.family == "internvl"
