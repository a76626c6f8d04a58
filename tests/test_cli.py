"""python -m sa2va segment writes the answer, one grey PNG per mask and an overlay."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT


def test_segment_writes_text_masks_and_overlay(checkpoint_factory, image, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "sa2va", "segment", "--model", str(checkpoint_factory("qwen3_vl")), "--image", str(src),
         "--prompt", "Please segment the person.", "--out", str(out), "--max-new-tokens", "16"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
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


def test_segment_reports_a_bad_folder_cleanly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sa2va", "segment", "--model", str(tmp_path / "nope"),
                             "--image", "x.png", "--prompt", "x", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Model folder not found" in result.stderr
