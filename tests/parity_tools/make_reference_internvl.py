"""Upstream parity references for InternVL-style Sa2VA checkpoints (run in a transformers 4.57.0 venv; 4.49.0 for
InternLM2 checkpoints, whose upstream code cannot generate under later versions).

usage: python tests/parity_tools/make_reference_internvl.py UPSTREAM_GIT CHECKPOINT_DIR OUT_DIR [COMMIT]

UPSTREAM_GIT: a bytedance/Sa2VA clone (bare or not); COMMIT (default 9832e1a...): the revision whose
``projects/sa2va/hf/models`` code is run. The upstream files are copied with ``git show`` into a temporary folder next
to symlinks of CHECKPOINT_DIR's files (never into this repository) and loaded with ``trust_remote_code``, as
``AutoModel`` would load a release. CHECKPOINT_DIR: the folder ``sa2va.testing.write_checkpoint`` wrote with the
arguments in OUT_DIR/checkpoint.json. OUT_DIR/reference.json holds the cases (name, prompt, input_png, optional
region_pngs, schedule) and ``free_vocab_limit``; this script runs upstream's ``predict_forward`` on each case on the CPU
in fp32 with eager attention (``.cuda()`` a no-op, the SAM2 state on the CPU), writes ``<case>.npz`` (input_ids,
generated_ids, raw_logits, seg_hidden, seg_embedding, mask_logits, masks), completes reference.json (prediction,
prompt length, tiles, timings, versions, load report) and records the shard hashes in checkpoint.json.
No upstream code is part of this file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sam2_trunk import staged_sam2

UPSTREAM_DIR = "projects/sa2va/hf/models"
DEFAULT_COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
logger = logging.getLogger("make_reference_internvl")


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def stage(upstream: Path, commit: str, ckpt: Path, run_dir: Path) -> None:
    """Symlink the checkpoint's files and write the upstream model code next to them."""
    for p in ckpt.iterdir():
        (run_dir / p.name).symlink_to(p.resolve())
    names = subprocess.run(["git", "-C", str(upstream), "ls-tree", "--name-only", f"{commit}:{UPSTREAM_DIR}"],
                           capture_output=True, check=True, text=True).stdout.split()
    for name in names:
        data = subprocess.run(["git", "-C", str(upstream), "show", f"{commit}:{UPSTREAM_DIR}/{name}"],
                              capture_output=True, check=True).stdout
        if name == "sam2.py":  # the checkpoint's trunk where it is not the releases' Hiera-L (sam2_trunk.py)
            data = staged_sam2(data, ckpt)
        (run_dir / name).write_bytes(data)


def main(upstream: Path, ckpt: Path, out: Path, commit: str) -> None:
    import transformers
    from transformers import AutoModel, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(2)
    torch.Tensor.cuda = lambda self, *a, **k: self  # upstream hard-codes CUDA; the numerics do not change
    run_dir = Path(tempfile.mkdtemp(prefix="sa2va_upstream_"))
    try:
        stage(upstream, commit, ckpt, run_dir)
        t0 = time.time()
        model, info = AutoModel.from_pretrained(run_dir, trust_remote_code=True, torch_dtype=torch.float32,
                                                use_flash_attn=False, output_loading_info=True)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=True)  # InternLM2's is remote code
        model.preparing_for_generation(tokenizer, max_new_tokens=64, torch_dtype=torch.float32)
        load_s = time.time() - t0
    finally:
        shutil.rmtree(run_dir)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info

    from safetensors import safe_open

    state = model.state_dict()
    n_file, equal = 0, True
    for shard in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():
                n_file += 1
                equal &= bool(torch.equal(handle.get_tensor(key).float(), state[key].float()))
    assert equal, "a loaded parameter differs from its file tensor"

    sam2_model = model.grounding_encoder.sam2_model
    original_init = sam2_model.init_state

    def init_state_cpu(images):
        st = original_init(images)
        st["device"] = torch.device("cpu")
        st["storage_device"] = torch.device("cpu")
        return st

    sam2_model.init_state = init_state_cpu

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

    captured: dict = {}
    original_generate = model.generate

    def generate(**kwargs):
        captured["kwargs"] = kwargs
        kwargs["logits_processor"] = LogitsProcessorList([captured["processor"]])
        captured["output"] = original_generate(**kwargs)
        return captured["output"]

    model.generate = generate
    fcs_in, fcs_out, pred_masks = [], [], []

    def fcs_hook(module, inputs, output) -> None:  # returns None: the output is kept
        fcs_in.append(inputs[0].detach().clone())
        fcs_out.append(output.detach().clone())

    model.text_hidden_fcs.register_forward_hook(fcs_hook)
    original_lei = model.grounding_encoder.language_embd_inference

    def lei(sam_states, embeddings):
        r = original_lei(sam_states, embeddings)
        pred_masks.append(r.detach().clone())
        return r

    model.grounding_encoder.language_embd_inference = lei

    ref = json.loads((out / "reference.json").read_text())
    timings = {"load": round(load_s, 2)}
    for case in ref["cases"]:
        image = Image.open(out / case["input_png"]).convert("RGB")
        regions = [(np.array(Image.open(out / p)) != 0) for p in case.get("region_pngs", [])]
        mask_prompts = [np.stack(regions).astype(np.float32)] if regions else None
        processor = Schedule({int(k): v for k, v in case["schedule"].items()}, ref["free_vocab_limit"])
        captured.clear()
        captured["processor"] = processor
        fcs_in.clear(), fcs_out.clear(), pred_masks.clear()
        t = time.time()
        with torch.inference_mode():
            res = model.predict_forward(image=image, text=case["prompt"], tokenizer=tokenizer,
                                        mask_prompts=mask_prompts)
        seconds = time.time() - t
        kw, gen = captured["kwargs"], captured["output"].sequences[0]
        w, h = image.size
        logits = torch.stack([F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                              for pm in pred_masks]).float().numpy()
        ret = np.stack([np.asarray(m) for m in res["prediction_masks"]])
        assert (ret == (torch.from_numpy(logits).sigmoid() > 0.5).numpy()).all()
        pv = kw["pixel_values"].float()
        np.savez_compressed(out / f"{case['name']}.npz", input_ids=kw["input_ids"][0].to(torch.int32).numpy(),
                            generated_ids=gen.numpy(), raw_logits=torch.stack(processor.raw).float().numpy(),
                            seg_hidden=torch.cat(fcs_in).float().numpy(),
                            seg_embedding=torch.cat(fcs_out).float().numpy(), mask_logits=logits,
                            masks=ret.astype(bool))
        case.update({"prediction": res["prediction"], "prompt_len": int(kw["input_ids"].shape[1]),
                     "num_tiles": int(pv.shape[0]), "pixel_values_shape": list(pv.shape),
                     "pixel_values_sha256": sha(pv), "num_generated": int(gen.numel()),
                     "num_seg": int(len(fcs_in[0])) if fcs_in else 0,
                     "mask_pixels_true": [int(m.sum()) for m in ret], "seconds": round(seconds, 2)})
        timings[case["name"]] = round(seconds, 2)
        logger.info("%s: %r, mask pixels %s, %.1f s", case["name"], res["prediction"], case["mask_pixels_true"],
                    seconds)
    meta = json.loads((out / "checkpoint.json").read_text())
    ref.update({"transformers_version": transformers.__version__, "torch_version": torch.__version__,
                "upstream_repo": "bytedance/Sa2VA", "upstream_commit": commit, "upstream_dir": UPSTREAM_DIR,
                "template": model.config.template, "missing_keys": [], "unexpected_keys": [],
                "mismatched_keys": [], "n_file_tensors": n_file, "weights_equal_files": equal, "threads": 2,
                "timings_s": timings,
                "model_dir": f"<sa2va.testing.write_checkpoint(folder, {meta.get('family', 'internvl')!r}, "
                             f"**checkpoint.json['write_checkpoint'])>"})
    (out / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    meta["shard_sha256"] = {p.name: file_sha(p) for p in sorted(ckpt.glob("*.safetensors"))}
    (out / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) == 5 else DEFAULT_COMMIT)
