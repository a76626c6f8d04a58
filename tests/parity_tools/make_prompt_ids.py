"""Prompt-id tables: the token ids each release's own ``predict_forward`` builds for a set of prompts (run in the
transformers 4.57 venv, the version the releases' code runs on).

usage: python tests/parity_tools/make_prompt_ids.py UPSTREAM_GIT LLAVA_CODE OUT_DIR [FORMAT ...]

UPSTREAM_GIT: a bytedance/Sa2VA clone (bare or not), read at :data:`COMMIT`; LLAVA_CODE: a folder holding the LLaVA
release's ``modeling_sa2va_llava.py`` and ``configuration_sa2va_chat.py`` (see make_reference_llava.py: they are
saved by hand from cjhcjh123-666/EvoSeg, outside this repository). For each format of :data:`FORMATS` this script
writes the tiny checkpoint with ``sa2va.testing.write_checkpoint``, stages the upstream code next to its files in a
temporary folder (never in this repository), builds its model with ``trust_remote_code`` from the folder's config
(uninitialised weights: the ids need none), loads the tokenizer / processor as the release's README does, and runs
``predict_forward`` on every case of :data:`CASES` until the model's ``generate`` is called: the ``input_ids`` it
receives are the reference; no generation runs. The venv needs the packages the upstream code imports (peft, timm,
einops, qwen_vl_utils, sentencepiece; see tests/data/parity/README.md). OUT_DIR/<format>.json holds the cases,
the ids (run-length encoded: ``[[id, count], ...]``), the upstream revision and the versions.
``tests/test_prompt_ids.py`` compares the pack's ids with them. No upstream code is part of this file.

InternVL releases: the release's ``predict_forward`` puts the image only where the text holds ``<image>`` (its README
always writes ``"<image>" + question``); the pack puts it before a text without the marker, so for those cases the
reference is upstream's ids for ``"<image>" + prompt`` (``upstream_text`` in the table).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
LLAVA_FILES = ("modeling_sa2va_llava.py", "configuration_sa2va_chat.py")
LLAVA_SOURCE = "cjhcjh123-666/EvoSeg@4a21e991276ac688bddbdcc4e5edaeb872a44020:projects/sa2va/hf/models_llava"
#: format -> (family, write_checkpoint options, upstream code folder at COMMIT; None: LLAVA_CODE)
FORMATS = {
    "qwen3_vl": ("qwen3_vl", {}, "projects/sa2va/hf/models_qwen3vl"),
    "qwen2_5_vl": ("qwen2_5_vl", {}, "projects/sa2va/hf/models_qwen2_5_vl"),
    "internvl": ("internvl", {}, "projects/sa2va/hf/models"),
    "internvl_phi3": ("internvl", {"template": "phi3_chat"}, "projects/sa2va/hf/models"),
    "internvl_internlm2": ("internvl", {"decoder": "internlm2"}, "projects/sa2va/hf/models"),
    "llava": ("llava", {}, None),
    "llava_legacy": ("llava", {"tokenizer_form": "legacy"}, None),
}
#: (name, prompt, frames): frames 1 is one image (IMAGE_SIZE), more is a clip of that many frames
CASES = [
    ("plain", "Please segment the cat.", 1),
    ("double_spaces", "Please  segment   the cat.", 1),
    ("edge_spaces", " Please segment the cat. ", 1),
    ("newlines", "First line.\nSecond line.\n\nAfter a blank line.\n", 1),
    ("tab", "Segment\tthe dog.", 1),
    ("non_ascii", "Segment the café, the naïve Zoë and 日本の猫 — please.", 1),
    ("image_first", "<image>Please segment the dog.", 1),
    ("image_first_newline", "<image>\nPlease segment the dog.", 1),
    ("image_inside", "Look at this: <image> and segment the dog.", 1),
    ("image_last", "Please segment the dog.<image>", 1),
    ("special_next_to_words", "Answer with[SEG]and<p>the dog</p>please, [SEG].", 1),
    ("special_first", "[SEG] the dog", 1),
    ("video", "Please track the red ball.", 3),
    ("video_image_marker", "<image>Please track the red ball.", 3),
    ("video_image_inside", "In this clip <image> track the ball.", 2),
]
IMAGE_SIZE = (32, 32)


def rle(ids: list[int]) -> list[list[int]]:
    """``[[id, count], ...]`` of consecutive equal ids."""
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][0] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return out


def frames(count: int) -> list[Image.Image]:
    return [Image.new("RGB", IMAGE_SIZE, (40 * i, 80, 120)) for i in range(count)]


class Captured(Exception):
    def __init__(self, input_ids: torch.Tensor) -> None:
        super().__init__("captured")
        self.input_ids = input_ids


def capture(**kwargs):
    raise Captured(kwargs["input_ids"])


def stage(upstream: Path, llava_code: Path, updir: str | None, ckpt: Path, run_dir: Path) -> None:
    for p in ckpt.iterdir():
        (run_dir / p.name).symlink_to(p.resolve())
    if updir is None:
        for name in LLAVA_FILES:
            shutil.copyfile(llava_code / name, run_dir / name)
        updir, names = "projects/sa2va/hf/models", ["sam2.py", "templates.py"]
    else:
        names = subprocess.run(["git", "--git-dir", str(upstream), "ls-tree", "--name-only", f"{COMMIT}:{updir}"],
                               capture_output=True, check=True, text=True).stdout.split()
    for name in names:
        data = subprocess.run(["git", "--git-dir", str(upstream), "show", f"{COMMIT}:{updir}/{name}"],
                              capture_output=True, check=True).stdout
        (run_dir / name).write_bytes(data)


def upstream_ids(fmt: str, upstream: Path, llava_code: Path, work: Path) -> dict:
    import transformers
    from transformers import AutoConfig, AutoModel, AutoProcessor, AutoTokenizer
    from transformers.modeling_utils import no_init_weights

    from sa2va.testing import write_checkpoint

    family, options, updir = FORMATS[fmt]
    ckpt = write_checkpoint(work / f"ckpt_{fmt}", family, seg_chain=False, **options)
    run_dir = Path(tempfile.mkdtemp(prefix=f"sa2va_prompt_ids_{fmt}_"))
    try:
        stage(upstream, llava_code, updir, ckpt, run_dir)
        extra = {"use_flash_attn": False} if family == "internvl" else {}
        config = AutoConfig.from_pretrained(run_dir, trust_remote_code=True)
        with no_init_weights():  # the ids need no weights (the tiny SAM2 would not fit upstream's Hiera-L anyway)
            model = AutoModel.from_config(config, trust_remote_code=True, torch_dtype=torch.float32, **extra)
        if family.startswith("qwen"):
            processor, tokenizer = AutoProcessor.from_pretrained(run_dir), None
            target = model.model
        else:
            processor = None
            tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=True)
            if family == "internvl":
                model.preparing_for_generation(tokenizer, max_new_tokens=8, torch_dtype=torch.float32)
                target = model
            else:
                model.preparing_for_generation(tokenizer, max_new_tokens=8)
                target = model.model
        target.generate = capture
        rows = []
        for name, prompt, count in CASES:
            text = prompt
            if family == "internvl" and "<image>" not in prompt:
                text = "<image>" + prompt
            images = frames(count)
            kwargs = {"video": images} if count > 1 else {"image": images[0]}
            try:
                model.predict_forward(text=text, tokenizer=tokenizer, processor=processor, **kwargs)
            except Captured as got:
                ids = got.input_ids[0].tolist()
            else:
                raise AssertionError(f"{fmt}/{name}: generate was not called")
            row = {"name": name, "prompt": prompt, "frames": count, "ids": rle(ids), "length": len(ids)}
            if text != prompt:
                row["upstream_text"] = text
            rows.append(row)
    finally:
        shutil.rmtree(run_dir)
    source = LLAVA_SOURCE if updir is None else f"bytedance/Sa2VA@{COMMIT}:{updir}"
    return {"format": fmt, "family": family, "write_checkpoint": options, "image_size": list(IMAGE_SIZE),
            "upstream": source, "transformers_version": transformers.__version__, "cases": rows}


def main(upstream: Path, llava_code: Path, out: Path, formats: list[str]) -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self  # upstream hard-codes CUDA; ids do not change
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sa2va_prompt_ids_ckpt_"))
    try:
        for fmt in formats or list(FORMATS):
            table = upstream_ids(fmt, upstream, llava_code, work)
            (out / f"{fmt}.json").write_text(json.dumps(table, ensure_ascii=False, separators=(",", ":"))
                                             .replace('{"name"', '\n{"name"') + "\n", encoding="utf-8")
            print(fmt, [c["length"] for c in table["cases"]])
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
