"""Upstream parity references for the InternVL family: runs ByteDance's own ``predict_forward`` on a synthetic checkpoint.

Not part of the pack or the test suite. Run it in a separate venv with transformers 4.57.0, peft, timm and einops (see
tests/data/parity/README.md), never in the pack's environment:

    SA2VA_UPSTREAM=/path/to/bytedance/Sa2VA python make_reference_internvl.py CHECKPOINT_DIR OUT_DIR

The upstream files (``projects/sa2va/hf/models`` at the pinned commit) are copied from the git checkout into a
throw-away folder beside symlinks to the checkpoint files. OUT_DIR's reference.json (cases, prompts, schedules,
free_vocab_limit) and inputs/ are reused; the npz files, reference.json and checkpoint.json's shard hashes are
rewritten.
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
torch.Tensor.cuda = lambda self, *a, **k: self

ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
UP = Path(os.environ.get("SA2VA_UPSTREAM", "../Sa2VA"))  # a bytedance/Sa2VA checkout (git)
COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
updir = "projects/sa2va/hf/models"
run_dir = Path(os.environ.get("SA2VA_PARITY_WORK", "/tmp/sa2va-parity")) / "run_internvl"
if run_dir.exists():
    shutil.rmtree(run_dir)
run_dir.mkdir(parents=True)
for p in ckpt.iterdir():
    (run_dir / p.name).symlink_to(p.resolve())
names = subprocess.run(["git", "-C", str(UP), "ls-tree", "--name-only", f"{COMMIT}:{updir}"], capture_output=True,
                       check=True, text=True).stdout.split()
for name in names:
    data = subprocess.run(["git", "-C", str(UP), "show", f"{COMMIT}:{updir}/{name}"], capture_output=True,
                          check=True).stdout
    (run_dir / name).write_bytes(data)

import transformers  # noqa: E402
from transformers import AutoModel, AutoTokenizer, LogitsProcessor, LogitsProcessorList  # noqa: E402

t0 = time.time()
model, info = AutoModel.from_pretrained(run_dir, trust_remote_code=True, torch_dtype=torch.float32,
                                        use_flash_attn=False, output_loading_info=True)
model.eval()
tokenizer = AutoTokenizer.from_pretrained(run_dir)
model.preparing_for_generation(tokenizer, torch_dtype=torch.float32)
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


class Schedule(LogitsProcessor):
    """Upstream generates from inputs_embeds: input_ids hold only the new tokens, so the step is their count."""

    def __init__(self, schedule, free_limit):
        self.schedule, self.free_limit, self.raw = schedule, free_limit, []

    def __call__(self, input_ids, scores):
        self.raw.append(scores[0].detach().clone())
        step = input_ids.shape[1]
        o = torch.full_like(scores, float("-inf"))
        if step in self.schedule:
            o[:, self.schedule[step]] = 0
        else:
            o[:, :self.free_limit] = scores[:, :self.free_limit]
        return o


captured = {}
original_generate = model.generate


def generate(**kwargs):
    captured["kwargs"] = kwargs
    kwargs["logits_processor"] = LogitsProcessorList([captured["processor"]])
    o = original_generate(**kwargs)
    captured["output"] = o
    return o


model.generate = generate
vit = []
original_extract = model.extract_feature


def extract_feature(pixel_values):
    r = original_extract(pixel_values)
    vit.append(r.detach().clone())
    return r


model.extract_feature = extract_feature
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


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


ref = json.loads((out / "reference.json").read_text())
timings = {"load": round(load_s, 2)}
total = time.time()
for case in ref["cases"]:
    image = Image.open(out / case["input_png"]).convert("RGB")
    regions = [(np.array(Image.open(out / p)) != 0) for p in case.get("region_pngs", [])]
    mask_prompts = [np.stack(regions).astype(np.float32)] if regions else None
    processor = Schedule({int(k): v for k, v in case["schedule"].items()}, ref["free_vocab_limit"])
    captured.clear(); captured["processor"] = processor
    vit.clear(); fcs_in.clear(); fcs_out.clear(); pred_masks_calls.clear(); encoder_passes[0] = 0
    t = time.time()
    with torch.inference_mode():
        res = model.predict_forward(image=image, text=case["prompt"], tokenizer=tokenizer, mask_prompts=mask_prompts)
    seconds = time.time() - t
    kw, o = captured["kwargs"], captured["output"]
    gen = o.sequences[0]
    w, h = image.size
    logits = torch.stack([F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                          for pm in pred_masks_calls]).float().numpy()
    ret = np.stack([np.asarray(m) for m in res["prediction_masks"]])
    assert (ret == (torch.from_numpy(logits).sigmoid() > 0.5).numpy()).all()
    pv = kw["pixel_values"].float()
    arrays = {"input_ids": kw["input_ids"][0].to(torch.int32).numpy(), "generated_ids": gen.numpy(),
              "raw_logits": torch.stack(processor.raw).float().numpy(),
              "seg_hidden": torch.cat(fcs_in).float().numpy(), "seg_embedding": torch.cat(fcs_out).float().numpy(),
              "mask_logits": logits, "masks": ret.astype(bool)}
    np.savez_compressed(out / f"{case['name']}.npz", **arrays)
    region_counts = [int(len(x)) for x in []]
    case.update({"prediction": res["prediction"], "prompt_len": int(kw["input_ids"].shape[1]),
                 "num_tiles": int(pv.shape[0]), "pixel_values_shape": list(pv.shape),
                 "pixel_values_sha256": sha(pv), "vit_embeds_shape": list(vit[0].shape),
                 "vit_embeds_sha256": sha(vit[0].float()), "num_generated": int(gen.numel()),
                 "num_seg": int(len(fcs_in[0])) if fcs_in else 0,
                 "mask_pixels_true": [int(m.sum()) for m in ret], "sam2_encoder_passes": encoder_passes[0],
                 "seconds": round(seconds, 2)})
    case.pop("inputs_embeds_sha256", None)
    timings[case["name"]] = round(seconds, 2)
    print(case["name"], repr(res["prediction"]), case["mask_pixels_true"], round(seconds, 1), flush=True)
timings["total"] = round(time.time() - total + load_s, 2)
ref.update({"transformers_version": transformers.__version__, "torch_version": torch.__version__,
            "upstream_commit": COMMIT, "timings_s": timings, "n_file_tensors": N_FILE_TENSORS,
            "weights_equal_files": WEIGHTS_EQUAL,
            "model_dir": "<sa2va.testing.write_checkpoint(folder, 'internvl', sam2='full', seed=0, "
                         "max_shard_bytes=300*2**20)>"})
(out / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
meta = json.loads((out / "checkpoint.json").read_text())
hashes = {}
for p in sorted(ckpt.glob("*.safetensors")):
    d = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            d.update(b)
    hashes[p.name] = d.hexdigest()
meta["shard_sha256"] = hashes
(out / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
