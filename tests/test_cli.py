"""python -m sa2va segment writes the answer, one grey PNG per mask and an overlay."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from background import BackgroundRun
from conftest import ROOT


@pytest.fixture(scope="module")
def cli_runs(checkpoint_factory, image, tmp_path_factory):
    """The module's three end-to-end commands (segment, doctor, test_sa2va.py --quick), started at once, one torch
    thread each: each runs on one core, so together they take about as long as the longest. Each test awaits its
    own."""
    tmp = tmp_path_factory.mktemp("cli")
    src = tmp / "in.png"
    Image.fromarray(image).save(src)
    segment = [sys.executable, "-m", "sa2va", "segment", "--model", str(checkpoint_factory("qwen3_vl")),
               "--image", str(src), "--prompt", "Please segment the person.", "--out", str(tmp / "out"),
               "--max-new-tokens", "16"]
    runs = {"segment": BackgroundRun(segment, tmp / "segment"),
            "doctor": BackgroundRun([sys.executable, "-m", "sa2va", "doctor"], tmp / "doctor"),
            "quick": BackgroundRun([sys.executable, "test_sa2va.py", "--quick"], tmp / "quick")}
    try:
        yield runs
    finally:
        for run in runs.values():
            run.stop()


def test_segment_writes_text_masks_and_overlay(cli_runs, image):
    result = cli_runs["segment"].wait(timeout=300)
    out = Path(result.args[result.args.index("--out") + 1])
    assert result.returncode == 0, result.stderr
    assert (out / "answer.txt").read_text().strip() == "Sure, it is."
    mask = np.asarray(Image.open(out / "mask_0.png"))
    assert mask.shape == (480, 640) and mask.dtype == np.uint8
    assert len(np.unique(mask)) > 2, "probabilities are written as grey levels, not binarised"
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == (480, 640, 3)
    assert not np.array_equal(overlay, image)
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["masks"] == ["mask_0.png"]
    assert summary["phrases"] == ["person"]
    assert len(summary["scores"]) == len(summary["iou_scores"]) == len(summary["object_scores"]) == 1
    assert abs(summary["scores"][0] - summary["iou_scores"][0] * summary["object_scores"][0]) < 1e-3
    ys, xs = np.nonzero(mask >= 128)  # the box of mask_0 at 0.5, one past the last pixel
    expected = None if len(ys) == 0 else [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert summary["boxes"] == [expected]


def test_segment_reports_a_bad_folder_cleanly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sa2va", "segment", "--model", str(tmp_path / "nope"),
                             "--image", "x.png", "--prompt", "x", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Model folder not found" in result.stderr


def test_doctor_runs_every_check_and_predicts_on_a_tiny_model(cli_runs):
    result = cli_runs["doctor"].wait(timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    from sa2va.compat import REQUIREMENTS

    for req in REQUIREMENTS:
        assert any(line.startswith(("[PASS]", "[WARN]")) and f"] {req.name} >= {req.minimum}:" in line
                   for line in lines), req.name
    assert any(line.startswith("[PASS] Python >= 3.10:") for line in lines)
    assert any(line.startswith(("[PASS] CUDA", "[WARN] CUDA")) for line in lines)
    assert any("bitsandbytes quantization" in line for line in lines)
    assert any(line.startswith("[PASS] tiny model: load + predict: 1 mask(s) on cpu") for line in lines), lines
    assert lines[-1] == "All required checks passed."


def _fake_versions(monkeypatch, **versions):
    """Pretend distributions have these versions (None: not installed), for every check that asks."""
    from sa2va import compat, doctor

    real = compat.installed_version
    fake = lambda name: versions[name] if name in versions else real(name)  # noqa: E731
    monkeypatch.setattr(compat, "installed_version", fake)
    monkeypatch.setattr(doctor, "installed_version", fake)


def test_doctor_fails_with_the_fix_when_transformers_is_too_old(monkeypatch, capsys):
    from sa2va.__main__ import main

    _fake_versions(monkeypatch, transformers="4.56.2")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] transformers >= 4.57: 4.56.2 is too old -- fix: pip install -U 'transformers>=4.57'" in out
    # the prediction is not attempted on an installation that cannot run it
    assert "[FAIL] tiny model: load + predict: skipped: torch or transformers is missing or too old" in out
    assert out.rstrip().endswith("2 required check(s) failed: transformers >= 4.57, tiny model: load + predict")


def test_doctor_reports_a_missing_torch_with_the_pytorch_fix(monkeypatch, capsys):
    from sa2va.__main__ import main

    _fake_versions(monkeypatch, torch=None)
    assert main(["doctor", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] torch >= 2.6: not installed -- fix: install the PyTorch build for your GPU" in out


def test_a_missing_optional_package_warns_but_passes(monkeypatch, capsys):
    from sa2va.__main__ import main

    _fake_versions(monkeypatch, bitsandbytes=None)
    assert main(["doctor", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "[WARN] bitsandbytes >= 0.45: not installed (optional: 8-bit / 4-bit quantization only) -- fix: " \
           "pip install -U 'bitsandbytes>=0.45'" in out
    assert out.rstrip().endswith("All required checks passed.")


def test_a_failing_prediction_fails_the_doctor(monkeypatch):
    from sa2va import doctor, loading
    from sa2va.errors import ModelFolderError

    def broken(*args, **kwargs):
        raise ModelFolderError("No weights in /tmp/x")

    monkeypatch.setattr(loading, "load_model", broken)
    check = doctor.check_prediction()
    assert (check.ok, check.status) == (False, "FAIL")
    assert check.detail == "ModelFolderError: No weights in /tmp/x"
    assert doctor.exit_code([check]) == 1
    assert doctor.format_check(check).endswith("-- fix: " + check.fix)


def test_a_gpu_without_native_bf16_is_named_with_a_warning(monkeypatch):
    import torch

    from sa2va import doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["NVIDIA H200", "Tesla T4"][i])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(9, 0), (7, 5)][i])
    cuda, h200, t4 = doctor.check_cuda()
    assert cuda.ok and cuda.detail.endswith("2 GPU(s)")
    assert (h200.status, h200.detail) == ("PASS", "NVIDIA H200, compute capability 9.0, native bf16 yes")
    assert (t4.status, t4.detail) == ("WARN", "Tesla T4, compute capability 7.5, native bf16 no")
    assert "fp16" in t4.fix


def test_install_and_test_sa2va_scripts_use_the_doctor(cli_runs, monkeypatch, caplog):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sa2va_install", ROOT / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    assert install.main() == 0
    _fake_versions(monkeypatch, transformers="4.46.0")
    with caplog.at_level("ERROR"):
        assert install.main() == 1
    assert "transformers >= 4.57: 4.46.0 is too old. Fix: pip install -U 'transformers>=4.57'" in caplog.text
    result = cli_runs["quick"].wait(timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[PASS] transformers >= 4.57" in result.stdout and "tiny model" not in result.stdout


def test_device_auto_is_cuda_when_available_else_the_cpu(monkeypatch):
    import torch

    from sa2va import doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert doctor.resolve_device("auto") == "cuda" and doctor.resolve_device("cpu") == "cpu"
    assert doctor.device_line("auto", "cuda") == "device: cuda (auto: a CUDA GPU is available)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert doctor.resolve_device("auto") == "cpu" and doctor.resolve_device("cuda:1") == "cuda:1"
    assert doctor.device_line("auto", "cpu") == "device: cpu (auto: no CUDA GPU available)"
    assert doctor.device_line("cuda:1", "cuda:1") == "device: cuda:1"


@pytest.mark.parametrize("available", [True, False])
def test_segment_and_doctor_default_to_auto_and_print_the_device_first(monkeypatch, capsys, available):
    import torch

    from sa2va import __main__ as cli, doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    seen = {}
    monkeypatch.setattr(doctor, "run_checks", lambda predict, device, report: seen.setdefault("doctor", device) and [])
    assert cli.main(["doctor", "--quick"]) == 0
    expected = "cuda" if available else "cpu"
    assert seen["doctor"] == expected
    assert capsys.readouterr().out.splitlines()[0].startswith(f"device: {expected} (auto: ")

    class Stop(Exception):
        pass

    def load_model(folder, device, **kwargs):
        seen["segment"] = device
        raise Stop

    monkeypatch.setattr(cli, "_model_folder", lambda model, models_dir: "folder")
    monkeypatch.setattr(pack_loading(), "load_model", load_model)
    with pytest.raises(Stop):
        cli.main(["segment", "--image", "x.png", "--prompt", "x"])
    assert seen["segment"] == expected
    assert capsys.readouterr().out.splitlines()[0].startswith(f"device: {expected} (auto: ")


def pack_loading():
    from sa2va import loading

    return loading
