"""Upstream parity references for the Sa2VA-LLaVA format (run in a transformers 4.57.0 venv).

usage: python tests/parity_tools/make_reference_llava.py LLAVA_CODE UPSTREAM_GIT CHECKPOINT_DIR OUT_DIR [COMMIT] [--video]

LLAVA_CODE: a folder holding the release's two LLaVA files, ``modeling_sa2va_llava.py`` and
``configuration_sa2va_chat.py``, as published in ``projects/sa2va/hf/models_llava/`` of the public fork
cjhcjh123-666/EvoSeg @ 4a21e991276ac688bddbdcc4e5edaeb872a44020 (bytedance/Sa2VA does not hold them; the fork can only
be read file by file, so they are saved by hand into a folder outside this repository). UPSTREAM_GIT: a bytedance/Sa2VA
clone (bare or not); COMMIT (default 9832e1a...): the revision whose ``projects/sa2va/hf/models/sam2.py`` and
``templates.py`` the LLaVA code imports. All four files are written into a temporary folder next to symlinks of
CHECKPOINT_DIR's files (never into this repository) and loaded with ``trust_remote_code``, as ``AutoModel`` would load
the release. CHECKPOINT_DIR: the folder ``sa2va.testing.write_checkpoint`` wrote with the arguments in
OUT_DIR/checkpoint.json. OUT_DIR/reference.json holds the cases (name, prompt, input_png, schedule) and
``free_vocab_limit``; this script runs upstream's ``predict_forward`` on each case on the CPU in fp32 with eager
attention (``.cuda()`` a no-op, ``model.torch_dtype = float32``, the SAM2 state on the CPU), writes ``<case>.npz``
(input_ids, generated_ids, raw_logits, seg_hidden, seg_embedding, mask_logits, masks), completes reference.json
(prediction, prompt length, pixel hash, timings, versions, load report) and records the shard hashes in
checkpoint.json. With ``--video`` it runs OUT_DIR/video.json's clip instead (``predict_forward(video=[PIL x T])``,
every step forced to ``forced_token_ids``) and writes video.npz (input_ids, generated_ids, seg_hidden,
seg_embedding, mask_logits [K, T, h, w], masks) and completes video.json. No upstream code is part of this file.
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

LLAVA_FILES = ("modeling_sa2va_llava.py", "configuration_sa2va_chat.py")
LLAVA_SOURCE = ("cjhcjh123-666/EvoSeg", "4a21e991276ac688bddbdcc4e5edaeb872a44020", "projects/sa2va/hf/models_llava")
UPSTREAM_DIR = "projects/sa2va/hf/models"
UPSTREAM_FILES = ("sam2.py", "templates.py")
DEFAULT_COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
logger = logging.getLogger("make_reference_llava")


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def stage(code: Path, upstream: Path, commit: str, ckpt: Path, run_dir: Path) -> dict[str, str]:
    """Symlink the checkpoint's files and write the upstream model code next to them; returns each file's sha256."""
    for p in ckpt.iterdir():
        (run_dir / p.name).symlink_to(p.resolve())
    hashes = {}
    for name in LLAVA_FILES:
        data = (code / name).read_bytes()
        (run_dir / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    for name in UPSTREAM_FILES:
        data = subprocess.run(["git", "-C", str(upstream), "show", f"{commit}:{UPSTREAM_DIR}/{name}"],
                              capture_output=True, check=True).stdout
        hashes[name] = hashlib.sha256(data).hexdigest()  # upstream's file as published
        if name == "sam2.py":  # the checkpoint's trunk where it is not the releases' Hiera-L (sam2_trunk.py)
            data = staged_sam2(data, ckpt)
        (run_dir / name).write_bytes(data)
    return hashes


def main(code: Path, upstream: Path, ckpt: Path, out: Path, commit: str, video: bool = False) -> None:
    import transformers
    from transformers import AutoModel, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(2)
    torch.Tensor.cuda = lambda self, *a, **k: self  # upstream hard-codes CUDA; the numerics do not change
    run_dir = Path(tempfile.mkdtemp(prefix="sa2va_upstream_llava_"))
    try:
        code_sha = stage(code, upstream, commit, ckpt, run_dir)
        t0 = time.time()
        model, info = AutoModel.from_pretrained(run_dir, trust_remote_code=True, torch_dtype=torch.float32,
                                                attn_implementation="eager", output_loading_info=True)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(run_dir)
        model.preparing_for_generation(tokenizer, max_new_tokens=64)
        model.torch_dtype = torch.float32  # upstream hard-codes bf16 pixels; the reference is fp32 throughout
        load_s = time.time() - t0
    finally:
        shutil.rmtree(run_dir)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    llava = model.model
    attn = {llava.config.text_config._attn_implementation, llava.config.vision_config._attn_implementation}
    assert attn == {"eager"}, attn

    from safetensors import safe_open

    state = model.state_dict()
    n_file, equal = 0, True
    for shard in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():
                n_file += 1
                equal &= bool(torch.equal(handle.get_tensor(key).float(), state[key].float()))
    assert equal, "a loaded parameter differs from its file tensor"
    assert n_file == len(state), (n_file, len(state))

    sam2_model = model.grounding_encoder.sam2_model
    original_init = sam2_model.init_state

    def init_state_cpu(images):
        st = original_init(images)
        st["device"] = torch.device("cpu")
        st["storage_device"] = torch.device("cpu")
        return st

    sam2_model.init_state = init_state_cpu

    class Schedule(LogitsProcessor):
        """Steps counted from the prompt length (upstream generates from input_ids, which keep the prompt)."""

        def __init__(self, schedule, free_limit):
            self.schedule, self.free_limit, self.raw, self.prompt_length = schedule, free_limit, [], None

        def __call__(self, input_ids, scores):
            self.raw.append(scores[0].detach().clone())
            step = input_ids.shape[1] - self.prompt_length
            o = torch.full_like(scores, float("-inf"))
            if step in self.schedule:
                o[:, self.schedule[step]] = 0
            else:
                o[:, :self.free_limit] = scores[:, :self.free_limit]
            return o

    captured: dict = {}
    original_generate = llava.generate

    def generate(**kwargs):
        captured["kwargs"] = kwargs
        captured["processor"].prompt_length = kwargs["input_ids"].shape[1]
        kwargs["logits_processor"] = LogitsProcessorList([captured["processor"]])
        captured["output"] = original_generate(**kwargs)
        return captured["output"]

    llava.generate = generate
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

    meta = json.loads((out / "checkpoint.json").read_text())
    common = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
              "upstream_repo": LLAVA_SOURCE[0], "upstream_commit": LLAVA_SOURCE[1], "upstream_dir": LLAVA_SOURCE[2],
              "sam2_and_templates_from": f"bytedance/Sa2VA@{commit}:{UPSTREAM_DIR}",
              "upstream_files_sha256": code_sha, "template": model.config.template,
              "missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "n_file_tensors": n_file,
              "weights_equal_files": equal, "threads": 2,
              "model_dir": f"<sa2va.testing.write_checkpoint(folder, {meta['family']!r}, "
                           f"**checkpoint.json['write_checkpoint'])>"}
    if video:
        ref = json.loads((out / "video.json").read_text())
        case = ref["case"]
        frames = [Image.open(out / p).convert("RGB") for p in case["input_pngs"]]
        processor = Schedule(dict(enumerate(case["forced_token_ids"])), 0)
        captured.clear()
        captured["processor"] = processor
        t = time.time()
        with torch.inference_mode():
            res = model.predict_forward(video=frames, text=case["prompt"], tokenizer=tokenizer)
        seconds = time.time() - t
        kw, sequence = captured["kwargs"], captured["output"].sequences[0]
        prompt_len = int(kw["input_ids"].shape[1])
        w, h = frames[0].size
        logits = torch.stack([F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                              for pm in pred_masks]).float().numpy()  # [K, T, h, w]
        ret = np.stack([np.asarray(m) for m in res["prediction_masks"]])
        assert ret.shape == logits.shape and (ret == (torch.from_numpy(logits).sigmoid() > 0.5).numpy()).all()
        np.savez_compressed(out / "video.npz", input_ids=kw["input_ids"][0].to(torch.int32).numpy(),
                            generated_ids=sequence[prompt_len:].numpy(), seg_hidden=torch.cat(fcs_in).float().numpy(),
                            seg_embedding=torch.cat(fcs_out).float().numpy(), mask_logits=logits,
                            masks=ret.astype(bool))
        case.update({"prediction": res["prediction"], "prompt_len": prompt_len,
                     "pixel_values_shape": list(kw["pixel_values"].shape),
                     "num_generated": int(sequence.numel()) - prompt_len, "num_seg": int(len(fcs_in[0])),
                     "mask_pixels_true": [[int(x) for x in m.reshape(m.shape[0], -1).sum(1)] for m in ret],
                     "seconds": round(seconds, 2)})
        ref.update(common)
        ref.update({"upstream_call": "Sa2VAChatModelLlava.predict_forward(video=[PIL x T], text=prompt, "
                                     "tokenizer=tokenizer)",
                    "shard_sha256": {p.name: file_sha(p) for p in sorted(ckpt.glob("*.safetensors"))},
                    "timings_s": {"load": round(load_s, 2), "video": round(seconds, 2)}})
        (out / "video.json").write_text(json.dumps(ref, indent=2) + "\n")
        logger.info("video: %r, mask pixels %s, %.1f s", res["prediction"], case["mask_pixels_true"], seconds)
        return
    ref = json.loads((out / "reference.json").read_text())
    timings = {"load": round(load_s, 2)}
    for case in ref["cases"]:
        image = Image.open(out / case["input_png"]).convert("RGB")
        processor = Schedule({int(k): v for k, v in case["schedule"].items()}, ref["free_vocab_limit"])
        captured.clear()
        captured["processor"] = processor
        fcs_in.clear(), fcs_out.clear(), pred_masks.clear()
        t = time.time()
        with torch.inference_mode():
            res = model.predict_forward(image=image, text=case["prompt"], tokenizer=tokenizer)
        seconds = time.time() - t
        kw, sequence = captured["kwargs"], captured["output"].sequences[0]
        prompt_len = int(kw["input_ids"].shape[1])
        w, h = image.size
        logits = torch.stack([F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                              for pm in pred_masks]).float().numpy()
        ret = np.stack([np.asarray(m) for m in res["prediction_masks"]])
        assert (ret == (torch.from_numpy(logits).sigmoid() > 0.5).numpy()).all()
        pv = kw["pixel_values"].float()
        np.savez_compressed(out / f"{case['name']}.npz", input_ids=kw["input_ids"][0].to(torch.int32).numpy(),
                            generated_ids=sequence[prompt_len:].numpy(),
                            raw_logits=torch.stack(processor.raw).float().numpy(),
                            seg_hidden=torch.cat(fcs_in).float().numpy(),
                            seg_embedding=torch.cat(fcs_out).float().numpy(), mask_logits=logits,
                            masks=ret.astype(bool))
        case.update({"prediction": res["prediction"], "prompt_len": prompt_len,
                     "pixel_values_shape": list(pv.shape), "clip_pixels_sha256": sha(pv),
                     "num_generated": int(sequence.numel()) - prompt_len,
                     "num_seg": int(len(fcs_in[0])) if fcs_in else 0,
                     "mask_pixels_true": [int(m.sum()) for m in ret], "seconds": round(seconds, 2)})
        timings[case["name"]] = round(seconds, 2)
        logger.info("%s: %r, mask pixels %s, %.1f s", case["name"], res["prediction"], case["mask_pixels_true"],
                    seconds)
    ref.update(common)
    ref["timings_s"] = timings
    (out / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    meta["shard_sha256"] = {p.name: file_sha(p) for p in sorted(ckpt.glob("*.safetensors"))}
    (out / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--video"]
    if len(args) not in (4, 5):
        sys.exit(__doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]), args[4] if len(args) == 5 else DEFAULT_COMMIT,
         video="--video" in sys.argv)
