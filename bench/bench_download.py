"""Download throughput against a throttled local hub: one connection vs several, in the same run.

    python bench/bench_download.py                      # 1, 4 and 8 connections, 2 rounds each
    python bench/bench_download.py --kib-per-s 2048 --connections 1 8 --rounds 3

The hub is tests/fakehub.py on 127.0.0.1: the tree and revision APIs, small files from the hub, weight files by a
302 to a second server (another port), with ``Range``; every connection is throttled to ``--kib-per-s`` (a sleep
after each 64 KiB chunk), as a link that limits each TCP stream (a far-away CDN, per-connection shaping). The
repository is a synthetic release (sa2va.testing, fp32, one ~30 MB shard plus the small files), cached under
bench/results/checkpoints/. ``--segment-mb`` sets the range size (``sa2va.hub.plan.SEGMENT_MIN``) so that the
~30 MB shard splits as a 5 GB shard of a real release does (into up to 8 ranges). Each round downloads into a fresh
folder; the time includes the API calls, the sha256 checks and the renames.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tests"))
from fakehub import FakeHub  # noqa: E402

from sa2va.hub import download, plan  # noqa: E402

REPO = "ByteDance/Sa2VA-Bench"


def run_once(hub: FakeHub, connections: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "Sa2VA-Bench"
        start = time.perf_counter()
        download.download(REPO, target, connections=connections)
        elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in target.iterdir() if p.is_file() and not p.name.startswith("."))
    return elapsed, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kib-per-s", type=float, default=4096.0, help="throttle per connection (KiB/s)")
    parser.add_argument("--segment-mb", type=float, default=4.0, help="range size of large files (MiB)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = common.checkpoint("qwen3_vl", "download-bench", max_shard_bytes=256 * 2**20)
    plan.SEGMENT_MIN = int(args.segment_mb * 2**20)
    os.environ.pop("HF_HUB_OFFLINE", None)
    results = {}
    with FakeHub({REPO: folder}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        hub.delay_per_chunk = hub.chunk / (args.kib_per_s * 1024)
        for _ in range(args.rounds):  # interleaved, so that every setting sees the same machine state
            for n in args.connections:
                elapsed, size = run_once(hub, n)
                results.setdefault(n, []).append(elapsed)
    base = statistics.median(results[args.connections[0]])
    rows = []
    for n in args.connections:
        median = statistics.median(results[n])
        rows.append([n, f"{size / 2**20:.1f}", f"{median:.2f}", f"{size / 2**20 / median:.1f}",
                     f"{base / median:.2f}x"])
    print(f"throttle {args.kib_per_s:.0f} KiB/s per connection, ranges of {args.segment_mb:g} MiB, "
          f"{args.rounds} rounds (median)")
    print(common.table(["connections", "MiB", "seconds", "MiB/s", f"vs {args.connections[0]}"], rows))
    path = common.write_json({"kib_per_s": args.kib_per_s, "segment_mb": args.segment_mb,
                              "seconds": {str(k): v for k, v in results.items()}, "bytes": size},
                             args.json, "download.json")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
