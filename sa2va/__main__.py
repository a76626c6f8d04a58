"""Command line: ``python -m sa2va segment|info|download|models|doctor ...``.

    python -m sa2va segment [--model NAME|DIR] --image IMG [--prompt TEXT] [--task TASK] [--out OUTDIR]
        writes OUTDIR/answer.txt, OUTDIR/mask_<i>.png (probabilities as 8-bit grey) and OUTDIR/overlay.png;
        a catalog NAME (default Sa2VA-Qwen3-VL-4B) is downloaded first when its folder is incomplete
    python -m sa2va info --model DIR
        prints the family, the tensors and the config facts of a model folder without loading it
    python -m sa2va download NAME [--models-dir DIR]
        downloads a catalog model into DIR/NAME/ (DIR: $SA2VA_MODELS_DIR, else ./models/sa2va) with a progress bar;
        exit 0 when complete, 130 on Ctrl-C (partial files kept, the next run resumes), 2 on an error
    python -m sa2va models [--models-dir DIR]
        lists the catalog with download sizes and which models are present in DIR
    python -m sa2va doctor [--quick] [--device auto|cpu|cuda]
        checks the installation (versions, GPUs, bitsandbytes, one prediction on a tiny model); exit 1 on a failure

torch and the model code are imported only by the commands that need them, so ``doctor`` can report a missing or
broken torch or transformers.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .requests import DEFAULT_MAX_NEW_TOKENS
from .tasks import DEFAULT_TASK, TASKS

logger = logging.getLogger("sa2va")



class _DtypeNames:
    """The names of :data:`sa2va.loading.DTYPES` as argparse choices, read on first use (not at start-up)."""

    def _names(self) -> list[str]:
        from .loading import DTYPES

        return list(DTYPES)

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()


def _segment(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .outputs.boxes import mask_boxes
    from .outputs.masks import draw_labels, overlay, to_uint8
    from .loading import load_model

    from .doctor import device_line, resolve_device

    device = resolve_device(args.device)
    print(device_line(args.device, device), flush=True)
    folder = _model_folder(args.model, args.models_dir)
    model = load_model(folder, device=device, dtype=args.dtype, quantization=args.quantization,
                       attn_implementation=args.attn)
    image = Image.open(args.image).convert("RGB")
    pred = model.predict(image, args.prompt, max_new_tokens=args.max_new_tokens, task=args.task)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "answer.txt").write_text(pred.text + "\n", encoding="utf-8")
    for i, mask in enumerate(pred.masks):
        Image.fromarray(to_uint8(mask), "L").save(out / f"mask_{i}.png")
    pixels = torch.from_numpy(np.asarray(image)).float() / 255.0
    drawn = draw_labels(overlay(pixels, pred.masks), pred.masks, pred.phrases)
    Image.fromarray(to_uint8(drawn), "RGB").save(out / "overlay.png")
    summary = {"text": pred.text, "raw_text": pred.raw_text, "phrases": pred.phrases,
               "masks": [f"mask_{i}.png" for i in range(pred.masks.shape[0])],
               "scores": [round(float(x), 4) for x in pred.scores],
               "iou_scores": [round(float(x), 4) for x in pred.iou_scores],
               "object_scores": [round(float(x), 4) for x in pred.object_scores],
               "boxes": [list(b) if b else None for b in mask_boxes(pred.masks, 0.5)]}
    (out / "prediction.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(pred.text)
    print(f"{pred.masks.shape[0]} mask(s) written to {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .hub.checkpoint import detect_family, read_config, read_index

    config = read_config(args.model)
    family = detect_family(config, args.model)
    index = read_index(args.model)
    from .hub.keymap import SAM2_PREFIX, is_sam3_release

    size = sum(Path(args.model, s).stat().st_size for s in index.shards)
    if is_sam3_release(index.names(SAM2_PREFIX)):
        grounding = "SAM 3 tracker, custom (sam3_config)" if "sam3_config" in config else "SAM 3 tracker, 1008 px"
    else:
        grounding = "custom (sam2_config)" if "sam2_config" in config else "Hiera-L v1, 1024 px"
    print(json.dumps({"family": family, "shards": index.shards, "tensors": len(index.tensors),
                      "bytes": size, "sam2": grounding}, indent=2))
    return 0


def _models_dir(value: str | None) -> Path:
    """--models-dir, else $SA2VA_MODELS_DIR, else ./models/sa2va."""
    from .loading import MODELS_DIR_ENV

    return Path(value or os.environ.get(MODELS_DIR_ENV) or os.path.join("models", "sa2va"))


def _fetch(name: str, models_dir: Path) -> Path:
    """The complete folder of catalog model ``name`` under ``models_dir``, downloaded (with a terminal progress bar)
    when incomplete; no network when it is complete."""
    from tqdm import tqdm

    from .hub import catalog
    from .hub.download import download, is_complete, required_files
    from .errors import InputError

    entry = catalog.find(name)
    if entry is None:
        raise InputError(f"{name} is not a model this pack can download; `python -m sa2va models` lists them "
                         f"(any other model: place its folder by hand and pass --model DIR).")
    folder = models_dir / entry.name
    required = required_files(entry.family, entry.tokenizer)
    if is_complete(folder, required):
        return folder
    with tqdm(desc=entry.name, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        download(entry.repo_id, folder, progress=progress, required=required)
    return folder


def _model_folder(model: str, models_dir: str | None) -> str | Path:
    """--model: an existing folder as it is, else a catalog name (downloaded when needed), else the value itself
    (load_model resolves it under $SA2VA_MODELS_DIR or says it was not found)."""
    from .hub import catalog

    if Path(model).expanduser().is_dir() or catalog.find(model) is None:
        return model
    return _fetch(model, _models_dir(models_dir))


def _download(args: argparse.Namespace) -> int:
    folder = _fetch(args.name, _models_dir(args.models_dir))
    print(f"{folder} is complete.")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .hub import catalog
    from .hub.download import is_complete, required_files

    base = _models_dir(args.models_dir)
    print(f"{'model':<22} {'family':<11} {'download':>9}  status (in {base})")
    for entry in catalog.CATALOG:
        folder = base / entry.name
        if is_complete(folder, required_files(entry.family, entry.tokenizer)):
            status = "present"
        elif folder.is_dir():
            status = "partial (python -m sa2va download resumes it)"
        else:
            status = "-"
        default = " (default)" if entry.name == catalog.DEFAULT_MODEL else ""
        print(f"{entry.name:<22} {entry.family:<11} {entry.download_gb:>6.0f} GB  {status}{default}")
    return 0


def _add_download_commands(sub) -> None:
    dl = sub.add_parser("download", help="download a catalog model into DIR/NAME/ (resumes; Ctrl-C keeps partial "
                                         "files)")
    dl.add_argument("name", help="catalog name, e.g. Sa2VA-Qwen3-VL-4B (see: python -m sa2va models)")
    dl.add_argument("--models-dir", default=None, help="default: $SA2VA_MODELS_DIR, else ./models/sa2va")
    dl.set_defaults(func=_download)
    models = sub.add_parser("models", help="list the catalog with download sizes and the models present")
    models.add_argument("--models-dir", default=None, help="default: $SA2VA_MODELS_DIR, else ./models/sa2va")
    models.set_defaults(func=_models)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import device_line, exit_code, format_check, resolve_device, run_checks

    device = resolve_device(args.device)
    print(device_line(args.device, device), flush=True)
    checks = run_checks(predict=not args.quick, device=device,
                        report=lambda check: print(format_check(check), flush=True))
    failed = [c.name for c in checks if c.required and not c.ok]
    print(f"\n{len(failed)} required check(s) failed: {', '.join(failed)}" if failed else
          "\nAll required checks passed.")
    return exit_code(checks)


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser("doctor", help="check the installation and print what to fix")
    doctor.add_argument("--quick", action="store_true", help="skip the prediction on a tiny synthetic model")
    doctor.add_argument("--device", default="auto",
                        help="device of the tiny model's prediction: auto (CUDA when available, else cpu; the "
                             "default), cpu, cuda, cuda:1, ...")
    doctor.set_defaults(func=_doctor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sa2va", description="Sa2VA segmentation from the command line")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="answer a prompt about an image and write its masks")
    seg.add_argument("--model", default=None,
                     help="model folder, or a catalog name downloaded when needed (default: the default model)")
    seg.add_argument("--models-dir", default=None, help="where catalog models live (default: $SA2VA_MODELS_DIR, "
                                                        "else ./models/sa2va)")
    seg.add_argument("--image", required=True, help="input image file")
    seg.add_argument("--prompt", default="", help='e.g. "Please segment the person." (not used by the describe '
                     'tasks)')
    seg.add_argument("--task", choices=TASKS, default=DEFAULT_TASK,
                     help="segment (default): the prompt says what to segment; describe with masks: a description "
                          "with one labelled mask per phrase; describe: text only; ask: the prompt as a free question")
    seg.add_argument("--out", default="sa2va-out", help="output folder (default: ./sa2va-out)")
    seg.add_argument("--device", default="auto",
                     help="auto (CUDA when available, else cpu; the default), cpu, cuda, cuda:1, ...")
    seg.add_argument("--dtype", choices=_DtypeNames(), default="auto",
                     help="auto = bf16 on CUDA when supported, fp16 on older GPUs, fp32 on CPU")
    seg.add_argument("--quantization", choices=["8bit", "4bit"], default=None, help="bitsandbytes quantisation")
    seg.add_argument("--attn", default=None, help="attention kernel: sdpa (default), eager, flash_attention_2")
    seg.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                     help=f"answer length limit (default {DEFAULT_MAX_NEW_TOKENS})")
    seg.set_defaults(func=_segment)
    info = sub.add_parser("info", help="describe a model folder without loading it")
    info.add_argument("--model", required=True)
    info.set_defaults(func=_info)
    _add_download_commands(sub)
    _add_doctor(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is _segment and args.model is None:
        from .hub.catalog import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .errors import Sa2VAError

    try:
        return args.func(args)
    except Sa2VAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncancelled: partial files are kept; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
