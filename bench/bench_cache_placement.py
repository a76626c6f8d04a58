"""Where cached encoder features live while the model is offloaded (issue 26): dropped, or kept on the offload device.

    python bench/bench_cache_placement.py [--size 1024] [--runs 3] [--json out.json]

The CPU plumbing of both placements on the tiny test model (its encoders are tiny, so the re-encode it measures is
cheap; the copies scale with bytes), plus a copy of one image's full-size entries (SAM2 Hiera-L features at 1024 px in
fp32, ~20 MB, and Qwen3-VL-4B's vision embeddings with deepstack in bf16, ~21 MB) as the byte cost per hit:

- ``drop`` (what the pack does): ComfyUI offloads the model -> the cache is emptied; the next prompt on the same
  image runs both encoders again. Holds nothing anywhere while offloaded.
- ``keep``: the entries are copied to the offload device at offload and back to the compute device on a hit.
  Holds the cache's bytes (up to ``SA2VA_ENCODER_CACHE_MB``, 512 MiB) in host RAM while offloaded, and pays a
  host-to-device copy per hit.

Both leave nothing on the compute device after "Unload Models" (measured: bytes of cached tensors still on it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sa2va  # noqa: E402
from sa2va import testing  # noqa: E402

PROMPT = "Please segment the person."
#: one 1024x1024 image's full-size entries: SAM2 Hiera-L levels (fp32) and Qwen3-VL-4B embeddings + deepstack (bf16)
FULL_ENTRY_BYTES = {"sam2_fp32": 20 * 2**20, "qwen3_vl_4b_vision_bf16": 21 * 2**20}


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    image = (np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        model = sa2va.load_model(testing.write_checkpoint(Path(tmp) / "tiny", "qwen3_vl"), device="cpu",
                                 dtype="fp32")
        cache = model.encoder_cache

        def prompt():
            return model.predict(image, PROMPT, max_new_tokens=8)

        prompt()
        entry_bytes = cache.nbytes
        warm = median_s(prompt, args.runs)

        dropped, keep_offload, kept, saved = [], [], [], []
        for _ in range(args.runs):
            prompt()  # the cache holds the image
            cache.clear()  # drop: what the offload does
            start = time.perf_counter()
            prompt()
            dropped.append(time.perf_counter() - start)
            start = time.perf_counter()  # keep: the entries go to the offload device ...
            saved[:] = [(key, _copy(value)) for key, value in cache.entries()]
            cache.clear()
            keep_offload.append(time.perf_counter() - start)
            start = time.perf_counter()  # ... and come back to the compute device on the hit
            for key, value in saved:
                cache.put(key, _copy(value))
            prompt()
            kept.append(time.perf_counter() - start)
        dropped, keep_offload, kept = (statistics.median(x) for x in (dropped, keep_offload, kept))
        left_after_unload = sum(t.numel() * t.element_size() for t in cache.tensors() if t.device.type != "cpu")
    full = sum(FULL_ENTRY_BYTES.values())
    block = torch.empty(full, dtype=torch.uint8)
    copy_full = median_s(lambda: block.clone(), max(args.runs, 5))
    numbers = {
        "tiny_model_entry_bytes_per_image": entry_bytes,
        "next_prompt_cache_warm_s": round(warm, 4),
        "drop": {"next_prompt_after_offload_s": round(dropped, 4), "host_bytes_held_while_offloaded": 0},
        "keep": {"offload_copy_s": round(keep_offload, 5), "next_prompt_after_offload_s": round(kept, 4),
                 "host_bytes_held_while_offloaded": entry_bytes},
        "full_size_entry_bytes_per_image": full,
        "full_size_entry_cpu_copy_ms": round(copy_full * 1000, 2),
        "compute_device_bytes_after_unload": left_after_unload,
    }
    text = json.dumps(numbers, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def _copy(value):
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


if __name__ == "__main__":
    raise SystemExit(main())
