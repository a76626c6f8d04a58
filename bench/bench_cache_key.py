"""What an encoder-cache key costs on a miss (issue 26): the content hash of a 1024x1024 RGB image on the CPU.

    python bench/bench_cache_key.py [--size 1024] [--runs 50] [--json out.json]

Times, per image: the key as the engine makes it (``keyed_image`` hashes the uint8 source in place; every later key
of the call reads the remembered digest), the digest of a PIL image (its bytes copied out first), and blake2b over the
bytes (what a cryptographic hash would cost). Target: the engine's key within 2 ms (``TARGET_MS``); exit 1 beyond it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sa2va.cache import content_key, image_digest, pixel_digest  # noqa: E402

TARGET_MS = 2.0


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    pixels = (np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8)
    pil = Image.fromarray(pixels)
    settings = ("grounding", "sam2", 1024, "cuda:0", "torch.bfloat16", True, "onednn", None)
    numbers = {
        "image": f"{args.size}x{args.size} RGB uint8",
        "engine_key_ms": median_ms(lambda: content_key(pixel_digest(pixels), *settings), args.runs),
        "pil_key_ms": median_ms(lambda: content_key(image_digest(pil), *settings), args.runs),
        "blake2b_bytes_ms": median_ms(lambda: hashlib.blake2b(pixels.tobytes(), digest_size=20).hexdigest(),
                                      args.runs),
        "target_ms": TARGET_MS,
    }
    numbers = {k: round(v, 3) if isinstance(v, float) else v for k, v in numbers.items()}
    numbers["ratio_to_target"] = round(numbers["engine_key_ms"] / TARGET_MS, 3)
    text = json.dumps(numbers, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if numbers["engine_key_ms"] <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
