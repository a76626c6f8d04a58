"""Upstream parity references for Sa2VA-Qwen3-VL-4B-SAM3's format: Sa2VA's ``predict_forward`` with SAM 3's tracker.

Not part of the pack or the test suite; run it in a separate venv with transformers 4.57.0 (see
tests/data/parity/README.md, "Qwen3-VL + SAM3"), never in the pack's environment:

    SA2VA_UPSTREAM=/path/to/bytedance/Sa2VA SA2VA_SAM3_HARNESS=/path/to/harness \
        python make_reference_sam3.py CHECKPOINT_DIR OUT_DIR [--video]

The language side is bytedance/Sa2VA @ 9832e1a ``projects/sa2va/hf/models_qwen3vl`` with the three substitutions
that make it the SAM3 release's modeling file (``SAM2`` -> ``SAM3``, ``DirectResize(1024)`` -> ``1008``; the SAM3
release's file, EvoSeg @ 4a21e991 ``models_qwen3vl_sam3/modeling_sa2va_qwen.py``, is otherwise the same text). The
grounding encoder is a ``sam3.py`` taken from SA2VA_SAM3_HARNESS: a folder outside this repository that rebuilds
the release's SAM3 wrapper on facebookresearch/sam3's modules (nothing upstream is written into this repository).
The files are copied into a throw-away folder beside symlinks to the checkpoint files and loaded from there with
``trust_remote_code``. OUT_DIR's reference.json / video.json give the prompts, forced ids and input images; the npz
files, those json files and checkpoint.json's shard hashes are rewritten.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

torch.set_num_threads(2)
torch.Tensor.cuda = lambda self, *a, **k: self             # CPU: upstream's .cuda() calls become no-ops
torch.Tensor.pin_memory = lambda self, *a, **k: self       # and so does pinning

ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
video_mode = "--video" in sys.argv
UP = Path(os.environ.get("SA2VA_UPSTREAM", "../Sa2VA"))
HARNESS = Path(os.environ.get("SA2VA_SAM3_HARNESS", "/work/upstream_sam3/harness"))
COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
updir = "projects/sa2va/hf/models_qwen3vl"
config = json.loads((ckpt / "config.json").read_text())
backbone = (config.get("sam3_config") or {}).get("vision_config", {}).get("backbone_config", {})
width = backbone.get("hidden_size", 1024)
os.environ["SA2VA_SAM3_GEOMETRY"] = json.dumps({
    "depth": backbone.get("num_hidden_layers", 32), "width": width,
    "heads": backbone.get("num_attention_heads", 16),
    "mlp_ratio": backbone.get("intermediate_size", 4736) / width,
    "global": backbone.get("global_attn_indexes", [7, 15, 23, 31])})

run_dir = Path(os.environ.get("SA2VA_PARITY_WORK", "/tmp/sa2va-parity")) / "run_qwen3_vl_sam3"
if run_dir.exists():
    shutil.rmtree(run_dir)
run_dir.mkdir(parents=True)
for p in ckpt.iterdir():
    (run_dir / p.name).symlink_to(p.resolve())
for name in ("configuration_sa2va_chat.py", "modeling_sa2va_qwen.py", "templates.py"):
    data = subprocess.run(["git", "-C", str(UP), "show", f"{COMMIT}:{updir}/{name}"], capture_output=True,
                          check=True).stdout.decode()
    if name == "modeling_sa2va_qwen.py":
        for old, new in (("from .sam2 import SAM2", "from .sam3 import SAM3"), ("'SAM2']", "'SAM3']"),
                         ("DirectResize(target_length=1024, )", "DirectResize(target_length=1008, )"),
                         ("self.grounding_encoder = SAM2()", "self.grounding_encoder = SAM3()")):
            assert data.count(old) == 1, old
            data = data.replace(old, new)
    (run_dir / name).write_text(data)
shutil.copy(HARNESS / "sam3.py", run_dir / "sam3.py")

from transformers import AutoModel, AutoProcessor, LogitsProcessor, LogitsProcessorList  # noqa: E402
import transformers  # noqa: E402

t0 = time.time()
model, info = AutoModel.from_pretrained(run_dir, trust_remote_code=True, torch_dtype=torch.float32,
                                        output_loading_info=True)
model.eval()
model.torch_dtype = torch.float32
processor = AutoProcessor.from_pretrained(run_dir)
load_s = time.time() - t0
detector_neck = [k for k in info["unexpected_keys"] if ".backbone.vision_backbone.convs." in k]
# the release's tracker is built with the detector neck only when SAM3VLBackbone keeps it; either way no other key
print("loading info:", {k: len(v) for k, v in info.items()}, "detector neck unexpected:", len(detector_neck))
# the ViT's RoPE tables (``attn.freqs_cis``) are buffers of this facebookresearch/sam3 revision, computed at build time
# and not stored in the release: recompute them (from_pretrained reports them missing)
rope = [k for k in info["missing_keys"] if k.endswith(".attn.freqs_cis")]
assert not [k for k in info["missing_keys"] if k not in rope] and not info.get("mismatched_keys"), info
assert not [k for k in info["unexpected_keys"] if k not in detector_neck], info
with torch.no_grad():
    for module in model.grounding_encoder.modules():
        if hasattr(module, "_setup_rope_freqs") and getattr(module, "use_rope", False):
            module._setup_rope_freqs()


def weights_equal_files():
    from safetensors import safe_open
    state = model.state_dict()
    count, equal, skipped = 0, True, 0
    for shard in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():
                count += 1
                if key not in state:
                    skipped += 1
                    continue
                equal &= bool(torch.equal(handle.get_tensor(key).float(), state[key].float()))
    return count, equal, skipped


N_FILE_TENSORS, WEIGHTS_EQUAL, N_NOT_IN_MODEL = weights_equal_files()
assert WEIGHTS_EQUAL
sam = model.grounding_encoder.sam2_model
original_init = sam.init_state


def init_state_cpu(*a, **k):
    st = original_init(*a, **k)
    st["device"] = torch.device("cpu")
    st["storage_device"] = torch.device("cpu")
    return st


sam.init_state = init_state_cpu
encoder_passes = [0]
original_forward_image = sam.forward_image


def forward_image(*a, **k):
    encoder_passes[0] += 1
    return original_forward_image(*a, **k)


sam.forward_image = forward_image
object_scores = []
original_heads = sam._forward_sam_heads


def heads(*a, **k):
    o = original_heads(*a, **k)
    object_scores.extend(o[-1].flatten().tolist())
    return o


sam._forward_sam_heads = heads


class Force(LogitsProcessor):
    def __init__(self, prompt_len, ids):
        self.prompt_len, self.ids = prompt_len, ids

    def __call__(self, input_ids, scores):
        step = min(input_ids.shape[1] - self.prompt_len, len(self.ids) - 1)
        outp = torch.full_like(scores, float("-inf"))
        outp[:, self.ids[step]] = 0
        return outp


captured = {}
original_generate = model.model.generate


def generate(**kwargs):
    captured["kwargs"] = kwargs
    plen = kwargs["input_ids"].shape[1]
    kwargs["logits_processor"] = LogitsProcessorList([Force(plen, captured["forced"])])
    o = original_generate(**kwargs)
    captured["output"] = o
    return o


model.model.generate = generate
fcs_in, fcs_out = [], []


def fcs_hook(module, inputs, output):
    fcs_in.append(inputs[0].detach().clone())
    fcs_out.append(output.detach().clone())


model.text_hidden_fcs.register_forward_hook(fcs_hook)
pred_masks_calls = []
original_lei = model.grounding_encoder.language_embd_inference


def lei(state, embd):
    r = original_lei(state, embd)
    pred_masks_calls.append(r.detach().clone())
    return r


model.grounding_encoder.language_embd_inference = lei


def shards_sha():
    res = {}
    for p in sorted(ckpt.glob("*.safetensors")):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for b in iter(lambda: f.read(1 << 22), b""):
                h.update(b)
        res[p.name] = h.hexdigest()
    return res


def run_case(images, prompt, forced, is_video):
    captured.clear()
    captured["forced"] = forced
    fcs_in.clear()
    fcs_out.clear()
    pred_masks_calls.clear()
    object_scores.clear()
    encoder_passes[0] = 0
    t = time.time()
    with torch.inference_mode():
        if is_video:
            res = model.predict_forward(video=images, text=prompt, processor=processor)
        else:
            res = model.predict_forward(image=images[0], text=prompt, processor=processor)
    seconds = time.time() - t
    kw, o = captured["kwargs"], captured["output"]
    plen = kw["input_ids"].shape[1]
    seq = o.sequences[0]
    gen = seq[plen:]
    seg_id = processor.tokenizer.convert_tokens_to_ids("[SEG]")
    w, h = images[0].size
    logits = []
    for pm in pred_masks_calls:      # one call per [SEG]: [T, 1, 1008, 1008]
        logits.append(F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)[:, 0])
    mask_logits = torch.stack(logits).float().numpy()  # [K, T, h, w]
    ret = np.stack([np.asarray(m) for m in res["prediction_masks"]])
    assert ret.shape == mask_logits.shape and (ret == (torch.from_numpy(mask_logits).sigmoid() > 0.5).numpy()).all()
    arrays = {"input_ids": kw["input_ids"][0].to(torch.int32).numpy(), "sequence": seq.numpy(),
              "generated_ids": gen.numpy(),
              "seg_positions": np.nonzero((seq[:-1] == seg_id).numpy())[0],
              "seg_hidden": torch.cat(fcs_in).float().numpy() if fcs_in else np.zeros((0, 0), np.float32),
              "seg_embedding": torch.cat(fcs_out).float().numpy() if fcs_out else np.zeros((0, 0), np.float32),
              "mask_logits": mask_logits.astype(np.float32), "masks": ret.astype(bool),
              "image_grid_thw": kw["image_grid_thw"].numpy()}
    meta = {"prediction": res["prediction"], "prompt_len": plen, "num_generated": int(gen.numel()),
            "num_seg": int((gen[:-1] == seg_id).sum()) if gen.numel() else 0,
            "mask_pixels_true": [[int(x) for x in m.reshape(m.shape[0], -1).sum(1)] for m in ret] if is_video
            else [int(m.sum()) for m in ret],
            "sam3_encoder_passes": encoder_passes[0], "object_scores_in_call_order": list(object_scores),
            "seconds": round(seconds, 2)}
    return arrays, meta


versions = {"transformers_version": transformers.__version__, "torch_version": torch.__version__}
common = {"upstream_repo": "bytedance/Sa2VA", "upstream_commit": COMMIT, "upstream_dir": updir,
          "grounding_upstream": "facebookresearch/sam3 tracker modules + EvoSeg@4a21e991 models_qwen3vl_sam3 "
                                "sam3.py / add_language_embd, rebuilt outside the repository",
          "missing_keys_recomputed_rope_buffers": len(rope), "unexpected_keys_detector_neck": len(detector_neck),
          "n_file_tensors": N_FILE_TENSORS, "n_file_tensors_not_in_upstream_model": N_NOT_IN_MODEL,
          "weights_equal_files": WEIGHTS_EQUAL, "threads": 2}
meta_ck = json.loads((out / "checkpoint.json").read_text())
model_dir = f"<sa2va.testing.write_checkpoint(folder, 'qwen3_vl', **{meta_ck['write_checkpoint']})>"
if not video_mode:
    ref = json.loads((out / "reference.json").read_text())
    total = time.time()
    timings = {"load": round(load_s, 2)}
    for case in ref["cases"]:
        img = Image.open(out / case["input_png"]).convert("RGB")
        arrays, meta = run_case([img], case["prompt"], case["forced_token_ids"], False)
        np.savez_compressed(out / f"{case['name']}.npz", **arrays)
        meta["seg_positions"] = arrays["seg_positions"].tolist()
        case.update(meta)
        case["generated_text"] = meta["prediction"]
        timings[case["name"]] = meta["seconds"]
        print(case["name"], meta["prediction"], meta["mask_pixels_true"], meta["object_scores_in_call_order"],
              meta["seconds"], flush=True)
    timings["total"] = round(time.time() - total + load_s, 2)
    ref.update(versions)
    ref.update(common)
    ref["timings_s"] = timings
    ref["model_dir"] = model_dir
    (out / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    meta_ck["shard_sha256"] = shards_sha()
    (out / "checkpoint.json").write_text(json.dumps(meta_ck, indent=2) + "\n")
else:
    ref = json.loads((out / "video.json").read_text())
    case = ref["case"]
    frames = [Image.open(out / p).convert("RGB") for p in case["input_pngs"]]
    arrays, meta = run_case(frames, case["prompt"], case["forced_token_ids"], True)
    arrays.pop("sequence")
    arrays.pop("seg_positions")
    np.savez_compressed(out / "video.npz", **arrays)
    case.update(meta)
    ref.update(versions)
    ref.update(common)
    ref["shard_sha256"] = shards_sha()
    ref["timings_s"] = {"load": round(load_s, 2), "video": meta["seconds"]}
    ref["model_dir"] = model_dir
    (out / "video.json").write_text(json.dumps(ref, indent=2) + "\n")
    print("video", meta["prediction"], meta["mask_pixels_true"], meta["object_scores_in_call_order"],
          meta["seconds"])
