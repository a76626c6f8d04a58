"""Load time and peak anonymous memory of load_model for an fp32 release loaded as bf16 (and as fp32).

    python bench/bench_load.py                  # 3 fresh processes per dtype
    python bench/bench_load.py --model /path/to/Sa2VA-Qwen3-VL-4B --dtypes bf16
    python bench/bench_load.py --dtypes bf16 --quantization 8bit 4bit --runs 1   # needs bitsandbytes
    python bench/bench_load.py --full-size --dtypes bf16 --runs 1 --prefill     # a random Qwen3-VL-4B, ~18 GB

Without ``--model`` it builds (once, cached under bench/results/checkpoints/) a ~1.3 GB fp32 checkpoint in the
release format, in 256 MB shards: full-size SAM2 Hiera-L (0.86 GiB) and a language model enlarged to hidden 1024,
8 layers (0.35 GiB; ``write_checkpoint(text_size=...)``).

Each measurement runs in a fresh Python process. Imports are warmed up first; then ``RssAnon`` (anonymous resident
memory: memory-mapped shard pages do not count, they are page cache the kernel can drop) is sampled every
millisecond in a thread while ``sa2va.load_model`` runs. The peak growth is compared with the bytes the loaded
model keeps (parameters and buffers of the language model, SAM2 and the projection). Load times include reading
the shards, from the page cache after the first run. With ``--quantization`` each mode is loaded as well, and the
size the Loader asks ComfyUI to make room for before loading (``sa2va.quantization.estimated_bytes`` from the
shards' shapes) is compared with what the loaded model takes (``Sa2VAModel.memory_bytes``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CHILD = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import common
import torch
import sa2va
from transformers import Sam2VideoModel, Qwen3VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration  # noqa

from sa2va.hub.checkpoint import read_index
from sa2va.quantization import estimated_bytes

dtype = common.parse_dtype(sys.argv[4])
quantization = None if sys.argv[5] == "none" else sys.argv[5]
with common.PeakSampler("RssAnon", interval=0.001) as anon, common.PeakSampler("VmRSS", interval=0.001) as rss:
    start = time.perf_counter()
    model = sa2va.load_model(sys.argv[3], dtype=dtype, quantization=quantization)
    seconds = time.perf_counter() - start
estimate = estimated_bytes(((n, t.shape) for n, t in read_index(sys.argv[3]).tensors.items()), quantization, dtype)
result = {"load_s": seconds, "resident_bytes": model.memory_bytes(), "estimated_bytes": estimate,
          "peak_anon_growth": anon.growth, "peak_rss_growth": rss.growth}
if sys.argv[6] == "prefill":
    import numpy as np
    from sa2va.testing import ForceTokens
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    prompt = "Please segment the person."
    model.encoder_cache.limit_bytes = 0
    tokens = model.prompt_inputs([image], prompt)["input_ids"].shape[1]
    start = time.perf_counter()  # one answer token for a 1024x1024 image: the prefill, timed
    model.answer([image], prompt, max_new_tokens=1)
    result.update(prefill_s=time.perf_counter() - start, prefill_tokens=tokens)
    # then a whole predict with the answer forced to "[SEG]<end>": the activations it holds at its peak, against
    # the estimate the nodes ask ComfyUI for (MemoryProfile.activation_bytes)
    tok = model.tokenizer
    forced = [tok.convert_tokens_to_ids("[SEG]"), model.adapter.eos_token_ids(model.config, tok)[0]]
    with common.PeakSampler("RssAnon", interval=0.001) as peak:
        start = time.perf_counter()
        model.predict(image, prompt, max_new_tokens=8, logits_processor=[ForceTokens(tokens, forced)])
        result.update(predict_s=time.perf_counter() - start)
    result.update(predict_peak_anon_growth=peak.growth,
                  activation_estimate=model.memory_profile().activation_bytes(1024, 1024, 8))
print(json.dumps(result))
"""


def measure(folder: Path, dtype: str, quantization: str = "none", prefill: bool = False) -> dict:
    here = Path(__file__).resolve().parent
    result = subprocess.run([sys.executable, "-c", CHILD, str(common.ROOT), str(here), str(folder), dtype,
                             quantization, "prefill" if prefill else "-"],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"load in a child process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: build the ~1.3 GB fp32 synthetic checkpoint)")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32", "fp16"])
    parser.add_argument("--quantization", nargs="+", default=["none"], choices=["none", "8bit", "4bit"],
                        help="load modes (8bit/4bit need bitsandbytes; the language model is quantised)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per dtype")
    parser.add_argument("--full-size", action="store_true",
                        help="a random checkpoint with the released Sa2VA-Qwen3-VL-4B geometry, stored as released "
                             "(fp32 shards, ~18 GB; written once by gpu_checkpoint.write_full_checkpoint)")
    parser.add_argument("--full-size-folder", default=str(common.RESULTS / "checkpoints" / "qwen3_vl-4b-full"),
                        help="where --full-size writes and reuses that checkpoint")
    parser.add_argument("--prefill", action="store_true",
                        help="after loading, time one prefill (one answer token) for a 1024x1024 image, then one "
                             "predict (answer forced to one [SEG]) and its peak activation memory against the "
                             "nodes' estimate")
    parser.add_argument("--json", help="output path (default bench/results/load.json)")
    args = parser.parse_args(argv)
    import torch

    if args.full_size:
        from gpu_checkpoint import write_full_checkpoint

        folder = write_full_checkpoint(Path(args.full_size_folder), torch.device("cpu"))
    else:
        folder = Path(args.model) if args.model else common.checkpoint(
            "qwen3_vl", "qwen3_vl-load-1.3GB", sam2="full", text_size=common.LOAD_TEXT_SIZE,
            max_shard_bytes=256 * 2**20)
    shards = sorted(folder.glob("*.safetensors"))
    stored = sum(p.stat().st_size for p in shards)

    env = common.environment(torch.device("cpu"))
    print(f"checkpoint {folder}: {stored / 2**30:.2f} GiB in {len(shards)} shards", flush=True)
    results = []
    for dtype, quantization in [(d, q) for q in args.quantization for d in args.dtypes]:
        runs = []
        for _ in range(args.runs):
            runs.append(measure(folder, dtype, quantization, args.prefill))
            print(f"  {dtype} {quantization}: {runs[-1]}", flush=True)
        resident = runs[0]["resident_bytes"]
        peaks = [r["peak_anon_growth"] for r in runs]
        results.append({"dtype": dtype if quantization == "none" else f"{dtype} {quantization}", "runs": runs,
                        "resident_bytes": resident, "estimated_bytes": runs[0]["estimated_bytes"],
                        "median_load_s": round(statistics.median(r["load_s"] for r in runs), 3),
                        "median_peak_anon_growth": statistics.median(peaks), "max_peak_anon_growth": max(peaks),
                        "ratio_median": round(statistics.median(peaks) / resident, 3),
                        "ratio_max": round(max(peaks) / resident, 3)})
    rows = [[r["dtype"], f"{r['median_load_s']:.1f}", common.mb(r["resident_bytes"]), common.mb(r["estimated_bytes"]),
             common.mb(r["median_peak_anon_growth"]), common.mb(r["max_peak_anon_growth"]),
             f"{r['ratio_median']:.2f}", f"{r['ratio_max']:.2f}"] for r in results]
    print()
    print(f"{stored / 2**30:.2f} GiB fp32 checkpoint in {len(shards)} shards, {args.runs} fresh processes per dtype")
    print(common.table(["load as", "median load s", "resident MB", "estimated before load MB",
                        "median peak RssAnon growth MB", "max peak RssAnon growth MB", "peak / resident (median)",
                        "peak / resident (max)"], rows))
    path = common.write_json({"benchmark": "load", "environment": env, "model": str(folder), "stored_bytes": stored,
                              "shards": len(shards), "results": results}, args.json, "load.json")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
