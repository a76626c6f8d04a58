"""The benchmark's baseline (the reference algorithm step by step) computes what predict computes.

Only correctness is checked here; timings come from running bench/bench_predict.py (docs/performance.md)."""
import importlib
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
