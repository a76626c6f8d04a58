"""One-command GPU check: a full-size random Sa2VA-Qwen3-VL-4B through the pack in bf16, 8-bit, 4-bit and fp32.

    python bench/gpu_check.py --quick              # CUDA, no network: within 4 minutes on one H100 (after the write)
    python bench/gpu_check.py                      # the full check: within 8 minutes
    python bench/gpu_check.py --tiny               # every section on a tiny geometry (the CPU is fine; tests use it)

The random checkpoint in the release format (the released Qwen3-VL-4B geometry and full-size SAM2 Hiera-L, fp32
shards; bench/gpu_checkpoint.py) is written before the clock starts and reused by the next run (``--folder``).
Answers are forced (``sa2va.testing.ForceTokens``) so every mode decodes the same tokens.

Each section (mode x measurement, bench/gpu_sections.py) runs on its own: an exception is recorded under the section
with its message and the next section runs; the JSON (``--json``, default bench/results/gpu_check.json) is rewritten
after every section, so a run killed by its time limit keeps what finished. A section that would not finish within
``--budget-s`` (240 s with ``--quick``, 470 s otherwise) is recorded as skipped. Sections per mode: load, stages
(preprocessing, vision tower, prefill, decode tokens/s), sam2_encode, mask_decode, end_to_end, video (checks that a
[SEG] was produced), batch (batched against one by one: ids equal, mask IoU), compile (bf16, full run on CUDA), unload
(memory left after the model is let go); then the masks of each mode against fp32 (IoU, max |dp|).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import gpu_checkpoint  # noqa: E402
import gpu_sections as sections  # noqa: E402

import torch  # noqa: E402

import sa2va  # noqa: E402

MODES = {"bf16": (torch.bfloat16, None), "8bit": (torch.bfloat16, "8bit"), "4bit": (torch.bfloat16, "4bit"),
         "fp32": (torch.float32, None)}
#: the sections of each mode, in order, and a first guess of their cost in seconds on an H100 (load: measured)
PLAN = {"bf16": ["load", "stages", "sam2_encode", "mask_decode", "end_to_end", "video", "batch", "compile", "unload"],
        "8bit": ["load", "stages", "end_to_end", "unload"], "4bit": ["load", "stages", "end_to_end", "unload"],
        "fp32": ["load", "end_to_end", "unload"]}
QUICK_SKIPS = {"compile"}
ESTIMATE_S = {"load": 40.0, "stages": 10.0, "sam2_encode": 5.0, "mask_decode": 5.0, "end_to_end": 10.0, "video": 30.0,
              "batch": 40.0, "compile": 120.0, "unload": 5.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Budget:
    """Seconds left of the run's budget; a section starts only when its estimate fits."""

    def __init__(self, seconds_total: float) -> None:
        self.end = time.monotonic() + seconds_total

    def left(self) -> float:
        return self.end - time.monotonic()


class Report:
    """The summary, written to ``path`` after every section."""

    def __init__(self, summary: dict, path: Path) -> None:
        self.summary, self.path = summary, path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self) -> None:
        text = json.dumps(self.summary, indent=2)
        partial = self.path.with_name(self.path.name + ".part")
        partial.write_text(text + "\n")
        partial.replace(self.path)  # a run killed mid-write keeps the previous complete file

    def record(self, mode: str, name: str, result: dict) -> None:
        self.summary["modes"].setdefault(mode, {})[name] = result
        self.write()


def run_section(fn, device: torch.device) -> dict:
    """``fn()``'s numbers with the section's wall time, or the error it raised as ``{"error": "Type: message"}``."""
    start = time.perf_counter()
    # a catch-all on purpose: whatever one section raises (out of memory, bitsandbytes missing, a kernel the card
    # lacks) is recorded in the JSON and the next section runs; GPU time is borrowed and the run must report
    try:
        result = dict(fn())
    except Exception as exc:  # noqa: BLE001
        result = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"  error: {result['error']}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["section_s"] = round(time.perf_counter() - start, 3)
    return result


def measure_mode(mode: str, folder: Path, device: torch.device, args, budget: Budget, report: Report,
                 masks: dict[str, torch.Tensor]) -> None:
    """Every section of ``mode``, each recorded as it ends; a section after a failed load says so."""
    dtype, quantization = MODES[mode]
    holder: dict = {}
    loaded_error = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0

    def load() -> dict:
        model, load_s = sections.seconds(lambda: sa2va.load_model(folder, device=device, dtype=dtype,
                                                                  quantization=quantization), device)
        holder["model"] = model
        holder["bench"] = sections.Bench(model, device, args)
        ESTIMATE_S["load"] = max(ESTIMATE_S["load"] if not args.tiny else 0.0, load_s * 1.2)
        out = {"load_s": round(load_s, 2)}
        if device.type == "cuda":
            out["vram_after_load_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 3)
        return out

    def end_to_end() -> dict:
        numbers, masks[mode] = sections.end_to_end(holder["bench"])
        return numbers

    def unload() -> dict:
        out = sections.unload(holder, device, before)
        if device.type == "cuda":
            out["peak_vram_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        return out

    run = {"load": load, "end_to_end": end_to_end, "unload": unload,
           **{name: (lambda name=name: getattr(sections, name)(holder["bench"]))
              for name in ("stages", "sam2_encode", "mask_decode", "video", "batch", "compile_check")}}
    run["compile"] = run.pop("compile_check")
    for name in PLAN[mode]:
        if name == "compile" and (args.quick or device.type != "cuda" or not args.compile):
            continue
        estimate = 0.0 if args.tiny else ESTIMATE_S[name]
        if name == "unload" and "model" not in holder and loaded_error is None:
            report.record(mode, name, {"skipped": "nothing was loaded"})
            continue
        if loaded_error is not None and name != "load":
            report.record(mode, name, {"error": f"not run: the model did not load ({loaded_error})"})
            continue
        if name != "unload" and budget.left() < estimate:
            report.record(mode, name, {"skipped": f"budget: {budget.left():.0f} s left, needs ~{estimate:.0f} s"})
            continue
        log(f"{mode} {name} ...")
        result = run_section(run[name], device)
        if name == "load" and "error" in result:
            loaded_error = result["error"]
        report.record(mode, name, result)
        log(f"{mode} {name}: {result}")
    holder.clear()


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny geometry (plumbing check; the CPU is fine)")
    parser.add_argument("--quick", action="store_true", help="fewer runs and frames: within 4 minutes on an H100")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--modes", nargs="+", default=["bf16", "8bit", "4bit"], choices=["bf16", "8bit", "4bit"])
    parser.add_argument("--folder", help="checkpoint folder (default bench/results/checkpoints/gpu-check-<size>)")
    parser.add_argument("--budget-s", type=float, default=None, help="default 240 with --quick, else 470")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--video-size", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="images in the batched measurement")
    parser.add_argument("--runs", type=int, default=2, help="timed calls per measurement (median)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile check")
    parser.add_argument("--json", help="the summary, rewritten after every section (default "
                                       "bench/results/gpu_check.json)")
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 240.0 if args.quick else 470.0
    if args.quick:
        args.frames, args.batch, args.runs, args.decode_tokens = 8, 4, 1, 32
    if args.tiny:
        args.size, args.video_size, args.frames, args.decode_tokens, args.batch, args.runs = 128, 64, 2, 6, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = "gpu-check-tiny" if args.tiny else "gpu-check-qwen3_vl-4b"
    folder = Path(args.folder) if args.folder else common.RESULTS / "checkpoints" / name
    start = time.perf_counter()
    folder = gpu_checkpoint.tiny_checkpoint(folder) if args.tiny else \
        gpu_checkpoint.write_full_checkpoint(folder, device)
    written = round(time.perf_counter() - start, 1)
    budget = Budget(args.budget_s)  # the clock starts after the checkpoint is on disk
    clock = time.perf_counter()
    stored = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    summary: dict = {"benchmark": "gpu_check", "environment": common.environment(device), "checkpoint": str(folder),
                     "geometry": "tiny" if args.tiny else "Sa2VA-Qwen3-VL-4B (random)", "quick": args.quick,
                     "checkpoint_gib": round(stored / 2**30, 3), "checkpoint_ready_s": written,
                     "budget_s": args.budget_s, "image": f"{args.size}x{args.size}", "modes": {}}
    report = Report(summary, Path(args.json) if args.json else common.RESULTS / "gpu_check.json")
    log(f"checkpoint {folder} ({stored / 2**30:.2f} GiB) ready after {written} s; budget {args.budget_s:.0f} s")
    masks: dict[str, torch.Tensor] = {}
    for mode in args.modes + ["fp32"]:
        measure_mode(mode, folder, device, args, budget, report, masks)
    summary["mask_agreement_vs_fp32"] = {
        mode: (run_section(lambda mode=mode: sections.agreement(masks[mode], masks["fp32"]), device)
               if mode in masks and "fp32" in masks else {"error": "not run: no masks from this mode or from fp32"})
        for mode in args.modes}
    summary["total_s"] = round(time.perf_counter() - clock, 1)
    report.write()
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
