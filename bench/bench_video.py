"""Seconds per frame and peak memory of Sa2VAModel.predict_video against the clip length.

    python bench/bench_video.py                              # CPU, fp32: small SAM2 curve (8, 16, 32 frames)
    python bench/bench_video.py --full-frames 8              # ... plus one full-size SAM2 point
    python bench/bench_video.py --device cuda --dtype bf16 --lengths 8 16 32 64 --offload

Two synthetic checkpoints (built once and cached under bench/results/checkpoints/): the test suite's tiny model
(SAM2 at 256 px, the ``sam2_config`` block of the tests) for the curve, and full-size SAM2 Hiera-L at 1024 px with
the same tiny language model for the full-size point. The clip is 240x320 frames of a red disc moving over a
gradient, produced lazily one frame at a time (as a video reader would), and every answer is forced to
``Sure, it is [SEG].`` (one object tracked). Memory mode with the reference's 5 key frames.

Reported per clip length: total seconds, seconds per tracked frame (time between the progress callbacks of the
first and the last frame, divided by the frames in between: the per-frame cost without the language model), peak
memory growth during the call (RSS on CPU, max_memory_allocated on CUDA) and the size of the returned masks, which
is the only part that must grow with the clip. Medians of ``--runs`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sa2va  # noqa: E402
from sa2va.testing import ForceTokens  # noqa: E402
from sa2va.video import key_frame_indices  # noqa: E402

PROMPT = "<image>Please segment the red ball."
HEIGHT, WIDTH = 240, 320


class MovingDisc:
    """A lazy clip: frame ``i`` is drawn when indexed (uint8 ``[240, 320, 3]``)."""

    def __init__(self, count: int) -> None:
        self.count = count
        y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
        self.background = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, np.full_like(x, 120)], -1).astype(np.uint8)
        self.y, self.x = y, x

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        frame = self.background.copy()
        cx = 40 + (WIDTH - 80) * index / max(self.count - 1, 1)
        frame[(self.x - cx) ** 2 + (self.y - 130) ** 2 < 35 ** 2] = [230, 30, 30]
        return frame


def forcing(model, clip) -> list:
    """Decoding forced to ``Sure, it is [SEG].<|im_end|>`` (the prompt length depends on the key frames)."""
    keys = key_frame_indices(len(clip), 5, "first")
    inputs = model.prompt_inputs([clip[k] for k in keys], PROMPT)
    tok = model.tokenizer
    answer = tok.encode("Sure, it is", add_special_tokens=False) + [tok.convert_tokens_to_ids("[SEG]")] + \
        tok.encode(".", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    return [ForceTokens(inputs["input_ids"].shape[1], answer)]


def measure(model, length: int, device: torch.device, runs: int, **options) -> dict:
    clip = MovingDisc(length)
    processors = forcing(model, clip)
    rows = []
    for _ in range(runs):
        stamps: list[float] = []

        def run(stamps=stamps):
            return model.predict_video(clip, PROMPT, logits_processor=processors,
                                       progress=lambda done, total: stamps.append(time.perf_counter()), **options)

        start = time.perf_counter()
        video, sample = common.timed(run, device)
        assert video.masks.shape == (1, length, HEIGHT, WIDTH), video.masks.shape
        per_frame = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        rows.append({"wall": sample.wall, "per_frame": per_frame, "before_first_frame": stamps[0] - start,
                     "peak": sample.peak_memory, "output": video.masks.numel() * 4})
        del video
    median = lambda key: float(np.median([r[key] for r in rows]))  # noqa: E731
    return {"frames": length, "wall_s": round(median("wall"), 3), "s_per_tracked_frame": round(median("per_frame"), 4),
            "s_until_first_frame": round(median("before_first_frame"), 3),
            "peak_memory_growth_bytes": max(r["peak"] for r in rows), "output_bytes": rows[0]["output"],
            "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


def curve(model, lengths: list[int], device: torch.device, runs: int, options: dict, label: str) -> list[dict]:
    measure(model, min(lengths), device, 1, **options)  # warm-up (buffers, caches, first-call costs)
    points = []
    for length in lengths:
        point = measure(model, length, device, runs, **options)
        points.append(point)
        print(f"  [{label}] {length:3d} frames: {point['wall_s']:.2f} s, {point['s_per_tracked_frame']:.3f} s/frame, "
              f"peak +{common.mb(point['peak_memory_growth_bytes'])} MB (masks {common.mb(point['output_bytes'])} MB)",
              flush=True)
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--full-frames", type=int, nargs="*", default=[8],
                        help="clip lengths for the full-size SAM2 point(s); none to skip")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mode", default="memory", choices=["memory", "consistent"])
    parser.add_argument("--offload", action="store_true", help="offload_frames and offload_state on")
    parser.add_argument("--json", help="output path (default bench/results/video-<device>.json)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = common.parse_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    options = {"mode": args.mode, "offload_frames": args.offload, "offload_state": args.offload}
    env = common.environment(device)
    print(f"{device}, {dtype}, {env['torch_threads']} threads, load average {env['load_average']}", flush=True)
    results: dict = {"environment": env, "options": options, "dtype": str(dtype)}

    small = sa2va.load_model(common.checkpoint("qwen3_vl", "qwen3_vl-tiny-sam2"), device=device, dtype=dtype)
    results["small_sam2"] = curve(small, args.lengths, device, args.runs, options, "SAM2 256 px")
    del small
    if args.full_frames:
        full = sa2va.load_model(common.checkpoint("qwen3_vl", "qwen3_vl-full-sam2", sam2="full"), device=device,
                                dtype=dtype)
        results["full_sam2"] = curve(full, args.full_frames, device, 1, options, "SAM2-L 1024 px")

    for key, title in (("small_sam2", "small SAM2 (256 px)"), ("full_sam2", "SAM2 Hiera-L (1024 px)")):
        if key in results:
            print(f"\n{title}, {args.mode} mode, {dtype}, {device}:")
            print(common.table(["frames", "total s", "s before 1st frame", "s / tracked frame", "peak growth MB",
                                "masks MB", "growth - masks MB"],
                               [[p["frames"], p["wall_s"], p["s_until_first_frame"], p["s_per_tracked_frame"],
                                 common.mb(p["peak_memory_growth_bytes"]), common.mb(p["output_bytes"]),
                                 common.mb(p["peak_memory_growth_bytes"] - p["output_bytes"])]
                                for p in results[key]]))
    path = common.write_json(results, args.json, f"video-{device.type}.json")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
