"""Images per second for an IMAGE batch: Sa2VAModel.segment (the engine call) against predict called image by image.

    python bench/bench_batch.py                     # CPU, fp32, batches of 1, 4 and 8 images, 3 runs each
    python bench/bench_batch.py --device cuda --dtype bf16 --batches 1 4 8 16

Same checkpoint as bench_predict.py (full-size SAM2 Hiera-L at 1024 px, tiny language model; built once and cached
under bench/results/checkpoints/). Every image is a 480x640 variant of the test picture and every answer is forced
to ``Sure, it is [SEG].`` (one mask per image). ``segment`` generates in batches of up to 4 images (left
padding), then runs the SAM2 image encoder once over the whole batch and decodes each image's masks in one call; the
loop calls ``predict`` per image. The encoder cache is emptied before every run.
Both give the same masks (asserted, <= 1e-5). Medians of alternating runs after one warm-up.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sa2va  # noqa: E402
from bench_predict import PROMPT, answer_ids, prompt_length, test_image  # noqa: E402
from sa2va.testing import ForceTokens  # noqa: E402


def images(count: int) -> list[np.ndarray]:
    """``count`` different 480x640 pictures: the test image flipped and shifted."""
    base = test_image()
    out = []
    for i in range(count):
        img = base[:, ::-1] if i % 2 else base
        out.append(np.ascontiguousarray(np.roll(img, shift=37 * i, axis=1)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: the full-SAM2 synthetic checkpoint)")
    parser.add_argument("--family", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile-sam2", action="store_true")
    parser.add_argument("--json", help="output path (default bench/results/batch-<device>.json)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = common.parse_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    folder = Path(args.model) if args.model else common.checkpoint(args.family, f"{args.family}-full-sam2",
                                                                   sam2="full")
    model = sa2va.load_model(folder, device=device, dtype=dtype, compile_sam2=args.compile_sam2)
    env = common.environment(device)
    pictures = images(max(args.batches))
    length = prompt_length(model, pictures[0])
    forcing = [ForceTokens(length, answer_ids(model.tokenizer, 1))]
    print(f"model {folder} ({model.family}), {device}, {dtype}, {env['torch_threads']} threads", flush=True)

    def batch(n):
        model.encoder_cache.clear()  # every run encodes its images again
        return [found[0] for found in model.segment(pictures[:n], PROMPT, logits_processor=forcing)]

    def loop(n):
        model.encoder_cache.clear()
        return [model.predict(img, PROMPT, logits_processor=forcing) for img in pictures[:n]]

    results = []
    for n in args.batches:
        calls = {"segment": lambda: batch(n), "predict loop": lambda: loop(n)}
        reference = None
        series = {name: common.Series() for name in calls}
        for name in calls:  # warm-up and check
            out, _ = common.timed(calls[name], device)
            masks = torch.cat([p.masks for p in out])
            if masks.shape[0] != n:
                raise AssertionError(f"expected {n} masks, got {masks.shape[0]}")
            if reference is None:
                reference = masks
            elif float((masks - reference).abs().max()) > 1e-5:
                raise AssertionError(f"batch of {n}: segment and predict differ")
        for r in range(args.runs):
            for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                series[name].samples.append(common.timed(calls[name], device)[1])
        row = {"batch": n, **{name: s.as_json() for name, s in series.items()}}
        for name in calls:
            row[name]["images_per_s"] = round(n / row[name]["median_wall_s"], 4)
        results.append(row)
        print(f"batch {n}: segment {row['segment']['images_per_s']:.3f} img/s, predict loop "
              f"{row['predict loop']['images_per_s']:.3f} img/s", flush=True)

    memory_name = "peak RSS growth MB" if device.type == "cpu" else "peak CUDA alloc MB"
    rows = [[r["batch"], f"{r['segment']['images_per_s']:.3f}", f"{r['predict loop']['images_per_s']:.3f}",
             f"{r['segment']['median_wall_s']:.1f}", f"{r['predict loop']['median_wall_s']:.1f}",
             common.mb(r["segment"]["max_peak_memory_bytes"]),
             common.mb(r["predict loop"]["max_peak_memory_bytes"])] for r in results]
    print()
    print(f"median of {args.runs} alternating runs after 1 warm-up, 480x640 images, one [SEG] each")
    print(common.table(["images", "segment img/s", "predict loop img/s", "segment wall s",
                        "predict loop wall s", f"segment {memory_name}", f"loop {memory_name}"], rows))
    path = common.write_json({"benchmark": "batch", "environment": env, "model": str(folder), "family": model.family,
                              "dtype": str(dtype), "runs": args.runs, "results": results}, args.json,
                             f"batch-{device.type}.json")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
