"""The benchmark's baseline (the reference algorithm step by step) computes what predict computes.

Only correctness is checked here; timings come from running bench/bench_predict.py (docs/performance.md)."""
import importlib
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def bench_predict():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module("bench_predict")
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize("count", [1, 3])
def test_baseline_equals_predict(bench_predict, model_factory, family, image, count):
    model = model_factory(family)
    length = bench_predict.prompt_length(model, image)
    forced = bench_predict.answer_ids(model.tokenizer, count)
    baseline = bench_predict.Baseline(model)
    ours = bench_predict.ours(model, image, forced, length)
    reference = baseline(image, forced, length)
    assert bench_predict.check_same(count, ours, reference) <= 1e-5
    assert ours[1].shape == (count, 480, 640)
    # the reference's work: one image-encoder and one memory-encoder pass per [SEG]
    assert baseline.encoder_passes == count and baseline.memory_passes == count


def test_check_same_rejects_different_masks(bench_predict):
    ids = torch.tensor([1, 2, 3])
    masks = torch.zeros(2, 4, 4)
    with pytest.raises(AssertionError, match="masks differ"):
        bench_predict.check_same(2, (ids, masks), (ids, masks + 1e-3))
    with pytest.raises(AssertionError, match="token ids differ"):
        bench_predict.check_same(2, (ids, masks), (ids + 1, masks))


def test_gpu_check_plumbing_runs_on_a_tiny_geometry(checkpoint_factory, tmp_path):
    """bench/gpu_check.py --tiny end to end (CPU: the quantised modes say they need CUDA)."""
    out = tmp_path / "gpu.json"
    folder = checkpoint_factory("qwen3_vl")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu",
                             "--folder", str(folder), "--budget-s", "120", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert json.loads(result.stdout) == summary
    bf16, fp32 = summary["modes"]["bf16"], summary["modes"]["fp32"]
    for key in ("load_s", "end_to_end_s", "prefill_tokens_per_s", "decode_tokens_per_s", "sam2_encoder_ms"):
        assert isinstance(bf16[key], (int, float)) and bf16[key] > 0, (key, bf16[key])
    assert bf16["prompt_tokens"] == fp32["prompt_tokens"] > 0
    for key in ("video_frames_per_s", "batch2_images_per_s"):  # a number, or skipped for the budget
        assert isinstance(bf16[key], (int, float)) or bf16[key] == "skipped: budget"
    assert summary["modes"]["8bit"] == {"skipped": "bitsandbytes quantisation needs CUDA"}
    agreement = summary["mask_agreement_vs_fp32"]["bf16"]
    assert 0.9 <= agreement["iou"] <= 1.0 and 0 <= agreement["max_abs_dp"] < 0.2
