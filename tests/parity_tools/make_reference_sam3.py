"""Upstream parity references for Sa2VA-Qwen3-VL-4B-SAM3's format: Sa2VA's ``predict_forward`` with SAM 3's tracker.

Not part of the pack or the test suite; run it in a separate venv with transformers 4.57 (see
tests/data/parity/README.md, "Sa2VA-Qwen3-VL-4B-SAM3"), never in the pack's environment:

    python make_reference_sam3.py EVOSEG_DIR SAM3_GIT SA2VA_GIT CHECKPOINT_DIR OUT_DIR [--video[=NAME]]

No upstream code is part of this file; it assembles the release's model code at run time, in a throw-away folder,
from three public copies, and checks the sha256 of everything it reads against the tables below (any other
revision stops it):

- EVOSEG_DIR: a folder holding files of the SAM3 release's hub-flattened code, as published in
  ``projects/sa2va/hf/models_qwen3vl_sam3/`` of the public fork cjhcjh123-666/EvoSeg @ 4a21e991 (that fork can only
  be read file by file, so they are saved by hand): ``sam3.py`` (the ``SAM3`` grounding wrapper),
  ``sam3pkg_build_sam3_tracker.py`` (the tracker recipe), ``sam3pkg_ext_sam3_base.py`` (``_forward_sam_heads`` with
  the [SEG] embedding), and from ``sam3pkg_model_sam3_tracking_predictor.py`` / ``sam3pkg_model_sam3_tracker_base.py``
  the four methods Sa2VA changed (``add_language_embd``, ``_run_single_frame_inference``,
  ``propagate_in_video_preflight``, ``track_step``; each checked by the hash of its own source text, so the
  whole file or any excerpt holding the methods will do);
- SAM3_GIT: a facebookresearch/sam3 clone (bare or not) holding 99d02f2: every other module of the tracker, which the
  release vendors from that revision (``git show COMMIT:path``);
- SA2VA_GIT: a bytedance/Sa2VA clone holding 9832e1a: ``projects/sa2va/hf/models_qwen3vl``'s
  ``modeling_sa2va_qwen.py`` with the substitutions that make it the SAM3 release's file (``SAM2`` -> ``SAM3``,
  ``DirectResize(1024)`` -> ``1008``), ``configuration_sa2va_chat.py`` and ``templates.py``.

What is changed, and only that (each text substitution is asserted to match exactly once): the ViT geometry of the
recipe is read from the checkpoint's ``sam3_config`` (the test checkpoint's ViT is cut to 2 layers of 256), the
recipe's ``use_fa3`` / ``use_rope_real`` arguments (both off in the release) are dropped because the 99d02f2 ViT has
no such options, the sine position encoding precomputes on the CPU instead of ``"cuda"``; ``.cuda()`` and
``pin_memory()`` are no-ops, the inference state lives on the CPU, ``model.torch_dtype`` is fp32, the ViT's RoPE
tables (buffers at 99d02f2, not stored in the release) are recomputed after loading, and the training-data
packages facebookresearch/sam3's tracker imports but never calls (decord, iopath, pycocotools) are stubbed.

CHECKPOINT_DIR: the folder ``sa2va.testing.write_checkpoint`` wrote with the arguments in OUT_DIR/checkpoint.json.
OUT_DIR/reference.json (or NAME.json with ``--video=NAME``, default ``video``) gives the prompts, forced ids, input
images and any ``seg_embedding_shift`` (added as float32 to the output of ``text_hidden_fcs`` by a forward hook: the
cases whose object scores are negative); the npz files, those json files and the shard hashes are rewritten.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.machinery
import json
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SA2VA_COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
SA2VA_DIR = "projects/sa2va/hf/models_qwen3vl"
SA2VA_FILES = {
    "configuration_sa2va_chat.py": "146aaa1001fb23e64b85481eb230792b42a3b361a27797f1101de3e0be08facb",
    "modeling_sa2va_qwen.py": "67984fe54e96dd483518db42761220cfff4f47b53663ba45c27efb4118705ece",
    "templates.py": "585663d5c3cf9bba1ee095ae45f88af0866129d70436cbc2ef8aefe957db38d2",
}
EVOSEG = ("cjhcjh123-666/EvoSeg", "4a21e991276ac688bddbdcc4e5edaeb872a44020", "projects/sa2va/hf/models_qwen3vl_sam3")
EVOSEG_FILES = {
    "sam3.py": "57ff80b0b39d167569edb1f62a252701a8383fcbb167774673fc87643a4dd60e",
    "sam3pkg_build_sam3_tracker.py": "8d8175ca7a6151c738b6979b1dfe1cab8208bbaab6426f33ae4748f5f23fe621",
    "sam3pkg_ext_sam3_base.py": "402af151c47eb1b65d9edde4228f2151747ceee3d76b997f3bd70454712bef59",
}
# (file, class, method) -> sha256 of the method's source text (decorators included, as indented in the class)
EVOSEG_METHODS = {
    ("sam3pkg_model_sam3_tracking_predictor.py", "Sam3TrackerPredictor", "add_language_embd"):
        "50940e9aae51443ab3152cd735ca260c4bd28782867e692fb65ba318c231e9cf",
    ("sam3pkg_model_sam3_tracking_predictor.py", "Sam3TrackerPredictor", "propagate_in_video_preflight"):
        "d85c9177c591b09791b185a482492a60b12f18eb54179f221593bed83b10d5be",
    ("sam3pkg_model_sam3_tracking_predictor.py", "Sam3TrackerPredictor", "_run_single_frame_inference"):
        "4a31d255af4ce7317abc6b7e957d6ecff6a297438b588232eb7c37f2a1703409",
    ("sam3pkg_model_sam3_tracker_base.py", "Sam3TrackerBase", "track_step"):
        "17be303ee924a349e7708aff4fedea6b88b59985cac3d4f78beef9480b62ac4a",
}
SAM3_COMMIT = "99d02f28c8d34610ab35559b72642b01f10fdb1e"
SAM3_FILES = {  # the import closure of the tracker modules the recipe uses
    "sam3/model/__init__.py": "5737b3ba20d7549b2fce53c995fa80c331b116d1f958980d99bf6f161e28e3a6",
    "sam3/model/act_ckpt_utils.py": "913317a663cf0f19317feb66ea43ff7a86e44393f39af3731ba3d33dfff93a82",
    "sam3/model/box_ops.py": "2d1a11337f1db93ccd87132319716cf68b215c59fa51e43416bdad7ab30c8151",
    "sam3/model/data_misc.py": "80a5cb618f7e9aaf9088aa1df5f6ac7b88c30e28aaa27d8cfbc2bffce3047448",
    "sam3/model/decoder.py": "95b8c52621d23bbfbff58f48f29dea78b6d47c0698d4bb72afe1d49a8a257a23",
    "sam3/model/edt.py": "d0833410c5e0ff3a473a2db3ba67bd2207ccc6d041cb7a6cee878265405fca7e",
    "sam3/model/memory.py": "53258d95b2714d3a98e8f3b1c0a038bfd6a9c7c50957e96bc02309efe6c6efa8",
    "sam3/model/model_misc.py": "3cbc66a849a62645fbe7596b8644ea465a08b507e3d6eb520b38742869b69495",
    "sam3/model/necks.py": "c44c08367dd4201564d35c4ac6990dfb1a49ce88393d0ee860a78713c9a8dce9",
    "sam3/model/position_encoding.py": "ddaa792665cd179ef0514f725af199deb09cc89dbe2f10f32f21a3e204f65e60",
    "sam3/model/sam3_tracker_base.py": "b2b52409c002e1590262375aa794f8ab67e7476f42f8fee41a76de0c14aa62e2",
    "sam3/model/sam3_tracker_utils.py": "2c575f09e2e7973f26bad525eeb9afde2a4b28318d3c8ac0881b0f23f002af7d",
    "sam3/model/sam3_tracking_predictor.py": "145df76a5c045605d4d15360456015adb4f987c4b18e82f4f4876a63e6a32345",
    "sam3/model/utils/__init__.py": "dbc5c8475ec79c2980b95cb09862887052cbabd49bc7fe22f2014d0a2b836609",
    "sam3/model/utils/sam2_utils.py": "78048b7b131250ac14b19c0c6f5fdb21402542b281964af675247e19734e5b2e",
    "sam3/model/vitdet.py": "32dfb0df4eff400ca0276bc6317b70c8db496823b97ad0c139e4d67a6a08de19",
    "sam3/model/vl_combiner.py": "313f95927899606a7ffc0a32883d5bce18c5a251b0c3cf3ec8e535616b5fb474",
    "sam3/sam/__init__.py": "9fd565929cc73505a78397f87c558d721b4df92a279551a4860bf8947baa8ae0",
    "sam3/sam/common.py": "e64cb707f7c332761b34ac1135718e699a8271d4c5c4f42831d5fa393d2edc86",
    "sam3/sam/mask_decoder.py": "9355e459fc91a32cdbc3317a64e3c6256f42f522cc6c6f41c838b80f6a598e00",
    "sam3/sam/prompt_encoder.py": "09910d50d19803803c245edaebb11ef8dc5f6850da55a1cc53ad5294b53d2d30",
    "sam3/sam/rope.py": "e90c4bd3a1de44402fc2e8baba5a5621829002fd8f5136b63738743951da9290",
    "sam3/sam/transformer.py": "3228f5d1bcf96b8e65b4e8ec1f3a8058b5a919a770f5d4b6cc177c3f1e9ddc01",
    "sam3/train/__init__.py": "5737b3ba20d7549b2fce53c995fa80c331b116d1f958980d99bf6f161e28e3a6",
    "sam3/train/data/__init__.py": "5737b3ba20d7549b2fce53c995fa80c331b116d1f958980d99bf6f161e28e3a6",
    "sam3/train/data/coco_json_loaders.py": "5a11f1f571ac6902c6aebdd2d469a1ece4b507d4a62322cb5e2d4beea40349dc",
    "sam3/train/data/collator.py": "5b209ae995f9ff4115abe6d1f2e125bb71bbbc7e113a8e2a9c5dec3e874efef4",
    "sam3/train/data/sam3_image_dataset.py": "54eb5f1fe880c2e37e0b37b4249c354b82fcf76ab73e112ff8ef0bffa654a79c",
}
STUBBED_PACKAGES = ("decord", "iopath", "pycocotools")
# the flattened release's module names -> facebookresearch/sam3's (the release's own three files stay local)
FLAT_MODULES = {
    "sam3pkg_model_memory": "sam3.model.memory", "sam3pkg_model_model_misc": "sam3.model.model_misc",
    "sam3pkg_model_decoder": "sam3.model.decoder", "sam3pkg_model_necks": "sam3.model.necks",
    "sam3pkg_model_position_encoding": "sam3.model.position_encoding",
    "sam3pkg_model_sam3_tracker_base": "sam3.model.sam3_tracker_base", "sam3pkg_model_vitdet": "sam3.model.vitdet",
    "sam3pkg_model_vl_combiner": "sam3.model.vl_combiner", "sam3pkg_sam_transformer": "sam3.sam.transformer",
}


class UpstreamMismatch(RuntimeError):
    """An upstream file is not the revision the references were made from."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked(name: str, data: bytes, expected: str) -> bytes:
    got = sha256(data)
    if got != expected:
        raise UpstreamMismatch(f"{name}: sha256 {got}, expected {expected} (a different revision or a bad copy)")
    return data


def git_show(repo: Path, commit: str, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True,
                          check=True).stdout


def substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r}"
    return text.replace(old, new)


def method_sources(path: Path, wanted: dict[tuple[str, str, str], str]) -> list[str]:
    """The source text of each (file, class, method) of ``wanted`` found in ``path``, hash-checked."""
    text = path.read_text()
    lines = text.splitlines()
    found = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef):
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and (path.name, node.name, f.name) in wanted:
                    start = min([d.lineno for d in f.decorator_list] + [f.lineno])
                    found[(path.name, node.name, f.name)] = "\n".join(lines[start - 1:f.end_lineno]) + "\n"
    out = []
    for key, expected in wanted.items():
        if key[0] != path.name:
            continue
        if key not in found:
            raise UpstreamMismatch(f"{path}: no method {key[1]}.{key[2]}")
        out.append(checked(f"{path.name} {key[1]}.{key[2]}", found[key].encode(), expected).decode())
    return out


def vit_geometry(ckpt: Path) -> dict:
    config = json.loads((ckpt / "config.json").read_text())
    backbone = (config.get("sam3_config") or {}).get("vision_config", {}).get("backbone_config", {})
    width = backbone.get("hidden_size", 1024)
    return {"depth": backbone.get("num_hidden_layers", 32), "width": width,
            "heads": backbone.get("num_attention_heads", 16),
            "mlp_ratio": backbone.get("intermediate_size", 4736) / width,
            "global": tuple(backbone.get("global_attn_indexes", [7, 15, 23, 31]))}


def stage(evoseg: Path, sam3_git: Path, sa2va_git: Path, ckpt: Path, run_dir: Path) -> dict[str, str]:
    """Symlink the checkpoint and write the release's code next to it; returns the sha256 of what was read."""
    for p in ckpt.iterdir():
        (run_dir / p.name).symlink_to(p.resolve())
    hashes = {}
    for name, expected in SA2VA_FILES.items():
        data = checked(name, git_show(sa2va_git, SA2VA_COMMIT, f"{SA2VA_DIR}/{name}"), expected).decode()
        hashes[f"bytedance/Sa2VA:{SA2VA_DIR}/{name}"] = expected
        if name == "modeling_sa2va_qwen.py":  # the SAM3 release's file is this one with these four edits
            for old, new in (("from .sam2 import SAM2", "from .sam3 import SAM3"), ("'SAM2']", "'SAM3']"),
                             ("DirectResize(target_length=1024, )", "DirectResize(target_length=1008, )"),
                             ("self.grounding_encoder = SAM2()", "self.grounding_encoder = SAM3()")):
                data = substitute(data, old, new)
        (run_dir / name).write_text(data)
    package = run_dir / "_sam3pkg"
    (package / "sam3").mkdir(parents=True)
    (package / "sam3" / "__init__.py").write_text("")  # upstream's imports the image model builder; not needed
    for path, expected in SAM3_FILES.items():
        data = checked(path, git_show(sam3_git, SAM3_COMMIT, path), expected).decode()
        hashes[f"facebookresearch/sam3:{path}"] = expected
        if path == "sam3/model/position_encoding.py":  # CPU: the precomputed table's device
            data = substitute(data, 'tensors = torch.zeros((1, 1) + size, device="cuda")',
                              'tensors = torch.zeros((1, 1) + size, device="cpu")')
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(data)
    geo = vit_geometry(ckpt)
    for name, expected in EVOSEG_FILES.items():
        data = checked(name, (evoseg / name).read_bytes(), expected).decode()
        hashes[f"{EVOSEG[0]}:{EVOSEG[2]}/{name}"] = expected
        for flat, module in FLAT_MODULES.items():
            data = data.replace(f"from .{flat} import", f"from {module} import")
        if name == "sam3pkg_build_sam3_tracker.py":
            data = substitute(data, "embed_dim=1024,\n        depth=32,\n        num_heads=16,\n        mlp_ratio=4.625,",
                              f"embed_dim={geo['width']},\n        depth={geo['depth']},\n        "
                              f"num_heads={geo['heads']},\n        mlp_ratio={geo['mlp_ratio']!r},")
            data = substitute(data, "global_att_blocks=(7, 15, 23, 31),", f"global_att_blocks={geo['global']!r},")
            data = substitute(data, "        compile_mode=compile_mode,\n        use_fa3=use_fa3,\n"
                                    "        use_rope_real=use_rope_real,\n    )", "        compile_mode=compile_mode,\n    )")
        assert "from .sam3pkg_" not in data.replace("from .sam3pkg_build_sam3_tracker import", "").replace(
            "from .sam3pkg_model_sam3_tracking_predictor import", "").replace("from .sam3pkg_ext_sam3_base import", "")
        (run_dir / name).write_text(data)
    # Sa2VA's four changed methods on facebookresearch/sam3's predictor, under the flattened module name
    methods = []
    for file_name in sorted({k[0] for k in EVOSEG_METHODS}):
        methods += method_sources(evoseg / file_name, EVOSEG_METHODS)
    for key, expected in EVOSEG_METHODS.items():
        hashes[f"{EVOSEG[0]}:{EVOSEG[2]}/{key[0]} {key[1]}.{key[2]}"] = expected
    (run_dir / "sam3pkg_model_sam3_tracking_predictor.py").write_text(
        "import torch\n\nfrom sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor as _Base\n\n\n"
        "class Sam3TrackerPredictor(_Base):\n" + "\n".join(methods))
    return hashes


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of decord, iopath and pycocotools (training data only) give empty stand-ins."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in STUBBED_PACKAGES:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        return None


def shards_sha(ckpt: Path) -> dict[str, str]:
    res = {}
    for p in sorted(ckpt.glob("*.safetensors")):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for b in iter(lambda: f.read(1 << 22), b""):
                h.update(b)
        res[p.name] = h.hexdigest()
    return res


def load(evoseg: Path, sam3_git: Path, sa2va_git: Path, ckpt: Path):
    from transformers import AutoModel, AutoProcessor

    run_dir = Path(tempfile.mkdtemp(prefix="sa2va_upstream_sam3_"))
    try:
        code_sha = stage(evoseg, sam3_git, sa2va_git, ckpt, run_dir)
        # from a local folder transformers copies only the modeling file's direct relative imports into its module
        # cache (from the hub it follows them recursively, as for the release): put sam3.py's there as well
        from transformers.dynamic_module_utils import HF_MODULES_CACHE, TRANSFORMERS_DYNAMIC_MODULE_NAME

        cache = Path(HF_MODULES_CACHE) / TRANSFORMERS_DYNAMIC_MODULE_NAME / run_dir.name
        cache.mkdir(parents=True)
        for p in run_dir.glob("*.py"):
            shutil.copy(p, cache / p.name)
        sys.path.insert(0, str(run_dir / "_sam3pkg"))
        sys.meta_path.insert(0, _StubFinder())
        t0 = time.time()
        model, info = AutoModel.from_pretrained(run_dir, trust_remote_code=True, torch_dtype=torch.float32,
                                                output_loading_info=True)
        model.eval()
        model.torch_dtype = torch.float32  # the release hard-codes bf16 pixels; the reference is fp32 throughout
        processor = AutoProcessor.from_pretrained(run_dir)
        load_s = time.time() - t0
    finally:
        shutil.rmtree(run_dir)
    rope = [k for k in info["missing_keys"] if k.endswith(".attn.freqs_cis")]
    assert not [k for k in info["missing_keys"] if k not in rope], info
    assert not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    with torch.no_grad():  # the ViT's RoPE tables: buffers at 99d02f2, computed at build time, not in the release
        for module in model.grounding_encoder.modules():
            if hasattr(module, "_setup_rope_freqs") and getattr(module, "use_rope", False):
                module._setup_rope_freqs()
    from safetensors import safe_open

    state = model.state_dict()
    n_file, equal = 0, True
    for shard in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                n_file += 1
                equal &= bool(torch.equal(handle.get_tensor(key).float(), state[key].float()))
    assert equal, "a loaded parameter differs from its file tensor"
    report = {"missing_keys_recomputed_rope_buffers": len(rope), "unexpected_keys": 0, "n_file_tensors": n_file,
              "weights_equal_files": equal}
    return model, processor, load_s, code_sha, report


class Recorder:
    """Wraps upstream's methods and hooks its modules; the computation is unchanged (save the optional shift)."""

    def __init__(self, model, processor):
        from transformers import LogitsProcessor, LogitsProcessorList

        self.model, self.processor = model, processor
        self.forced, self.shift = None, None
        self.kwargs, self.output = None, None
        self.fcs_in, self.fcs_out, self.pred_masks, self.object_scores, self.encoder_passes = [], [], [], [], 0
        sam = model.grounding_encoder.sam2_model
        original_init, original_forward_image = sam.init_state, sam.forward_image
        original_heads, original_generate = sam._forward_sam_heads, model.model.generate
        original_lei = model.grounding_encoder.language_embd_inference
        recorder = self

        class Force(LogitsProcessor):
            def __init__(self, prompt_len):
                self.prompt_len = prompt_len

            def __call__(self, input_ids, scores):
                step = min(input_ids.shape[1] - self.prompt_len, len(recorder.forced) - 1)
                outp = torch.full_like(scores, float("-inf"))
                outp[:, recorder.forced[step]] = 0
                return outp

        def init_state_cpu(*a, **k):
            st = original_init(*a, **k)
            st["device"] = torch.device("cpu")
            st["storage_device"] = torch.device("cpu")
            return st

        def forward_image(*a, **k):
            recorder.encoder_passes += 1
            return original_forward_image(*a, **k)

        def heads(*a, **k):
            o = original_heads(*a, **k)
            recorder.object_scores.extend(o[-1].flatten().tolist())
            return o

        def generate(**kwargs):
            recorder.kwargs = kwargs
            kwargs["logits_processor"] = LogitsProcessorList([Force(kwargs["input_ids"].shape[1])])
            recorder.output = original_generate(**kwargs)
            return recorder.output

        def lei(state, embd):
            r = original_lei(state, embd)
            recorder.pred_masks.append(r.detach().clone())
            return r

        def shift_hook(module, inputs, output):
            return None if recorder.shift is None else output + recorder.shift

        def fcs_hook(module, inputs, output):
            recorder.fcs_in.append(inputs[0].detach().clone())
            recorder.fcs_out.append(output.detach().clone())

        sam.init_state, sam.forward_image, sam._forward_sam_heads = init_state_cpu, forward_image, heads
        model.model.generate = generate
        model.grounding_encoder.language_embd_inference = lei
        model.text_hidden_fcs.register_forward_hook(shift_hook)  # first: the recording hook sees the shifted output
        model.text_hidden_fcs.register_forward_hook(fcs_hook)

    def run(self, images, prompt, forced, is_video, shift=None):
        self.forced = forced
        self.shift = None if shift is None else torch.tensor(shift, dtype=torch.float32)
        self.fcs_in, self.fcs_out, self.pred_masks, self.object_scores, self.encoder_passes = [], [], [], [], 0
        t = time.time()
        with torch.inference_mode():
            if is_video:
                res = self.model.predict_forward(video=images, text=prompt, processor=self.processor)
            else:
                res = self.model.predict_forward(image=images[0], text=prompt, processor=self.processor)
        seconds = time.time() - t
        kw, o = self.kwargs, self.output
        plen = kw["input_ids"].shape[1]
        seq = o.sequences[0]
        gen = seq[plen:]
        seg_id = self.processor.tokenizer.convert_tokens_to_ids("[SEG]")
        w, h = images[0].size
        logits = [F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                  for pm in self.pred_masks]  # one call per [SEG]: [T, 1, 1008, 1008]
        mask_logits = torch.stack(logits).float().numpy()  # [K, T, h, w]
        ret = np.stack([np.asarray(m) for m in res["prediction_masks"]])
        assert ret.shape == mask_logits.shape and (ret == (torch.from_numpy(mask_logits).sigmoid() > 0.5).numpy()).all()
        empty = np.zeros((0, 0), np.float32)
        arrays = {"input_ids": kw["input_ids"][0].to(torch.int32).numpy(), "sequence": seq.numpy(),
                  "generated_ids": gen.numpy(), "seg_positions": np.nonzero((seq[:-1] == seg_id).numpy())[0],
                  "seg_hidden": torch.cat(self.fcs_in).float().numpy() if self.fcs_in else empty,
                  "seg_embedding": torch.cat(self.fcs_out).float().numpy() if self.fcs_out else empty,
                  "mask_logits": mask_logits.astype(np.float32), "masks": ret.astype(bool),
                  "image_grid_thw": kw["image_grid_thw"].numpy()}
        meta = {"prediction": res["prediction"], "prompt_len": plen, "num_generated": int(gen.numel()),
                "num_seg": int((gen[:-1] == seg_id).sum()) if gen.numel() else 0,
                "mask_pixels_true": [[int(x) for x in m.reshape(m.shape[0], -1).sum(1)] for m in ret] if is_video
                else [int(m.sum()) for m in ret],
                "sam3_encoder_passes": self.encoder_passes, "object_scores_in_call_order": list(self.object_scores),
                "seconds": round(seconds, 2)}
        return arrays, meta


def main(evoseg: Path, sam3_git: Path, sa2va_git: Path, ckpt: Path, out: Path, video_name: str | None) -> None:
    import transformers

    torch.set_num_threads(2)
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: upstream's .cuda() calls become no-ops
    torch.Tensor.pin_memory = lambda self, *a, **k: self  # and so does pinning
    model, processor, load_s, code_sha, report = load(evoseg, sam3_git, sa2va_git, ckpt)
    recorder = Recorder(model, processor)
    common = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
              "upstream_repo": "bytedance/Sa2VA", "upstream_commit": SA2VA_COMMIT, "upstream_dir": SA2VA_DIR,
              "grounding_upstream": f"{EVOSEG[0]}@{EVOSEG[1][:8]} {EVOSEG[2]} (sam3.py, the tracker recipe, "
                                    f"Sa2VA's methods) on facebookresearch/sam3@{SAM3_COMMIT[:7]}'s tracker modules",
              "upstream_files_sha256": code_sha, **report, "threads": 2}
    meta_ck = json.loads((out / "checkpoint.json").read_text())
    model_dir = f"<sa2va.testing.write_checkpoint(folder, 'qwen3_vl', **{meta_ck['write_checkpoint']})>"
    if video_name is None:
        ref = json.loads((out / "reference.json").read_text())
        total = time.time()
        timings = {"load": round(load_s, 2)}
        for case in ref["cases"]:
            img = Image.open(out / case["input_png"]).convert("RGB")
            arrays, meta = recorder.run([img], case["prompt"], case["forced_token_ids"], False,
                                        case.get("seg_embedding_shift"))
            np.savez_compressed(out / f"{case['name']}.npz", **arrays)
            meta["seg_positions"] = arrays["seg_positions"].tolist()
            case.update(meta)
            case["generated_text"] = meta["prediction"]
            timings[case["name"]] = meta["seconds"]
            print(case["name"], meta["prediction"], meta["mask_pixels_true"], meta["object_scores_in_call_order"],
                  meta["seconds"], flush=True)
        timings["total"] = round(time.time() - total + load_s, 2)
        ref.update(common)
        ref["timings_s"] = timings
        ref["model_dir"] = model_dir
        (out / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
        meta_ck["shard_sha256"] = shards_sha(ckpt)
        (out / "checkpoint.json").write_text(json.dumps(meta_ck, indent=2) + "\n")
        return
    ref = json.loads((out / f"{video_name}.json").read_text())
    case = ref["case"]
    frames = [Image.open(out / p).convert("RGB") for p in case["input_pngs"]]
    arrays, meta = recorder.run(frames, case["prompt"], case["forced_token_ids"], True,
                                case.get("seg_embedding_shift"))
    arrays.pop("sequence")
    arrays.pop("seg_positions")
    np.savez_compressed(out / f"{video_name}.npz", **arrays)
    case.update(meta)
    ref.update(common)
    ref["shard_sha256"] = shards_sha(ckpt)
    ref["timings_s"] = {"load": round(load_s, 2), "video": meta["seconds"]}
    ref["model_dir"] = model_dir
    (out / f"{video_name}.json").write_text(json.dumps(ref, indent=2) + "\n")
    print(video_name, meta["prediction"], meta["mask_pixels_true"], meta["object_scores_in_call_order"],
          meta["seconds"])


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    video = [a for a in sys.argv[1:] if a.startswith("--video")]
    if len(args) != 5:
        sys.exit(__doc__)
    main(*(Path(a) for a in args), (video[0].partition("=")[2] or "video") if video else None)
