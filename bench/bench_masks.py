"""Refinement throughput: megapixels per second for each method on a 2048x2048 image with 4 masks.

    python bench/bench_masks.py [--size 2048] [--masks 4] [--repeats 3] [--skip-vitmatte] [--json out.json]

Methods: black/white points, erode+dilate (3 px each), FastMatte (guided filter, r=8), threshold, and VITMatte with a
randomly initialised ViTMatte-S (the real architecture: timing does not depend on the weights) at the default 2 MP
working size. Runs on the CPU, and on CUDA too when available. Reports the median of the repeats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sa2va.outputs import masks as M  # noqa: E402
from sa2va.outputs.matting import Matter, matte  # noqa: E402


def vitmatte_small(device: torch.device) -> Matter:
    from transformers import VitDetConfig, VitMatteConfig, VitMatteForImageMatting, VitMatteImageProcessor

    backbone = VitDetConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, num_channels=4,
                            image_size=512, patch_size=16, out_features=["stage12"],
                            use_relative_position_embeddings=True,
                            window_block_indices=[0, 1, 3, 4, 6, 7, 9, 10], residual_block_indices=[2, 5, 8, 11],
                            window_size=14)
    config = VitMatteConfig(backbone_config=backbone, hidden_size=384, fusion_hidden_sizes=[256, 128, 64, 32],
                            convstream_hidden_sizes=[48, 96, 192])
    model = VitMatteForImageMatting(config).eval().to(device)
    return Matter(model, VitMatteImageProcessor())


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--masks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-vitmatte", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    megapixels = args.size * args.size * args.masks / 1e6
    results = []
    for device in devices:
        gen = torch.Generator().manual_seed(0)
        image = torch.rand(args.size, args.size, 3, generator=gen).to(device)
        probabilities = torch.rand(args.masks, args.size, args.size, generator=gen).to(device)
        methods = {
            "black/white points": lambda: M.remap_levels(probabilities, 0.05, 0.95),
            "erode 3 + dilate 3": lambda: M.dilate(M.erode(probabilities, 3), 3),
            "FastMatte (guided filter r=8)": lambda: M.guided_filter(image, probabilities, 8, 0.01),
            "threshold": lambda: M.threshold(probabilities, 0.3),
        }
        if not args.skip_vitmatte:
            matter = vitmatte_small(device)
            tri = M.trimap(probabilities, 0.05, 0.95, 3, 3)
            methods["VITMatte (ViTMatte-S, 2 MP)"] = lambda: matte(matter, image, tri, 2.0)
        for name, fn in methods.items():
            with torch.inference_mode():
                seconds = timed(fn, args.repeats, device)
            results.append({"device": str(device), "method": name, "seconds": seconds,
                            "megapixels_per_s": megapixels / seconds})
    print(f"{args.size}x{args.size}, {args.masks} masks ({megapixels:.1f} MP of masks), median of {args.repeats}")
    print(f"{'device':6} {'method':32} {'seconds':>9} {'MP/s':>9}")
    for r in results:
        print(f"{r['device']:6} {r['method']:32} {r['seconds']:9.3f} {r['megapixels_per_s']:9.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
