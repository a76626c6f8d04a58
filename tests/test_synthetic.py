"""The synthetic checkpoints are a pure function of their arguments: the same bytes on every CPU.

The committed upstream references (tests/data/parity/) hold only if the checkpoint they were made from is rebuilt
byte for byte on the machine running the suite, whatever its SIMD width. These tests pin the generator's integer
core to SplitMix64's published output, check the orthonormal [SEG] directions exactly, and write checkpoints in
subprocesses under the portable kernels (``ATEN_CPU_CAPABILITY=default``, numpy's dispatch limited to its
baseline) and under the machine's best ones, and compare every file.
"""
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from background import BackgroundRun
from sa2va.testing import common

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import hashlib, json, sys
from pathlib import Path
import torch
from sa2va import testing
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for family in ("qwen3_vl", "qwen2_5_vl", "internvl", "llava"):
    folder = testing.write_checkpoint(Path(sys.argv[1]) / family, family, seed=3)
    out[family] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
# Sa2VA-8B/26B's format: InternLM2 weights, the serialised SentencePiece tokenizer.model, InternViT-6B switches
folder = testing.write_checkpoint(Path(sys.argv[1]) / "internlm2", "internvl", seed=3, decoder="internlm2",
                                  vision_tower="6b", weight_dtype=None)
out["internvl_internlm2"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
# Sa2VA-Qwen3-VL-4B-SAM3's format, where transformers has SAM 3 (5.x)
if getattr(__import__("transformers"), "Sam3TrackerVideoModel", None) is not None:
    folder = testing.write_checkpoint(Path(sys.argv[1]) / "sam3", "qwen3_vl", seed=3, grounding="sam3")
    out["qwen3_vl_sam3"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
print(json.dumps(out))
"""


def test_splitmix64_matches_the_published_sequence():
    # SplitMix64 seeded with 0: state += 0x9E3779B97F4A7C15 before each output (Steele, Lea and Flood 2014)
    states = np.array([0x9E3779B97F4A7C15, (2 * 0x9E3779B97F4A7C15) % 2**64], dtype=np.uint64)
    assert [int(v) for v in common.splitmix64(states)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_values_have_unit_variance_and_depend_on_name_and_seed():
    z = common.standard_values("w", 0, 200_000)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1.0) < 0.01
    assert np.abs(z).max() <= 3.4641016151377544
    assert not np.array_equal(z[:64], common.standard_values("w", 1, 64))
    assert not np.array_equal(z[:64], common.standard_values("v", 0, 64))
    np.testing.assert_array_equal(z[:64], common.standard_values("w", 0, 64))  # a prefix of the same stream


@pytest.mark.parametrize("size,count", [(64, 6), (100, 9), (1024, 7)])
def test_seg_directions_are_exactly_orthonormal(size, count):
    d = common.orthonormal_directions(size, count, seed=0)
    assert d.shape == (count, size)
    np.testing.assert_array_equal(d @ d.T, np.eye(count))


def _write_both(*runs: tuple[Path, dict]) -> list[dict]:
    """Runs WRITER once per (folder, environment overrides), the runs at once; returns each run's hashes."""
    path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    started = [BackgroundRun([sys.executable, "-c", WRITER, str(tmp)], tmp, {**env_overrides, "PYTHONPATH": path},
                             unset=("ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES"))
               for tmp, env_overrides in runs]
    results = []
    for run in started:
        done = run.wait(timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def test_checkpoint_bytes_do_not_depend_on_the_cpu_kernels(tmp_path):
    portable = {"ATEN_CPU_CAPABILITY": "default"}
    if platform.machine().lower() in ("x86_64", "amd64"):
        portable["NPY_DISABLE_CPU_FEATURES"] = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"
    # the two writers run at once (one torch thread each; the bytes depend on no thread count either)
    slow, best = _write_both((tmp_path / "default", portable), (tmp_path / "best", {}))
    assert slow.pop("capability") == "DEFAULT"
    capability = best.pop("capability")
    for family in slow:
        assert best[family] == slow[family], f"{family}: files differ between DEFAULT and {capability} kernels"
        assert any(name.endswith(".safetensors") for name in slow[family])


def test_parity_checkpoints_record_their_hashes():
    """Every parity reference names the exact writer arguments and the shard hashes the test rebuilds."""
    data = ROOT / "tests" / "data" / "parity"
    for meta_path in sorted(data.glob("*/checkpoint.json")):
        meta = json.loads(meta_path.read_text())
        options = meta["write_checkpoint"]
        # the releases' grounding geometry: SAM2 at 1024 px (Hiera-L, or the Hiera-T trunk where the trunk is not
        # what the case tests), or SAM 3's tracker (only its ViT cut down); tests/data/parity/README.md
        assert options.get("sam2") in ("full", "hiera_t") or options.get("grounding") == "sam3", meta_path
        assert meta["shard_sha256"] and all(len(h) == 64 for h in meta["shard_sha256"].values())
