"""Unattended queues: bad input is a clear error, repeated runs keep memory flat, cancel leaves the model usable,
a full disk leaves a resumable download."""
import errno
import gc
import random
import shutil

import numpy as np
import pytest
import torch

from fakehub import FakeHub
from nodetools import segment
from pack import pack_module

segmentation = pack_module("nodes.segmentation")
loader = pack_module("nodes.loader")
comfy = pack_module("nodes.comfy")
download = pack_module("sa2va.hub.download")
transfer = pack_module("sa2va.hub.transfer")


@pytest.fixture(scope="module")
def shared_handle(checkpoint_factory, tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "sa2va"
    shutil.copytree(checkpoint_factory("qwen3_vl"), base / "tiny")
    mp = pytest.MonkeyPatch()
    mp.setenv("SA2VA_MODELS_DIR", str(base))
    yield loader.load_handle(model="tiny", dtype="fp32", device="cpu")
    mp.undo()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_fifty_queued_runs_on_one_handle_keep_memory_flat(shared_handle):
    image = torch.rand(1, 64, 80, 3)
    for _ in range(10):  # warm-up: allocator pools, lazy imports
        segment(image, "person", shared_handle, max_new_tokens=12)
    gc.collect()
    start = _rss_mb()
    results = [segment(image, "person", shared_handle, max_new_tokens=12).masks.sum() for _ in range(50)]
    gc.collect()
    growth = _rss_mb() - start
    assert growth < 40, f"RSS grew by {growth:.0f} MB over 50 runs"
    assert all(torch.equal(r, results[0]) for r in results), "every run gives the same answer"


def test_cancel_at_random_points_leaves_the_model_usable(shared_handle, monkeypatch):
    image = torch.rand(1, 48, 48, 3)
    reference = segment(image, "person", shared_handle, max_new_tokens=12)
    rng = random.Random(0)
    for _ in range(5):
        limit, calls = rng.randint(1, 6), {"n": 0}

        def interrupted():
            calls["n"] += 1
            return calls["n"] >= limit

        def throw():
            if calls["n"] >= limit:
                raise comfy.Interrupted("cancel")

        monkeypatch.setattr(comfy, "interrupted", interrupted)
        monkeypatch.setattr(comfy, "throw_if_interrupted", throw)
        with pytest.raises(comfy.Interrupted):
            segment(image, "person", shared_handle, max_new_tokens=12)
        monkeypatch.undo()
    again = segment(image, "person", shared_handle, max_new_tokens=12)
    assert torch.equal(again.masks, reference.masks) and again.text == reference.text


@pytest.mark.parametrize("bad", ["nan", "inf", "negative", "above_one"])
def test_images_with_bad_values_are_sanitised(shared_handle, bad):
    image = torch.rand(1, 40, 40, 3)
    clean = image.clone()
    if bad == "nan":
        image[0, :5] = float("nan")
        clean[0, :5] = 0.0
    elif bad == "inf":
        image[0, :5] = float("inf")
        clean[0, :5] = 1.0
    elif bad == "negative":
        image[0, :5] = -3.0
        clean[0, :5] = 0.0
    else:
        image[0, :5] = 7.0
        clean[0, :5] = 1.0
    out = segment(image, "person", shared_handle, max_new_tokens=12)
    ref = segment(clean, "person", shared_handle, max_new_tokens=12)
    assert torch.isfinite(out.masks).all() and torch.isfinite(out.overlay).all()
    assert torch.equal(out.masks, ref.masks)


def test_grey_and_rgba_batches(shared_handle):
    grey = torch.rand(2, 30, 30, 1)
    rgba = torch.rand(2, 30, 30, 4)
    assert segment(grey, "person", shared_handle, max_new_tokens=12).overlay.shape == (2, 30, 30, 3)
    assert segment(rgba, "person", shared_handle, max_new_tokens=12).overlay.shape == (2, 30, 30, 3)


def test_tiny_and_huge_images(shared_handle):
    tiny = segment(torch.rand(1, 1, 1, 3), "person", shared_handle, max_new_tokens=12)
    assert tiny.masks.shape == (1, 1, 1)
    model = shared_handle.model
    huge = np.random.RandomState(0).randint(0, 256, (8192, 8192, 3), dtype=np.uint8)
    before = _rss_mb()
    pred = model.predict(huge, "Please segment the person.", max_new_tokens=12)
    assert pred.masks.shape == (1, 8192, 8192)
    # the language model sees at most the processor's pixel budget and SAM2 1024 px: memory stays near the
    # size of the input and output arrays themselves (2 x 268 MB here)
    assert _rss_mb() - before < 2500


def test_disk_full_gives_a_clear_error_and_a_resumable_state(checkpoint_factory, tmp_path, monkeypatch):
    repo = tmp_path / "remote"
    shutil.copytree(checkpoint_factory("qwen3_vl", max_shard_bytes=8 * 2**20), repo)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    written = {"bytes": 0}
    real_open = open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            written["bytes"] += len(data)
            if written["bytes"] > 5 * 2**20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):  # seek, truncate, ...
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fake_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if str(path).endswith(".part") else handle

    target = tmp_path / "Sa2VA-Tiny"
    with FakeHub({"ByteDance/Sa2VA-Tiny": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(transfer, "open", fake_open, raising=False)  # where the .part files are opened
        with pytest.raises(download.DiskError, match="is full: free some space .*partial files are kept"):
            download.download("ByteDance/Sa2VA-Tiny", target)
        monkeypatch.delattr(transfer, "open")
        assert list(target.glob("*.part")) and not download.is_complete(target)
        download.download("ByteDance/Sa2VA-Tiny", target)
    assert download.is_complete(target)
