"""The benchmark's baseline (the reference algorithm step by step) computes what predict computes.

Only correctness is checked here; timings come from running bench/bench_predict.py (docs/performance.md)."""
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from background import BackgroundRun
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


# ------------------------------------------------------------------------------------------- bench/gpu_check.py
SECTIONS = {"bf16": ["load", "stages", "sam2_encode", "mask_decode", "end_to_end", "video", "batch", "unload"],
            "8bit": ["load", "stages", "end_to_end", "unload"], "4bit": ["load", "stages", "end_to_end", "unload"],
            "fp32": ["load", "end_to_end", "unload"]}


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def start_gpu_check(folder, tmp: Path, env=None) -> BackgroundRun:
    """``gpu_check.py --tiny`` on the CPU, started in the background; it writes ``tmp/gpu.json``."""
    return BackgroundRun([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu",
                          "--folder", str(folder), "--json", str(tmp / "gpu.json")], tmp, env)


def finish_gpu_check(run: BackgroundRun) -> tuple[str, dict]:
    """Waits for a run of start_gpu_check; returns its stdout and the JSON it wrote."""
    result = run.wait(timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(Path(result.args[result.args.index("--json") + 1]).read_text())


@pytest.fixture(scope="module")
def gpu_check_runs(checkpoint_factory, tmp_path_factory):
    """The two end-to-end runs of the GPU check, started at once (one torch thread each): with every library, and
    with bitsandbytes blocked. Each test below waits for its own."""
    folder = checkpoint_factory("qwen3_vl")
    tmp = tmp_path_factory.mktemp("gpu_check")
    blocked = tmp / "blocked"
    (blocked / "bitsandbytes").mkdir(parents=True)
    (blocked / "bitsandbytes" / "__init__.py").write_text("raise ImportError('No module named bitsandbytes')\n")
    runs = {"all": start_gpu_check(folder, tmp / "all"),
            "no_bnb": start_gpu_check(folder, tmp / "no_bnb", env={"PYTHONPATH": f"{blocked}:{ROOT}"})}
    try:
        yield runs
    finally:
        for run in runs.values():
            run.stop()


def test_gpu_check_tiny_reports_every_section_of_every_mode_on_the_cpu(gpu_check_runs):
    """--tiny on the CPU: bf16, 8-bit and 4-bit (bitsandbytes quantises on the CPU) and fp32, every section a number."""
    stdout, summary = finish_gpu_check(gpu_check_runs["all"])
    assert json.loads(stdout) == summary
    modes = summary["modes"]
    for mode, names in SECTIONS.items():
        assert list(modes[mode]) == names, mode
        for name in names:
            assert "error" not in modes[mode][name] and "skipped" not in modes[mode][name], (mode, name,
                                                                                             modes[mode][name])
        assert modes[mode]["unload"]["bytes_alive_after_unload"] == 0  # weights and cached features all went
        assert modes[mode]["unload"]["cache_bytes_before_unload"] > 0
    for mode in ("bf16", "8bit", "4bit"):
        stages = modes[mode]["stages"]
        for key in ("preprocessing_ms", "vision_tower_ms", "prefill_ms", "prefill_tokens_per_s",
                    "decode_tokens_per_s"):
            assert isinstance(stages[key], float) and stages[key] > 0, (mode, key, stages[key])
        assert stages["decode_tokens"] == 5 and stages["generated"] == 6
        agreement = summary["mask_agreement_vs_fp32"][mode]
        assert 0.5 <= agreement["iou"] <= 1.0 and 0 <= agreement["max_abs_dp"] < 0.5, (mode, agreement)
    bf16 = modes["bf16"]
    assert bf16["sam2_encode"]["sam2_encode_ms"] > 0 and bf16["mask_decode"]["mask_decode_ms"] > 0
    assert bf16["video"]["objects"] >= 1 and bf16["video"]["frames"] == 2 and bf16["video"]["video_frames_per_s"] > 0
    assert bf16["batch"]["ids_equal"] is True and bf16["batch"]["min_mask_iou"] > 0.99
    assert bf16["end_to_end"]["end_to_end_s"] > 0


def test_gpu_check_without_bitsandbytes_records_the_error_and_reports_bf16(gpu_check_runs):
    _, summary = finish_gpu_check(gpu_check_runs["no_bnb"])
    for mode in ("8bit", "4bit"):
        for name in SECTIONS[mode]:
            assert "bitsandbytes" in summary["modes"][mode][name]["error"], (mode, name, summary["modes"][mode])
        assert "not run" in summary["mask_agreement_vs_fp32"][mode]["error"]
    assert summary["modes"]["bf16"]["stages"]["decode_tokens_per_s"] > 0
    assert summary["mask_agreement_vs_fp32"]["bf16"]["iou"] > 0.5


def test_a_failing_section_is_recorded_and_the_next_one_runs(gpu_check, tmp_path, monkeypatch):
    """Each section on its own: an exception becomes {"error": ...}; the JSON is rewritten after every section."""
    import types

    report = gpu_check.Report({"modes": {}}, tmp_path / "out.json")
    seen = []

    def failing():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    for name, fn in (("a", lambda: {"x": 1.5}), ("b", failing), ("c", lambda: {"y": 2})):
        report.record("bf16", name, gpu_check.run_section(fn, torch.device("cpu")))
        seen.append(json.loads((tmp_path / "out.json").read_text())["modes"]["bf16"])
    assert [list(s) for s in seen] == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert seen[-1]["b"]["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert seen[-1]["a"]["x"] == 1.5 and seen[-1]["c"]["y"] == 2
    # a mode whose sections would not fit the budget says so, and none of them runs
    args = types.SimpleNamespace(tiny=False, quick=True, compile=True)
    report = gpu_check.Report({"modes": {}}, tmp_path / "budget.json")
    monkeypatch.setattr(gpu_check.sa2va, "load_model", lambda *a, **k: pytest.fail("loaded past the budget"))
    gpu_check.measure_mode("8bit", tmp_path, torch.device("cpu"), args, gpu_check.Budget(0), report, {})
    recorded = json.loads((tmp_path / "budget.json").read_text())["modes"]["8bit"]
    assert recorded["load"]["skipped"].startswith("budget:") and recorded["unload"] == {"skipped": "nothing was loaded"}


def test_rates_never_divide_by_a_zero_time(gpu_check):
    from gpu_sections import per_second

    assert per_second(5, 0.0) is None and per_second(5, -1e-9) is None and per_second(0, 1.0) is None
    assert per_second(6, 2.0) == 3.0


def test_gpu_check_budgets(gpu_check):
    quick, full = gpu_check.parse(["--quick"]), gpu_check.parse([])
    assert quick.budget_s == 240 and full.budget_s == 470  # 4 and 8 minutes, less the start-up
    assert (quick.frames, quick.batch, quick.runs) == (8, 4, 1)


def test_the_checkpoint_writer_writes_a_loadable_release_once(tmp_path):
    """bench/gpu_checkpoint.py with a small geometry: the release format loads, and a finished folder is reused."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        writer = importlib.import_module("gpu_checkpoint")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    import sa2va
    from sa2va.testing import TINY_SAM2
    from sa2va.testing.qwen import TINY_TEXT

    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_position_embeddings": 64,
              "deepstack_visual_indexes": [0]}
    folder = writer.write_full_checkpoint(tmp_path / "ckpt", torch.device("cpu"), shard_bytes=2**20,
                                          text=TINY_TEXT, vision=vision, vocab=1024, mrope=[2, 3, 3],
                                          sam2=TINY_SAM2)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) > 1 and (folder / ".complete").is_file()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    stamps = [s.stat().st_mtime_ns for s in shards]
    assert writer.write_full_checkpoint(folder, torch.device("cpu")) == folder  # reused, not written again
    assert [s.stat().st_mtime_ns for s in shards] == stamps
    model = sa2va.load_model(folder, device="cpu", dtype="fp32")
    assert model.vlm.config.text_config.hidden_size == TINY_TEXT["hidden_size"]
