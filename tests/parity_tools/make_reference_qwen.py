"""Upstream parity references for the Qwen families: runs ByteDance's own ``predict_forward`` on a synthetic checkpoint.

Not part of the pack or the test suite. Run it in a separate venv with transformers 4.57.0 (see
tests/data/parity/README.md), never in the pack's environment:

    SA2VA_UPSTREAM=/path/to/bytedance/Sa2VA python make_reference_qwen.py FAMILY CHECKPOINT_DIR OUT_DIR [--video[=NAME]]

CHECKPOINT_DIR is written beforehand with ``sa2va.testing.write_checkpoint`` and the arguments in
OUT_DIR/checkpoint.json. The upstream files (``projects/sa2va/hf/models_qwen3vl`` or ``models_qwen2_5_vl`` at the
pinned commit) are copied from the git checkout into a throw-away folder beside symlinks to the checkpoint files and
loaded from there with the upstream classes; nothing upstream is written into this repository. OUT_DIR's committed
inputs/ and the prompts and forced ids of reference.json / video.json are reused; the npz files, those json files and
checkpoint.json's shard hashes are rewritten. ``--video=NAME`` makes the clip of NAME.json (default ``video``);
``--only=CASE`` makes one image case of reference.json and leaves the others' files as they are.

A case may name ``seg_embedding_shift`` (256 numbers): it is added, as float32, to the output of upstream's
``text_hidden_fcs`` (the [SEG] projection) before SAM2 sees it (a forward hook, the same as a projection whose last
bias differs by that vector; the recorded ``seg_embedding`` is the shifted one). That is how the cases whose object
scores are negative are made from the same checkpoint and pictures; tests/test_parity.py shifts the pack's
projection the same way. SAM2's object scores are recorded in call order.
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
from sam2_trunk import staged_sam2

torch.set_num_threads(2)
torch.Tensor.cuda = lambda self, *a, **k: self

family, ckpt, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
video_args = [a for a in sys.argv[4:] if a.startswith("--video")]
video_mode = bool(video_args)
video_name = (video_args[0].partition("=")[2] or "video") if video_mode else None
only = [a.partition("=")[2] for a in sys.argv[4:] if a.startswith("--only=")]
UP = Path(os.environ.get("SA2VA_UPSTREAM", "../Sa2VA"))  # a bytedance/Sa2VA checkout (git)
COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
updir = {"qwen3_vl": "projects/sa2va/hf/models_qwen3vl", "qwen2_5_vl": "projects/sa2va/hf/models_qwen2_5_vl"}[family]

run_dir = Path(os.environ.get("SA2VA_PARITY_WORK", "/tmp/sa2va-parity")) / f"run_{family}"
if run_dir.exists():
    shutil.rmtree(run_dir)
run_dir.mkdir(parents=True)
for p in ckpt.iterdir():
    (run_dir / p.name).symlink_to(p.resolve())
for name in ("configuration_sa2va_chat.py", "modeling_sa2va_qwen.py", "sam2.py", "templates.py"):
    data = subprocess.run(["git", "-C", str(UP), "show", f"{COMMIT}:{updir}/{name}"], capture_output=True,
                          check=True).stdout
    if name == "sam2.py":  # the checkpoint's trunk where it is not the releases' Hiera-L (sam2_trunk.py)
        data = staged_sam2(data, ckpt)
    (run_dir / name).write_bytes(data)

from transformers import AutoModel, AutoProcessor, LogitsProcessor, LogitsProcessorList  # noqa: E402
import transformers  # noqa: E402

t0 = time.time()
model, info = AutoModel.from_pretrained(run_dir, trust_remote_code=True, torch_dtype=torch.float32,
                                        output_loading_info=True)
model.eval()
model.torch_dtype = torch.float32
processor = AutoProcessor.from_pretrained(run_dir)
load_s = time.time() - t0
assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info

def weights_equal_files():
    from safetensors import safe_open
    state = model.state_dict()
    count, equal = 0, True
    for shard in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():
                count += 1
                equal &= bool(torch.equal(handle.get_tensor(key).float(), state[key].float()))
    return count, equal


N_FILE_TENSORS, WEIGHTS_EQUAL = weights_equal_files()
assert WEIGHTS_EQUAL
sam2_model = model.grounding_encoder.sam2_model
original_init = sam2_model.init_state


def init_state_cpu(images):
    st = original_init(images)
    st["device"] = torch.device("cpu")
    st["storage_device"] = torch.device("cpu")
    return st


sam2_model.init_state = init_state_cpu
encoder_passes = [0]
original_forward_image = sam2_model.forward_image


def forward_image(*a, **k):
    encoder_passes[0] += 1
    return original_forward_image(*a, **k)


sam2_model.forward_image = forward_image
object_scores = []
original_heads = sam2_model._forward_sam_heads


def heads(*a, **k):
    o = original_heads(*a, **k)
    object_scores.extend(o[-1].flatten().tolist())
    return o


sam2_model._forward_sam_heads = heads


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
seg_shift = [None]


def shift_hook(module, inputs, output):
    return None if seg_shift[0] is None else output + seg_shift[0]


model.text_hidden_fcs.register_forward_hook(shift_hook)   # before the recording hook, which sees the shifted output
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


def run_case(images, prompt, forced, is_video, shift=None):
    seg_shift[0] = None if shift is None else torch.tensor(shift, dtype=torch.float32)
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
    for pm in pred_masks_calls:      # one call per [SEG]: [T, 1, 1024, 1024]
        logits.append(F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)[:, 0])
    mask_logits = torch.stack(logits).float().numpy()  # [K, T, h, w]
    masks = mask_logits > 0  # sigmoid > 0.5
    ret = np.stack([np.asarray(m) for m in res["prediction_masks"]])
    assert ret.shape == masks.shape and (ret == (torch.from_numpy(mask_logits).sigmoid() > 0.5).numpy()).all()
    arrays = {"input_ids": kw["input_ids"][0].to(torch.int32).numpy(), "sequence": seq.numpy(),
              "generated_ids": gen.numpy(),
              "seg_positions": np.nonzero((seq[:-1] == seg_id).numpy())[0],
              "seg_hidden": torch.cat(fcs_in).float().numpy() if fcs_in else np.zeros((0, 0), np.float32),
              "seg_embedding": torch.cat(fcs_out).float().numpy() if fcs_out else np.zeros((0, 0), np.float32),
              "mask_logits": mask_logits, "masks": ret.astype(bool),
              "image_grid_thw": kw["image_grid_thw"].numpy()}
    meta = {"prediction": res["prediction"], "prompt_len": plen, "num_generated": int(gen.numel()),
            "num_seg": int((gen[:-1] == seg_id).sum()) if gen.numel() else 0,
            "image_grid_thw": kw["image_grid_thw"].tolist(),
            "pixel_values_shape": list(kw["pixel_values"].shape),
            "pixel_values_sum": float(kw["pixel_values"].double().sum()),
            "pixel_values_abs_sum": float(kw["pixel_values"].double().abs().sum()),
            "mask_pixels_true": [[int(x) for x in m.reshape(m.shape[0], -1).sum(1)] for m in ret] if is_video
            else [int(m.sum()) for m in ret],
            "sam2_encoder_passes": encoder_passes[0], "object_scores_in_call_order": list(object_scores),
            "seconds": round(seconds, 2)}
    return arrays, meta


writer_args = json.loads((out / "checkpoint.json").read_text())["write_checkpoint"]
model_dir = f"<sa2va.testing.write_checkpoint(folder, '{family}', **{writer_args!r})>"
versions = {"transformers_version": transformers.__version__, "torch_version": torch.__version__}
common = {"upstream_repo": "bytedance/Sa2VA", "upstream_commit": COMMIT, "upstream_dir": updir,
          "missing_keys": [], "unexpected_keys": [], "n_file_tensors": N_FILE_TENSORS, "weights_equal_files": WEIGHTS_EQUAL, "threads": 2}
if not video_mode:
    ref = json.loads((out / "reference.json").read_text())
    total = time.time()
    timings = {**(ref.get("timings_s", {}) if only else {}), "load": round(load_s, 2)}
    for case in ref["cases"]:
        if only and case["name"] not in only:
            continue
        img = Image.open(out / case["input_png"]).convert("RGB")
        arrays, meta = run_case([img], case["prompt"], case["forced_token_ids"], False,
                                case.get("seg_embedding_shift"))
        np.savez_compressed(out / f"{case['name']}.npz", **{k: v for k, v in arrays.items()},
                            pixel_values_shape=np.array(meta["pixel_values_shape"]),
                            pixel_values_sum=np.float64(meta["pixel_values_sum"]),
                            pixel_values_abs_sum=np.float64(meta["pixel_values_abs_sum"]))
        meta["seg_positions"] = arrays["seg_positions"].tolist()
        case.update(meta)
        case["generated_text"] = meta["prediction"]
        timings[case["name"]] = meta["seconds"]
        print(case["name"], meta["prediction"], meta["mask_pixels_true"], meta["seconds"], flush=True)
    timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 2)
    ref.update(versions)
    ref.update(common)
    ref["timings_s"] = timings
    ref["model_dir"] = model_dir
    (out / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    meta_ck = json.loads((out / "checkpoint.json").read_text())
    meta_ck["shard_sha256"] = shards_sha()
    (out / "checkpoint.json").write_text(json.dumps(meta_ck, indent=2) + "\n")
else:
    ref = json.loads((out / f"{video_name}.json").read_text())
    case = ref["case"]
    frames = [Image.open(out / p).convert("RGB") for p in case["input_pngs"]]
    arrays, meta = run_case(frames, case["prompt"], case["forced_token_ids"], True,
                            case.get("seg_embedding_shift"))
    arrays.pop("sequence")
    arrays.pop("seg_positions")
    np.savez_compressed(out / f"{video_name}.npz", **arrays)
    meta.pop("pixel_values_shape")
    meta.pop("pixel_values_sum")
    meta.pop("pixel_values_abs_sum")
    case.update(meta)
    ref.update(versions)
    ref.update(common)
    ref["shard_sha256"] = shards_sha()
    meta_ck = json.loads((out / "checkpoint.json").read_text())
    meta_ck["shard_sha256"] = ref["shard_sha256"]
    (out / "checkpoint.json").write_text(json.dumps(meta_ck, indent=2) + "\n")
    ref["timings_s"] = {"load": round(load_s, 2), "video": meta["seconds"]}
    ref["model_dir"] = model_dir
    (out / f"{video_name}.json").write_text(json.dumps(ref, indent=2) + "\n")
    print("video", meta["prediction"], meta["mask_pixels_true"], meta["object_scores_in_call_order"], meta["seconds"])
