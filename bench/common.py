"""Shared helpers of the benchmarks: checkpoints, memory sampling, timing, environment, tables and JSON.

The benchmarks are scripts, not tests: run them from the repository root, e.g. ``python bench/bench_predict.py``.
Checkpoints they build are cached under ``bench/results/checkpoints/`` (git-ignored) and reused by later runs.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

#: a bigger language model for the load benchmark (~0.38 GB of fp32 text weights on top of SAM2's 0.86 GiB)
LOAD_TEXT_SIZE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
                  "num_key_value_heads": 8, "head_dim": 64}


def checkpoint(family: str, name: str, **options) -> Path:
    """A synthetic release-format checkpoint under bench/results/checkpoints/<name>, written once and reused."""
    from sa2va import testing as synthetic

    folder = RESULTS / "checkpoints" / name
    done = folder / ".complete"
    wanted = json.dumps({"family": family, **{k: str(v) for k, v in sorted(options.items())}})
    if done.is_file() and done.read_text() == wanted:
        return folder
    print(f"writing checkpoint {folder} ({family}, {options}) ...", flush=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    synthetic.write_checkpoint(folder, family, **options)
    done.write_text(wanted)
    return folder


def read_status(field_name: str) -> int:
    """A /proc/self/status memory field in bytes (VmRSS, RssAnon, RssFile, ...)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field_name)


class PeakSampler:
    """Samples a /proc/self/status field in a thread (every ``interval`` s) and keeps the peak."""

    def __init__(self, field_name: str = "VmRSS", interval: float = 0.002) -> None:
        self.field_name, self.interval = field_name, interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakSampler:
        self.start = self.peak = read_status(self.field_name)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, read_status(self.field_name))
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, read_status(self.field_name))

    @property
    def growth(self) -> int:
        return self.peak - self.start


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    """One timed run: wall seconds, process CPU seconds, peak memory growth in bytes."""

    wall: float
    cpu: float
    peak_memory: int


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)

    def as_json(self) -> dict:
        return {"wall_s": [round(s.wall, 4) for s in self.samples], "cpu_s": [round(s.cpu, 4) for s in self.samples],
                "peak_memory_bytes": [s.peak_memory for s in self.samples],
                "median_wall_s": round(self.median("wall"), 4), "median_cpu_s": round(self.median("cpu"), 4),
                "max_peak_memory_bytes": max(s.peak_memory for s in self.samples)}


def timed(fn, device: torch.device) -> tuple[object, Sample]:
    """Run ``fn()`` once; wall and CPU time, and peak memory growth (RSS on CPU, max_memory_allocated on CUDA)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        cpu, start = cpu_seconds(), time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        return result, Sample(wall, cpu, torch.cuda.max_memory_allocated(device) - before)
    with PeakSampler("VmRSS") as sampler:
        cpu, start = cpu_seconds(), time.perf_counter()
        result = fn()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return result, Sample(wall, cpu, sampler.growth)


def environment(device: torch.device) -> dict:
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "load_average": list(os.getloadavg()), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                     [line(r) for r in cells[1:]])


def mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f}"


def write_json(data: dict, path: str | None, default_name: str) -> Path:
    target = Path(path) if path else RESULTS / default_name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2) + "\n")
    return target


def parse_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
