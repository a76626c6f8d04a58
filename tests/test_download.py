"""Downloading a release from a local fake hub: plain files, byte progress, cancel mid-file, resume, errors."""
import hashlib
import shutil
import threading
import time

import pytest

from fakehub import FakeHub
from sa2va import download
from sa2va.download import DownloadCancelled, DownloadError

REPO = "ByteDance/Sa2VA-Tiny"


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


@pytest.fixture
def hub_repo(checkpoint_factory, tmp_path):
    """A copy of a tiny release plus files a real repository has that must not be fetched."""
    repo = tmp_path / "remote"
    shutil.copytree(checkpoint_factory("qwen3_vl", max_shard_bytes=8 * 2**20), repo)
    (repo / "modeling_sa2va_qwen.py").write_text("raise SystemExit('remote code must never be fetched')\n")
    (repo / "README.md").write_text("# model card\n")
    return repo


@pytest.fixture
def hub(hub_repo, monkeypatch):
    with FakeHub({REPO: hub_repo}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def test_download_writes_plain_files_and_reports_bytes(hub, hub_repo, tmp_path):
    target = tmp_path / "models" / "Sa2VA-Tiny"
    seen = []
    download.download(REPO, target, progress=lambda done, total: seen.append((done, total)))
    assert download.is_complete(target)
    expected = {k: v for k, v in _digest(hub_repo).items() if not k.endswith((".py", ".md"))}
    assert _digest(target) == expected
    assert not list(target.glob("*.part")) and not any(p.is_symlink() for p in target.iterdir())
    total = sum((hub_repo / name).stat().st_size for name in expected)
    assert seen[-1] == (total, total)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))


def test_cancel_mid_file_is_prompt_and_resume_completes(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.delay_per_chunk = 0.02  # ~3 MB/s: a multi-MB shard takes seconds
    flag = threading.Event()
    progress = []

    def on_progress(done, total):
        progress.append(done)
        if done > 1.5 * 2**20 and not flag.is_set():
            flag.set()
            progress.append(time.monotonic())

    start = time.monotonic()
    with pytest.raises(DownloadCancelled, match="partial files .* are kept"):
        download.download(REPO, target, progress=on_progress, cancelled=flag.is_set)
    cancelled_at = next(p for p in progress if isinstance(p, float))
    assert time.monotonic() - cancelled_at < 1.0
    assert time.monotonic() - start < 30
    parts = list(target.glob("*.part"))
    assert parts and all(p.stat().st_size > 0 for p in parts)
    assert not download.is_complete(target)
    hub.delay_per_chunk = 0.0
    download.download(REPO, target)
    assert download.is_complete(target) and not list(target.glob("*.part"))
    resumed = [r for r in hub.requests if r[1] and r[1].startswith("bytes=") and r[1] != "bytes=0-"]
    assert resumed, "the second run must resume with a Range request"
    assert _digest(target) == {k: v for k, v in _digest(hub_repo).items() if not k.endswith((".py", ".md"))}


def test_network_error_mid_file_leaves_resumable_state(hub, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.fail_once_after = 3 * 2**20
    with pytest.raises(DownloadError, match="run the loader again"):
        download.download(REPO, target)
    assert not download.is_complete(target)
    download.download(REPO, target)
    assert download.is_complete(target)


def test_offline_error_names_folder_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = tmp_path / "Sa2VA-Qwen3-VL-4B"
    with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE is set.*Sa2VA-Qwen3-VL-4B.*config\.json"):
        download.download("ByteDance/Sa2VA-Qwen3-VL-4B", target)
    assert not target.exists(), "nothing is created when nothing is downloaded"


def test_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DownloadError, match=r"Cannot reach the model hub.*place these files from "
                                             r"https://huggingface.co/ByteDance/Sa2VA-Tiny in .*x by hand"):
        download.download(REPO, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_token_is_sent(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    download.download(REPO, tmp_path / "t")
    assert all(r[2] == "Bearer hf_secret" for r in hub.requests)


def test_truncated_or_missing_shard_is_not_complete(checkpoint_factory, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(checkpoint_factory("qwen3_vl", max_shard_bytes=8 * 2**20), folder)
    assert download.is_complete(folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[:-10])
    assert download.missing_files(folder) == [shards[0].name]
    shards[1].unlink()
    assert download.missing_files(folder) == [shards[0].name, shards[1].name]


def test_concurrent_downloads_of_one_model_do_not_corrupt_it(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.delay_per_chunk = 0.002
    failures = []

    def run():
        try:
            download.download(REPO, target)
        except Exception as exc:  # noqa: BLE001 - collect for the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    assert _digest(target) == {k: v for k, v in _digest(hub_repo).items() if not k.endswith((".py", ".md"))}
