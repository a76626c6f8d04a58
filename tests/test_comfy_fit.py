"""Fitting the ComfyUI a user already has (issue 15): the versioned comfy_api import, newer schema features only
where present, ComfyUI's memory manager (with fakes of comfy.model_management / ModelPatcher), Cancel between
stages, and video outputs without a second copy of the clip."""
import sys
import types

import pytest
import torch

from nodetools import FAKE_IO, schema
from pack import pack_module

comfy = pack_module("nodes.comfy")


# ---------------------------------------------------------------------------------- versioned comfy_api import
def _fake_comfy_api(root, versions: dict[str, str]):
    """A comfy_api package on disk: ``versions`` maps a submodule name to its source; ``latest`` always fails."""
    package = root / "comfy_api"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "latest").mkdir()
    (package / "latest" / "__init__.py").write_text("raise AssertionError('the pack imported comfy_api.latest')\n")
    for name, source in versions.items():
        (package / name).mkdir()
        (package / name / "__init__.py").write_text(source)


GOOD = "io = 'io of {name}'\nclass ComfyExtension: pass\n"


@pytest.fixture
def fake_comfy_api(tmp_path, monkeypatch):
    def install(versions):
        _fake_comfy_api(tmp_path, versions)
        monkeypatch.syspath_prepend(str(tmp_path))
        for name in [n for n in sys.modules if n == "comfy_api" or n.startswith("comfy_api.")]:
            monkeypatch.delitem(sys.modules, name)
    yield install
    for name in [n for n in sys.modules if n == "comfy_api" or n.startswith("comfy_api.")]:
        del sys.modules[name]


def test_the_newest_versioned_comfy_api_is_used_never_latest(fake_comfy_api):
    fake_comfy_api({"v0_0_1": GOOD.format(name="v0_0_1"), "v0_0_2": GOOD.format(name="v0_0_2"),
                    "v0_0_10": GOOD.format(name="v0_0_10")})
    version, io, extension = comfy.v3_api()
    assert version == "v0_0_10" and io == "io of v0_0_10" and extension.__name__ == "ComfyExtension"


def test_a_versioned_module_that_fails_falls_back_to_an_older_one(fake_comfy_api):
    fake_comfy_api({"v0_0_2": GOOD.format(name="v0_0_2"), "v0_0_3": "import no_such_module_here\n",
                    "v0_0_4": "x = 1\n"})  # v0_0_4 imports but has no io: skipped too
    version, io, _ = comfy.v3_api()
    assert (version, io) == ("v0_0_2", "io of v0_0_2")


def test_without_a_versioned_module_there_is_no_v3_api(fake_comfy_api):
    fake_comfy_api({})
    assert comfy.v3_api() is None


def test_outside_comfyui_there_is_no_v3_api():
    assert comfy.v3_api() is None and not comfy.HAS_V3 and comfy.API_VERSION is None


def test_newer_schema_features_only_where_comfyui_has_them():
    def new_schema(node_id, display_name, search_aliases=None): ...

    def old_schema(node_id, display_name): ...

    assert comfy.supported(new_schema, search_aliases=["x"]) == {"search_aliases": ["x"]}
    assert comfy.supported(old_schema, search_aliases=["x"]) == {}


def test_search_aliases_and_advanced_inputs_reach_a_comfyui_that_has_them(monkeypatch):
    segmentation = pack_module("nodes.segmentation")

    class Input:
        def __init__(self, name, advanced=None, **kw):
            self.name, self.advanced, self.kw = name, advanced, kw

    def new_schema(node_id, display_name, category, description, inputs, outputs, hidden=None,
                   search_aliases=None):
        return {"inputs": inputs, "search_aliases": search_aliases}

    newer = types.SimpleNamespace(**vars(FAKE_IO))
    newer.Schema = new_schema
    for kind in ("Int", "Float", "Boolean", "Combo"):
        setattr(newer, kind, types.SimpleNamespace(Input=Input, Output=getattr(FAKE_IO, kind).Output))
    monkeypatch.setattr(comfy, "io", newer)
    declared = segmentation.Sa2VASegmentation.define_schema()
    assert declared["search_aliases"] == segmentation.SEARCH_ALIASES
    advanced = {i.name for i in declared["inputs"] if getattr(i, "advanced", None)}
    assert {"guided_radius", "guided_eps", "vitmatte_max_megapixels"} <= advanced
    plain = schema(segmentation.Sa2VASegmentation)  # the 0.3.48 shape: neither feature
    assert "search_aliases" not in plain
    assert not any("advanced" in s.kw for s in plain["inputs"])


# ------------------------------------------------------------------------------------------ Cancel per stage
@pytest.fixture
def models_dir(tiny_models_dir):
    return tiny_models_dir


@pytest.fixture
def handle(qwen3_handle):
    return qwen3_handle


def _cancel_after(monkeypatch, tokens: int):
    """Cancel pressed while the ``tokens``-th token is generated (the stopping criterion's poll)."""
    state = {"polls": 0, "stop": False}

    def interrupted():
        state["polls"] += 1
        state["stop"] = state["stop"] or state["polls"] >= tokens
        return state["stop"]

    def throw():
        if state["stop"]:
            raise comfy.Interrupted("cancelled")

    monkeypatch.setattr(comfy, "interrupted", interrupted)
    monkeypatch.setattr(comfy, "throw_if_interrupted", throw)
    return state


def test_cancel_during_generation_never_starts_sam2(handle, monkeypatch):
    import time

    from nodetools import segment

    _cancel_after(monkeypatch, 2)
    head = handle.model.grounding

    def never(*args, **kwargs):
        raise AssertionError("a SAM2 stage started after Cancel")

    monkeypatch.setattr(head, "encode", never)
    monkeypatch.setattr(head, "image_logits", never)
    monkeypatch.setattr(handle.model.decoder, "decode_groups", never)
    start = time.monotonic()
    with pytest.raises(comfy.Interrupted):
        segment(torch.rand(2, 24, 24, 3), "person", handle, max_new_tokens=200)
    assert time.monotonic() - start < 5.0  # generous on a shared CPU; tokens stop within one step


def test_library_cancel_hook_stops_before_each_sam2_stage(handle, monkeypatch):
    errors = pack_module("sa2va.errors")
    model = handle.model
    calls = []
    monkeypatch.setattr(model.grounding, "encode", lambda *a, **k: calls.append("encode"))
    image = (torch.rand(20, 20, 3) * 255).to(torch.uint8).numpy()
    state = torch.zeros(model.projection[0].in_features)
    with pytest.raises(errors.Cancelled, match="cancelled before the SAM2 image encoder"):
        model.masks_for(image, [state], cancelled=lambda: True)
    assert calls == []
    polls = iter([False, True])  # encoder allowed, decoder refused
    monkeypatch.setattr(model.grounding, "image_logits", lambda *a, **k: calls.append("decode"))
    with pytest.raises(errors.Cancelled, match="cancelled before the SAM2 mask decoder"):
        model.masks_for(image, [state], cancelled=lambda: next(polls))
    assert calls == ["encode"]


def test_cancel_during_refinement_stops_before_the_next_image(monkeypatch):
    refine_nodes = pack_module("nodes.refine")
    settings = pack_module("nodes.common").refine_settings(
        process_details=True, black_point=0.05, white_point=0.95, detail_method="FastMatte", detail_erode=0,
        detail_dilate=0, mask_threshold=0.3, apply_mask_threshold=False)
    done, state = [], {"stop": False}

    def refine(image, p, s, m):  # Cancel is pressed while the first image is refined
        done.append(1)
        state["stop"] = True
        return p

    def throw():
        if state["stop"]:
            raise comfy.Interrupted("cancelled")

    monkeypatch.setattr(refine_nodes, "refine", refine)

    monkeypatch.setattr(comfy, "throw_if_interrupted", throw)
    with pytest.raises(comfy.Interrupted):
        refine_nodes.refine_batch(torch.rand(3, 8, 8, 3), [torch.rand(1, 8, 8)] * 3, settings)
    assert len(done) == 1


# ----------------------------------------------------------------------------- video outputs: one copy of the clip
OVERLAY_SCRIPT = r"""
import json, sys, threading, time, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
from pack import pack_module
video = pack_module("nodes.video")
frames_count, size, build = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
frames = torch.rand(frames_count, size, size, 3)
masks = (torch.rand(2, frames_count, size, size) > 0.5).float()

def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) * 1024

def stacked():  # what the node did before: a list of frames, stacked at the end
    rows = []
    for t in range(frames_count):
        rgb = video.sanitize(frames[t:t + 1])[0]
        rows.append(video.draw_labels(video.overlay(rgb, masks[:, t], threshold=0.5), masks[:, t], ["a", "b"]))
    return torch.stack(rows)

video.overlay_frames(frames[:1], masks[:, :1], ["a", "b"], torch.device("cpu"))  # warm-up (fonts, kernels)
peak, done = [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.0005)
base = anon()
thread = threading.Thread(target=sample)
thread.start()
out = stacked() if build == "stacked" else video.overlay_frames(frames, masks, ["a", "b"], torch.device("cpu"))
time.sleep(0.01)
done[0] = True
thread.join()
print(json.dumps({"output": out.numel() * out.element_size(), "peak_growth": peak[0] - base}))
"""


def overlay_peak(frames: int, size: int, build: str = "preallocated") -> dict:
    import json
    import subprocess

    from conftest import ROOT

    result = subprocess.run([sys.executable, "-c", OVERLAY_SCRIPT, str(ROOT), str(frames), str(size), build],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_video_overlay_is_built_into_one_output_without_a_second_copy_of_the_clip():
    numbers = overlay_peak(32, 256)
    # one output (24 MiB) plus one frame's working set and allocator slack (measured 1.06x-1.25x); stacking a list
    # held the clip twice (about 2x, measured 2.7x at T=32)
    assert numbers["peak_growth"] <= 1.5 * numbers["output"], numbers


def test_video_node_sends_masks_to_the_intermediate_device_as_they_are_made(handle, monkeypatch):
    from nodetools import segment_video

    seen = {}
    original = handle.model.predict_video

    def predict_video(*args, options, **kwargs):
        seen["options"] = options
        return original(*args, options=options, **kwargs)

    monkeypatch.setattr(handle.model, "predict_video", predict_video)
    monkeypatch.setattr(comfy, "output_device", lambda: torch.device("cpu"))
    r = segment_video(torch.rand(4, 24, 32, 3), "box", handle, max_new_tokens=8)
    assert seen["options"].offload_frames is True and seen["options"].mask_device == torch.device("cpu")
    assert r.overlay.shape == (4, 24, 32, 3) and r.merged_mask.shape == (4, 24, 32)
    segment_video(torch.rand(2, 24, 32, 3), "box", handle, max_new_tokens=8, offload_frames=False)
    assert seen["options"].mask_device is None


# ------------------------------------------------------------------- ComfyUI's memory manager, faked
class FakeLoaded:
    """comfy.model_management.LoadedModel, as far as the pack relies on it."""

    def __init__(self, patcher):
        self.model = patcher

    def model_unload(self, memory_to_free=None):
        if memory_to_free is not None and memory_to_free < self.model.loaded_size():
            if self.model.partially_unload(self.model.offload_device, memory_to_free) >= memory_to_free:
                return False
        self.model.detach(True)
        return True


class FakeModelManagement:
    """comfy.model_management: records what the pack asks for; unload_all_models unloads like ComfyUI."""

    def __init__(self):
        self.current_loaded_models, self.calls, self.interrupt = [], [], False

    def get_torch_device(self):
        return torch.device("cpu")

    unet_offload_device = intermediate_device = get_torch_device

    def free_memory(self, memory_required, device, keep_loaded=()):
        self.calls.append(("free_memory", memory_required))

    def load_models_gpu(self, models, memory_required=0, force_full_load=False, **kwargs):
        self.calls.append(("load_models_gpu", memory_required))
        for patcher in models:
            if not any(loaded.model is patcher for loaded in self.current_loaded_models):
                patcher.partially_load(patcher.load_device, 1e32)
                self.current_loaded_models.insert(0, FakeLoaded(patcher))

    def unload_all_models(self):
        for loaded in list(self.current_loaded_models):
            if loaded.model_unload():
                self.current_loaded_models.remove(loaded)

    def soft_empty_cache(self):
        pass

    def processing_interrupted(self):
        return self.interrupt

    def throw_exception_if_processing_interrupted(self):
        if self.interrupt:
            raise comfy.Interrupted("interrupted")


class FakeModelPatcher:
    """comfy.model_patcher.ModelPatcher: holds the module, moves it on partially_load / detach."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.model.device = offload_device

    def model_size(self):
        return self.size or sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

    def loaded_size(self):  # ComfyUI's counts the weights moved (model_loaded_weight_memory), not model_size()
        weights = self.size or sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        return weights if self.model.device == self.load_device else 0

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        self.model.to(device_to)
        self.model.device = device_to
        return 0

    def partially_unload(self, device_to, memory_to_free=0):
        return 0

    def detach(self, unpatch_all=True):
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        return self.model


@pytest.fixture
def fake_comfyui(monkeypatch, models_dir):
    mm = FakeModelManagement()
    monkeypatch.setattr(comfy, "IN_COMFY", True)
    monkeypatch.setattr(comfy, "_mm", mm)
    monkeypatch.setattr(comfy, "_patcher", types.SimpleNamespace(ModelPatcher=FakeModelPatcher))
    monkeypatch.setattr(comfy, "_cutils", types.SimpleNamespace(ProgressBar=lambda total: types.SimpleNamespace(
        update_absolute=lambda value, total=None: None)))
    monkeypatch.setattr(comfy, "_folder_paths", types.SimpleNamespace(
        get_folder_paths=lambda name: [str(models_dir if name == "sa2va" else models_dir.parent / name)]))
    return mm


def _resident_bytes(model) -> int:
    parts = (model.vlm, model.grounding.model, model.projection)
    return sum(t.numel() * t.element_size() for p in parts for t in list(p.parameters()) + list(p.buffers()))


@pytest.fixture
def quantised_handle(fake_comfyui, monkeypatch):
    """A "4bit" handle through the loader's quantised path (the CPU has no bitsandbytes kernels: the weights load
    unquantised, which is all the memory bookkeeping needs)."""
    loader = pack_module("nodes.loader")
    real = loader.load_model
    loads = []

    def load_model(folder, quantization=None, **kwargs):
        loads.append(quantization)
        return real(folder, **kwargs)

    monkeypatch.setattr(loader, "load_model", load_model)
    handle = loader.load_handle(model="tiny-qwen3", dtype="fp32", quantization="4bit", device="cpu")
    handle.loads = loads
    return handle


def test_quantised_size_is_the_actual_parameter_bytes(quantised_handle):
    assert quantised_handle.size_bytes == _resident_bytes(quantised_handle.model) > 0
    assert quantised_handle.patcher.model_size() == quantised_handle.size_bytes


def test_prepare_asks_comfyui_for_the_activation_memory_of_a_quantised_model(quantised_handle, fake_comfyui):
    from nodetools import segment

    fake_comfyui.calls.clear()
    segment(torch.rand(1, 48, 64, 3), "person", quantised_handle, max_new_tokens=16)
    asked = [n for call, n in fake_comfyui.calls if call == "load_models_gpu"]
    assert asked and asked[0] == quantised_handle.activation_bytes(48, 64, 16) > 0


def test_prepare_asks_for_activation_memory_for_an_unquantised_model_too(fake_comfyui, models_dir):
    from nodetools import segment

    handle = pack_module("nodes.loader").load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")
    segment(torch.rand(1, 48, 64, 3), "person", handle, max_new_tokens=16)
    assert ("load_models_gpu", handle.activation_bytes(48, 64, 16)) in fake_comfyui.calls


def test_unload_models_drops_a_quantised_model_and_the_next_run_loads_it_again(quantised_handle, fake_comfyui):
    from nodetools import segment

    segment(torch.rand(1, 24, 24, 3), "person", quantised_handle, max_new_tokens=8)
    assert len(fake_comfyui.current_loaded_models) == 1 and quantised_handle.loads == ["4bit"]
    fake_comfyui.unload_all_models()  # ComfyUI's "Unload Models"
    assert quantised_handle.model is None and not fake_comfyui.current_loaded_models
    r = segment(torch.rand(1, 24, 24, 3), "person", quantised_handle, max_new_tokens=8)
    assert quantised_handle.loads == ["4bit", "4bit"] and quantised_handle.model is not None
    assert r.masks.shape[1:] == (24, 24) and len(fake_comfyui.current_loaded_models) == 1


def test_gpu_split_loads_with_the_device_map_and_is_resident(fake_comfyui, monkeypatch):
    """The Loader's gpu_split reaches load_model as an accelerate device map (on the CPU here: the plumbing); the
    model is registered at its actual size, resident like a quantised one: Unload drops it and the next run loads it
    again, with the same map."""
    from nodetools import segment

    loader = pack_module("nodes.loader")
    real, maps = loader.load_model, []

    def load_model(folder, device_map=None, **kwargs):
        maps.append(device_map)
        return real(folder, device_map=device_map, **kwargs)

    monkeypatch.setattr(loader, "load_model", load_model)
    handle = loader.load_handle(model="tiny-qwen3", dtype="fp32", device="cpu", gpu_split="balanced")
    assert maps == ["balanced"] and handle.resident and handle.split == "balanced"
    assert handle.options["gpu_split"] == "balanced" and handle.size_bytes == handle.model.memory_bytes() > 0
    r = segment(torch.rand(1, 24, 24, 3), "person", handle, max_new_tokens=8)
    assert r.masks.shape[1:] == (24, 24) and len(fake_comfyui.current_loaded_models) == 1
    fake_comfyui.unload_all_models()
    assert handle.model is None
    segment(torch.rand(1, 24, 24, 3), "person", handle, max_new_tokens=8)
    assert maps == ["balanced", "balanced"] and handle.model is not None
    plain = loader.load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")
    assert not plain.resident and maps[-1] is None
    with pytest.raises(pack_module("sa2va.errors").InputError, match="gpu_split must be one of off, auto"):
        loader.load_handle(model="tiny-qwen3", device="cpu", gpu_split="everywhere")


def test_clean_vram_after_drops_a_quantised_loader_model(quantised_handle, fake_comfyui):
    from nodetools import segment

    segment(torch.rand(1, 24, 24, 3), "person", quantised_handle, max_new_tokens=8, clean_vram_after=True)
    assert quantised_handle.model is None and not fake_comfyui.current_loaded_models
    segment(torch.rand(1, 24, 24, 3), "person", quantised_handle, max_new_tokens=8)
    assert quantised_handle.loads == ["4bit", "4bit"]


def test_quantised_estimate_counts_the_parts_kept_in_the_compute_dtype():
    estimated_bytes = pack_module("sa2va.quantization").estimated_bytes
    shapes = [("model.model.language_model.layers.0.mlp.up_proj.weight", (128, 64)),   # quantised
              ("model.model.language_model.layers.0.input_layernorm.weight", (64,)),   # kept
              ("model.model.visual.blocks.0.attn.qkv.weight", (96, 32)),               # kept (vision)
              ("model.lm_head.weight", (100, 64)),                                     # kept
              # kept: SAM2 is never quantised, though its memory attention and mask decoder have "layers" too
              ("grounding_encoder.sam2_model.memory_attention.layers.0.self_attn.q_proj.weight", (32, 16))]
    kept = (64 + 96 * 32 + 100 * 64 + 32 * 16) * 2
    assert estimated_bytes(shapes, "4bit", torch.bfloat16) == kept + 128 * 64 // 2 + 128 * 64 // 64 * 4
    assert estimated_bytes(shapes, "8bit", torch.bfloat16) == kept + 128 * 64 + 128 * 4
    assert estimated_bytes(shapes, None, torch.bfloat16) == kept + 128 * 64 * 2


# ------------------------------------------------------------------------- the standalone nodes' model slot
def _as_node(monkeypatch, node_id: str, prompt: dict):
    """Run the Segmentation node as ComfyUI would for node ``node_id`` of the queued ``prompt``."""
    node = pack_module("nodes.segmentation").Sa2VASegmentation
    monkeypatch.setattr(node, "hidden", types.SimpleNamespace(unique_id=node_id, prompt=prompt), raising=False)


def _standalone(model_name, **inputs):
    return {"class_type": "Sa2VASegmentation", "inputs": {"model_name": model_name, **inputs}}


@pytest.fixture
def slot(models_dir, monkeypatch):
    import shutil

    shutil.copytree(models_dir / "tiny-qwen3", models_dir / "tiny-qwen3-b")
    common = pack_module("nodes.common")
    common.MODEL_SLOT.release()
    loads = []
    standalone = pack_module("nodes.standalone")
    real = standalone.load_handle
    monkeypatch.setattr(standalone, "load_handle", lambda **options: loads.append(options) or real(**options))
    yield common.MODEL_SLOT, loads
    common.MODEL_SLOT.release()


def test_two_standalone_nodes_with_different_models_keep_both(slot, monkeypatch):
    from nodetools import segment

    held, loads = slot
    prompt = {"1": _standalone("tiny-qwen3"), "2": _standalone("tiny-qwen3-b")}
    image = torch.rand(1, 20, 24, 3)
    for _ in range(2):
        for node_id, name in (("1", "tiny-qwen3"), ("2", "tiny-qwen3-b")):
            _as_node(monkeypatch, node_id, prompt)
            segment(image, "person", None, model_name=name, max_new_tokens=4)
    assert [o["model"] for o in loads] == ["tiny-qwen3", "tiny-qwen3-b"], "each model loaded once, never reloaded"
    assert len(held.values) == 2


def test_the_slot_is_keyed_by_every_load_option(slot, monkeypatch):
    from nodetools import segment

    held, loads = slot
    prompt = {"1": _standalone("tiny-qwen3"), "2": _standalone("tiny-qwen3", dtype="fp32")}
    image = torch.rand(1, 20, 24, 3)
    _as_node(monkeypatch, "1", prompt)
    segment(image, "person", None, model_name="tiny-qwen3", max_new_tokens=4)
    _as_node(monkeypatch, "2", prompt)
    segment(image, "person", None, model_name="tiny-qwen3", max_new_tokens=4, dtype="fp32")
    assert [o["dtype"] for o in loads] == ["auto", "fp32"] and len(held.values) == 2


def test_the_slot_releases_a_model_no_node_uses(slot, monkeypatch):
    from nodetools import segment

    held, loads = slot
    image = torch.rand(1, 20, 24, 3)
    prompt = {"1": _standalone("tiny-qwen3"), "2": _standalone("tiny-qwen3-b")}
    for node_id, name in (("1", "tiny-qwen3"), ("2", "tiny-qwen3-b")):
        _as_node(monkeypatch, node_id, prompt)
        segment(image, "person", None, model_name=name, max_new_tokens=4)
    # node 2 now has a Sa2VA Loader connected: its own model goes
    loader_handle = pack_module("nodes.loader").load_handle(model="tiny-qwen3-b", dtype="fp32", device="cpu")
    prompt = {"1": _standalone("tiny-qwen3"), "2": _standalone("tiny-qwen3-b", model=["9", 0]),
              "9": {"class_type": "Sa2VALoader", "inputs": {}}}
    _as_node(monkeypatch, "2", prompt)
    segment(image, "person", loader_handle, model_name="tiny-qwen3-b", max_new_tokens=4)
    assert [dict(k)["model"] for k in held.values] == ["tiny-qwen3"]
    # node 1 was deleted from the workflow: the next run of any Sa2VA node releases its model
    _as_node(monkeypatch, "2", {"2": prompt["2"], "9": prompt["9"]})
    segment(image, "person", loader_handle, model_name="tiny-qwen3-b", max_new_tokens=4)
    assert held.empty


def test_vitmatte_goes_through_comfyuis_memory_manager(fake_comfyui, models_dir, tiny_vitmatte):
    import shutil

    refine_nodes = pack_module("nodes.refine")
    refine_nodes.MATTER_SLOT.release()
    shutil.copytree(tiny_vitmatte, models_dir.parent / "vitmatte" / "vitmatte-small-composition-1k")
    from nodetools import refine_mask

    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    refine_mask(torch.rand(1, 32, 32, 3), mask, detail_method="VITMatte", vitmatte_max_megapixels=0.01)
    (managed,) = refine_nodes.MATTER_SLOT.values.values()
    assert isinstance(managed.patcher, FakeModelPatcher)
    assert [loaded.model for loaded in fake_comfyui.current_loaded_models] == [managed.patcher]
    assert ("load_models_gpu", int(0.01 * refine_nodes.MATTING_BYTES_PER_MEGAPIXEL)) in fake_comfyui.calls
    refine_mask(torch.rand(1, 32, 32, 3), mask, detail_method="VITMatte", vitmatte_max_megapixels=0.01,
                clean_vram_after=True)
    assert refine_nodes.MATTER_SLOT.empty and not fake_comfyui.current_loaded_models


# ------------------------------------------------------------------ the encoder cache goes where the model goes
def _held_on_compute_device(mm) -> int:
    """What ComfyUI counts as loaded on the compute device (the pack's models are its only ones here)."""
    return sum(loaded.model.loaded_size() for loaded in mm.current_loaded_models)


def _cached_tensors(model) -> list:
    import weakref

    return [weakref.ref(t) for t in model.encoder_cache.tensors()]


def test_cached_features_are_counted_with_the_model_and_freed_by_unload_models(fake_comfyui):
    import gc

    from nodetools import segment

    before = _held_on_compute_device(fake_comfyui)
    handle = pack_module("nodes.loader").load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")
    weights = handle.patcher.model_size()
    segment(torch.rand(1, 48, 64, 3), "person", handle, max_new_tokens=8)
    cache = handle.model.encoder_cache
    from sa2va.compat import vision_cache_supported

    # SAM2's features, and the vision tower's where the installed transformers lets the cache serve them (5.x)
    assert cache.nbytes > 0 and len(cache) >= (2 if vision_cache_supported() else 1)
    assert handle.patcher.model_size() == weights + cache.nbytes
    assert _held_on_compute_device(fake_comfyui) == before + weights + cache.nbytes
    refs = _cached_tensors(handle.model)
    fake_comfyui.unload_all_models()  # ComfyUI's "Unload Models"
    gc.collect()
    assert _held_on_compute_device(fake_comfyui) == before
    assert cache.nbytes == 0 and len(cache) == 0 and handle.patcher.model_size() == weights
    assert refs and all(ref() is None for ref in refs), "a cached tensor outlived the unload"


def test_evicting_the_model_for_another_drops_its_cached_features(fake_comfyui):
    from nodetools import segment

    handle = pack_module("nodes.loader").load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")
    segment(torch.rand(1, 48, 64, 3), "person", handle, max_new_tokens=8)
    cache = handle.model.encoder_cache
    held = cache.nbytes
    (loaded,) = fake_comfyui.current_loaded_models
    assert not loaded.model_unload(memory_to_free=1)  # ComfyUI frees a little: the cache is what goes
    assert cache.nbytes == 0 and held > 0
    segment(torch.rand(1, 48, 64, 3), "person", handle, max_new_tokens=8)
    assert cache.nbytes == held
    assert loaded.model_unload(memory_to_free=10**12)  # everything: the weights move off, the cache goes
    assert cache.nbytes == 0


def test_clean_vram_after_and_a_quantised_unload_drop_the_cache_too(quantised_handle, fake_comfyui):
    from nodetools import segment

    segment(torch.rand(1, 24, 24, 3), "person", quantised_handle, max_new_tokens=8)
    cache = quantised_handle.model.encoder_cache
    assert quantised_handle.patcher.model_size() == quantised_handle.size_bytes + cache.nbytes > \
        quantised_handle.size_bytes
    fake_comfyui.unload_all_models()
    assert quantised_handle.model is None and quantised_handle.patcher.model_size() == quantised_handle.size_bytes
    plain = pack_module("nodes.loader").load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")
    segment(torch.rand(1, 24, 24, 3), "person", plain, max_new_tokens=8, clean_vram_after=True)
    assert plain.model.encoder_cache.nbytes == 0 and _held_on_compute_device(fake_comfyui) == 0
