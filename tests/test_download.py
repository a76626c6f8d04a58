"""Downloading a release from a fake hub that behaves like the real one (tests/fakehub.py): plain files, byte
progress, a pinned commit, sha256 checks, the token kept on the hub's host, retries, prompt cancel, resume,
parallel transfers."""
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from fakehub import FakeHub
from sa2va.hub import download, plan, session, transfer
from sa2va.hub.download import DownloadCancelled, DownloadError

REPO = "ByteDance/Sa2VA-Tiny"


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def _release(folder):
    """What a download of ``folder`` must produce: every file but the remote code and docs."""
    return {k: v for k, v in _digest(folder).items() if not k.endswith((".py", ".md"))}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(session, "BACKOFF_S", 0.01)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", "/nonexistent/sa2va-test/token")


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


def info_of(call):
    """The DownloadError ``call()`` raises."""
    with pytest.raises(DownloadError) as info:
        call()
    return info.value


def _shards(folder):
    return sorted(p.name for p in folder.glob("model-*.safetensors"))


def test_download_writes_plain_files_and_reports_bytes(hub, hub_repo, tmp_path):
    target = tmp_path / "models" / "Sa2VA-Tiny"
    seen = []
    download.download(REPO, target, progress=lambda done, total: seen.append((done, total)))
    assert download.is_complete(target)
    expected = _release(hub_repo)
    assert _digest(target) == expected
    assert not list(target.glob("*.part*")) and not any(p.is_symlink() for p in target.iterdir())
    total = sum((hub_repo / name).stat().st_size for name in expected)
    assert seen[-1] == (total, total)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    assert not any("modeling" in r[0] or "README" in r[0] for r in hub.requests), "no .py or docs fetched"
    # weight files came from the second host, by the pinned commit
    commit = download.pinned_commit(target)
    assert commit == hub.heads[REPO]
    cdn = [r for r in hub.requests if r[3] == "cdn"]
    assert cdn and all(commit in r[0] for r in cdn)
    assert all(f"/resolve/{commit}/" in r[0] for r in hub.requests if "/resolve/" in r[0])


def test_complete_folder_uses_no_network(hub, tmp_path, monkeypatch):
    target = tmp_path / "Sa2VA-Tiny"
    download.download(REPO, target)
    requests = len(hub.requests)

    def no_network(*args, **kwargs):
        raise AssertionError("network used for a complete folder")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert download.download(REPO, target) == target
    assert len(hub.requests) == requests


def test_cancel_mid_file_is_prompt_and_resume_completes(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.delay_per_chunk = 0.02  # ~3 MB/s per connection: a multi-MB shard takes seconds
    flag = threading.Event()
    marks = {}

    def on_progress(done, total):
        if done > 1.5 * 2**20 and not flag.is_set():
            flag.set()
            marks["cancelled_at"] = time.monotonic()

    start = time.monotonic()
    with pytest.raises(DownloadCancelled, match="partial files .* are kept"):
        download.download(REPO, target, progress=on_progress, cancelled=flag.is_set)
    assert time.monotonic() - marks["cancelled_at"] < 1.0
    assert time.monotonic() - start < 30
    assert list(target.glob("*.part")) and not download.is_complete(target)
    kept = sum(sum(s[2] for s in json.loads(p.read_text())["segments"]) for p in target.glob("*.part.json"))
    assert kept > 2**20, "the bytes received before Cancel are kept"
    hub.delay_per_chunk = 0.0
    first = len(hub.requests)
    download.download(REPO, target)
    assert download.is_complete(target) and not list(target.glob("*.part*"))
    shard_bytes = sum((hub_repo / s).stat().st_size for s in _shards(hub_repo))
    asked = 0
    for path, byte_range, _, server in hub.requests[first:]:
        if server == "cdn":
            assert byte_range, "every weight file was begun before Cancel, so every request resumes a range"
            begin, end = byte_range[6:].split("-")
            asked += int(end) + 1 - int(begin)
    assert asked == shard_bytes - kept, "the resume asks for exactly the missing bytes"
    assert _digest(target) == _release(hub_repo)


def test_cancel_on_a_stalled_link_returns_within_a_second_and_nothing_writes_after(hub, hub_repo, tmp_path,
                                                                                    monkeypatch):
    target = tmp_path / "Sa2VA-Tiny"
    hub.delay_per_chunk = 0.01
    # a file of unknown origin that fails verification, its hash finished just as Cancel stops the download: the
    # re-fetch it plans (delete the stale .part, create a new one, save its progress) must not touch the disk
    target.mkdir()
    foreign = target / "tokenizer_config.json"
    foreign.write_bytes(bytes(b ^ 1 for b in (hub_repo / foreign.name).read_bytes()))
    real_hash_file = transfer.hash_file
    verified = threading.Event()

    def hash_file(path, check, size, stop):
        digest = real_hash_file(path, check, size, threading.Event())
        if path == foreign:
            stop.wait(30)  # returns once Cancel has stopped the download
            verified.set()
        return digest

    monkeypatch.setattr(transfer, "hash_file", hash_file)
    flag = threading.Event()
    marks = {}

    def cancel():
        marks["set_at"] = time.monotonic()
        flag.set()

    def on_progress(done, total):
        if done > 2**20 and not marks:
            hub.stall = 20.0  # every new transfer now hangs after its headers
            hub.delay_per_chunk = 0.5  # and the running ones crawl
            marks["timer"] = threading.Timer(0.5, cancel)
            marks["timer"].start()

    with pytest.raises(DownloadCancelled):
        download.download(REPO, target, progress=on_progress, cancelled=flag.is_set)
    returned = time.monotonic()
    assert returned - marks["set_at"] < 1.0, "Cancel is honoured within a second on a stalled link"
    snapshot = {p.name: p.read_bytes() for p in target.iterdir()}
    time.sleep(1.0)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == snapshot, "a thread wrote after the return"
    assert verified.is_set() and not (target / "tokenizer_config.json.part").exists(), "re-fetch planned after Cancel"
    assert foreign.read_bytes() == bytes(b ^ 1 for b in (hub_repo / foreign.name).read_bytes())
    assert not [t for t in threading.enumerate() if t.name.startswith("sa2va-download") and t.is_alive()]
    with download.folder_lock(target):  # released: taken at once
        assert time.monotonic() - returned < 2.0


def test_cancel_while_the_hub_api_hangs_is_prompt(hub, tmp_path):
    hub.api_stall = 10.0
    flag = threading.Event()
    timer = threading.Timer(0.3, flag.set)
    timer.start()
    start = time.monotonic()
    with pytest.raises(DownloadCancelled):
        download.download(REPO, tmp_path / "Sa2VA-Tiny", cancelled=flag.is_set)
    assert time.monotonic() - start < 1.3
    assert not (tmp_path / "Sa2VA-Tiny").exists()


def test_dropped_connection_is_retried_and_resumes_from_disk(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.fail_once_after = 3 * 2**20 + 123
    download.download(REPO, target, connections=1)
    assert _digest(target) == _release(hub_repo)
    resumed = [r for r in hub.requests if r[3] == "cdn" and r[1] and r[1].startswith(f"bytes={3 * 2**20 + 123}-")]
    assert resumed, "the retry asks for the bytes after those on disk"


@pytest.mark.parametrize("status", [503, 429])
def test_503_and_429_are_retried_honouring_retry_after(hub, hub_repo, tmp_path, status):
    target = tmp_path / "Sa2VA-Tiny"
    hub.fail_statuses = [status, status]
    hub.retry_after = 0.3
    start = time.monotonic()
    download.download(REPO, target, connections=1)
    assert time.monotonic() - start >= 0.6, "Retry-After was honoured twice"
    assert _digest(target) == _release(hub_repo)
    assert not hub.fail_statuses


def test_endless_503_gives_up_after_bounded_retries_keeping_parts(hub, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.fail_statuses = [503] * 1000
    hub.retry_after = None
    with pytest.raises(DownloadError, match=r"failed 6 times \(HTTP 503\).*run the download again to resume"):
        download.download(REPO, target, connections=1)
    assert 1000 - len(hub.fail_statuses) == session.RETRIES + 1
    hub.fail_statuses = []
    download.download(REPO, target)
    assert download.is_complete(target)


@pytest.mark.parametrize("status, words", [(401, "needs a login or access"), (403, "needs a login or access"),
                                           (404, "check the model name")])
def test_permanent_errors_are_not_retried_and_say_what_to_do(hub, tmp_path, status, words):
    target = tmp_path / "Sa2VA-Tiny"
    hub.fail_statuses = [status] * 10
    with pytest.raises(download.HubStatusError, match=words) as info:
        download.download(REPO, target, connections=1)
    assert len(hub.fail_statuses) == 9, "asked once, not retried"
    assert f"({hub.url}" in str(info.value), "the message names the endpoint in use (a mirror)"


def test_missing_repository_is_a_clear_error(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"The hub answered 404 for ByteDance/Nope.*check the model name"):
        download.download("ByteDance/Nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_corrupted_shard_is_deleted_named_and_fetched_again(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    bad = _shards(hub_repo)[0]
    hub.corrupt = {bad}
    with pytest.raises(DownloadError, match=rf"{bad} of {REPO} failed the integrity check"):
        download.download(REPO, target)
    assert not (target / bad).exists() and not list(target.glob(f"{bad}.part*")), "the bad bytes are deleted"
    others = {k: v for k, v in _release(hub_repo).items() if k != bad}
    assert {k: v for k, v in _digest(target).items()} == others
    download.download(REPO, target)
    assert _digest(target) == _release(hub_repo)


def test_corrupted_small_file_fails_its_git_check(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.corrupt = {"tokenizer.json"}
    with pytest.raises(DownloadError, match="tokenizer.json of .* failed the integrity check"):
        download.download(REPO, target)
    download.download(REPO, target)
    assert _digest(target) == _release(hub_repo)


def _new_version(hub_repo, tmp_path):
    """The repository after a push: every shard rewritten with different bytes of the same size."""
    v2 = tmp_path / "remote-v2"
    shutil.copytree(hub_repo, v2)
    for shard in _shards(v2):
        data = bytearray((v2 / shard).read_bytes())
        for i in range(len(data) - 1, len(data) // 4, -4096):
            data[i] ^= 0x5A
        (v2 / shard).write_bytes(bytes(data))
    return v2


def _cancel_after(n):
    flag = threading.Event()

    def on_progress(done, total):
        if done > n:
            flag.set()
    return on_progress, flag.is_set


def test_remote_change_between_attempts_never_mixes_versions(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    v1 = hub.heads[REPO]
    hub.delay_per_chunk = 0.01
    progress, cancelled = _cancel_after(2 * 2**20)
    with pytest.raises(DownloadCancelled):
        download.download(REPO, target, progress=progress, cancelled=cancelled)
    hub.delay_per_chunk = 0.0
    hub.publish(REPO, _new_version(hub_repo, tmp_path))
    download.download(REPO, target)
    assert download.pinned_commit(target) == v1
    assert _digest(target) == _release(hub_repo), "the resume finishes the version the first attempt saw"


def test_pinned_commit_gone_starts_over_on_the_new_one(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.delay_per_chunk = 0.01
    progress, cancelled = _cancel_after(2 * 2**20)
    with pytest.raises(DownloadCancelled):
        download.download(REPO, target, progress=progress, cancelled=cancelled)
    hub.delay_per_chunk = 0.0
    v2 = _new_version(hub_repo, tmp_path)
    new = hub.publish(REPO, v2, forget=True)  # history rewritten: the old commit is gone
    download.download(REPO, target)
    assert download.pinned_commit(target) == new
    assert _digest(target) == _release(v2)


def test_token_goes_to_the_hub_host_only(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    download.download(REPO, tmp_path / "t")
    hub_requests = [r for r in hub.requests if r[3] == "hub"]
    cdn_requests = [r for r in hub.requests if r[3] == "cdn"]
    assert hub_requests and all(r[2] == "Bearer hf_secret" for r in hub_requests)
    assert cdn_requests and all(r[2] is None for r in cdn_requests), "the token never reaches the storage host"


def test_stored_login_token_is_used(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    token_file = tmp_path / "hf-home" / "token"
    token_file.parent.mkdir()
    token_file.write_text("hf_from_login\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file))
    download.download(REPO, tmp_path / "t")
    assert {r[2] for r in hub.requests if r[3] == "hub"} == {"Bearer hf_from_login"}


def test_parallel_transfers_use_several_connections_and_ranges(hub, hub_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "SEGMENT_MIN", 2**20)
    target = tmp_path / "Sa2VA-Tiny"
    hub.delay_per_chunk = 0.005
    download.download(REPO, target, connections=6)
    assert 4 <= hub.max_active <= 6
    shard = _shards(hub_repo)[0]
    starts = {r[1] for r in hub.requests if r[3] == "cdn" and r[0].split("?")[0].endswith(shard)}
    assert len(starts) >= 4, "a large file is fetched as several ranges at once"
    assert _digest(target) == _release(hub_repo)


def test_offline_error_names_folder_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    target = tmp_path / "Sa2VA-Qwen3-VL-4B"
    with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE is set.*Sa2VA-Qwen3-VL-4B.*config\.json"):
        download.download("ByteDance/Sa2VA-Qwen3-VL-4B", target)
    assert "place these files from https://huggingface.co/ByteDance/Sa2VA-Qwen3-VL-4B in" in str(info_of(
        lambda: download.download("ByteDance/Sa2VA-Qwen3-VL-4B", target)))
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert "place these files from https://hf-mirror.example/ByteDance/Sa2VA-Qwen3-VL-4B in" in str(info_of(
        lambda: download.download("ByteDance/Sa2VA-Qwen3-VL-4B", target))), "a mirror user is sent to the mirror"
    assert not target.exists(), "nothing is created when nothing is downloaded"


def test_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DownloadError, match=r"Cannot reach the model hub at http://127.0.0.1:9 .*place these files "
                                             r"from http://127.0.0.1:9/ByteDance/Sa2VA-Tiny in .*x by hand"):
        download.download(REPO, tmp_path / "x")
    assert not (tmp_path / "x").exists()


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
    assert _digest(target) == _release(hub_repo)


# ------------------------------------------------------------------------------ file-system failures (issue 27)
def test_models_path_under_a_regular_file_is_a_disk_error_naming_it(hub, tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("not a folder")
    with pytest.raises(download.DiskError, match=rf"A file is in the way of .*: {blocker} is a regular file, not a "
                                                  rf"folder; move it away or choose another models folder"):
        download.download(REPO, blocker / "sa2va" / "Sa2VA-Tiny")
    assert blocker.read_text() == "not a folder" and not hub.requests, "nothing fetched, the file untouched"


@pytest.mark.parametrize("code, words", [(errno.EACCES, "No permission to write"),
                                         (errno.EROFS, "Read-only file system at")])
def test_unwritable_models_folder_is_a_disk_error_naming_the_path(hub, tmp_path, monkeypatch, code, words):
    """A folder the user may not write, or a read-only mount (faked: the tests may run as root, who may write
    anywhere), fails when the download creates its folder, before anything is fetched."""
    models = tmp_path / "models"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == models or models in self.parents:
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(download.DiskError, match=rf"{words} {models}.*then run the download again") as info:
        download.download(REPO, models / "Sa2VA-Tiny")
    assert isinstance(info.value, download.DownloadError) and not hub.requests


def test_unwritable_part_file_is_a_disk_error_not_retried_like_a_dropped_connection(hub, tmp_path, monkeypatch):
    target = tmp_path / "Sa2VA-Tiny"
    refused = []

    def fake_open(path, mode="r", *args, **kwargs):
        if mode == "r+b":
            refused.append(path)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(transfer, "open", fake_open, raising=False)
    with pytest.raises(download.DiskError, match=r"No permission to write .*\.part: give your user write access"):
        download.download(REPO, target, connections=1)
    assert len(refused) == 1, "not retried"
    monkeypatch.delattr(transfer, "open")
    assert list(target.glob("*.part")) and not download.is_complete(target)
    download.download(REPO, target)
    assert download.is_complete(target)


def test_full_disk_stops_at_once_saying_the_space_needed_and_keeps_the_parts(hub, hub_repo, tmp_path, monkeypatch):
    target = tmp_path / "Sa2VA-Tiny"
    written = {"bytes": 0, "full": 0}
    real_write_all = transfer.write_all

    def write_all(out, data):
        if written["bytes"] + len(data) > 5 * 2**20:
            written["full"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        written["bytes"] += len(data)
        real_write_all(out, data)

    monkeypatch.setattr(transfer, "write_all", write_all)
    with pytest.raises(download.DiskError, match=r"The disk holding .*\.part is full: free some space "
                                                  r"\(needed: (\d+\.\d+) GB, free: \d+\.\d+ GB\)") as info:
        download.download(REPO, target, connections=1)
    total = sum((hub_repo / name).stat().st_size for name in _release(hub_repo))
    needed = float(re.search(r"needed: (\d+\.\d+) GB", str(info.value)).group(1)) * 1e9
    assert abs(needed - (total - written["bytes"])) < 0.01e9, "needed: the bytes still to fetch"
    assert written["full"] == 1, "a full disk is not retried"
    placed = {p.name: p.stat().st_mtime_ns for p in target.iterdir() if p.suffix in (".json", ".txt") and
              not p.name.startswith(".") and not p.name.endswith(".part.json")}
    assert "config.json" in placed, "the small files were verified and placed before the disk filled"
    assert list(target.glob("*.part")) and not download.is_complete(target), "partial files are kept"
    monkeypatch.setattr(transfer, "write_all", real_write_all)
    first = len(hub.requests)
    download.download(REPO, target)
    assert _digest(target) == _release(hub_repo)
    assert {k: (target / k).stat().st_mtime_ns for k in placed} == placed, "verified files were not touched"
    assert not any(r[0].split("?")[0].endswith(tuple(placed)) for r in hub.requests[first:])


# ------------------------------------------------------------------- faults of the hub and the link (issue 27)
def test_401_says_what_403_says(hub, tmp_path):
    messages = {}
    for status in (401, 403):
        hub.fail_statuses = [status]
        with pytest.raises(download.HubStatusError) as info:
            download.download(REPO, tmp_path / f"t{status}", connections=1)
        assert info.value.status == status and f"answered {status} " in str(info.value)
        # only the status word differs (the fake hub's port may itself contain "401")
        messages[status] = str(info.value).replace(f"answered {status} ", "answered <status> ", 1)
    assert messages[401] == messages[403]


@pytest.mark.parametrize("statuses", [[503, 503], [429, 429], [500, 502, 503]])
def test_api_host_errors_are_retried_like_the_storage_hosts(hub, hub_repo, tmp_path, statuses):
    hub.hub_fail_statuses = list(statuses)
    hub.retry_after = 0.2
    start = time.monotonic()
    download.download(REPO, tmp_path / "t", connections=1)
    assert time.monotonic() - start >= 0.2 * len(statuses), "Retry-After was honoured on the API host"
    assert not hub.hub_fail_statuses and _digest(tmp_path / "t") == _release(hub_repo)


def test_endless_api_host_errors_give_up_after_bounded_retries(hub, tmp_path):
    hub.hub_fail_statuses = [503] * 1000
    hub.retry_after = None
    with pytest.raises(DownloadError, match=r"Cannot reach the model hub at .*\(HTTP 503, 6 attempts\)"):
        download.download(REPO, tmp_path / "t")
    assert 1000 - len(hub.hub_fail_statuses) == session.RETRIES + 1


@pytest.mark.parametrize("status, words", [(401, "needs a login or access"), (403, "needs a login or access"),
                                           (404, "check the model name")])
def test_api_host_permanent_errors_are_explained_like_the_storage_hosts(hub, tmp_path, status, words):
    hub.hub_fail_statuses = [status] * 10
    with pytest.raises(download.HubStatusError, match=rf"The hub answered {status} for {REPO} .*{words}") as info:
        download.download(REPO, tmp_path / "t")
    assert info.value.status == status and len(hub.hub_fail_statuses) == 9, "asked once, not retried"
    assert f"place these files from {hub.url}/{REPO} in" in str(info.value), "the endpoint in use, not huggingface.co"


def _first_shard_split_in_ranges(monkeypatch, hub_repo):
    monkeypatch.setattr(plan, "SEGMENT_MIN", 2**20)
    shard = _shards(hub_repo)[0]
    assert (hub_repo / shard).stat().st_size >= 2 * plan.SEGMENT_MIN, "the shard is fetched as several ranges"
    return shard


def test_corruption_in_a_multi_range_file_is_rejected_by_the_whole_file_hash(hub, hub_repo, tmp_path, monkeypatch):
    shard = _first_shard_split_in_ranges(monkeypatch, hub_repo)
    target = tmp_path / "Sa2VA-Tiny"
    hub.corrupt = {shard}
    with pytest.raises(DownloadError, match=rf"{shard} of {REPO} failed the integrity check"):
        download.download(REPO, target, connections=4)
    ranges = {r[1] for r in hub.requests if r[3] == "cdn" and r[0].split("?")[0].endswith(shard)}
    assert len(ranges) >= 2 and None not in ranges, "fetched as several ranges (no hash while writing)"
    assert not (target / shard).exists() and not list(target.glob(f"{shard}.part*")), "the bad bytes are deleted"
    download.download(REPO, target, connections=4)
    assert _digest(target) == _release(hub_repo)


def test_corruption_in_a_resumed_file_is_rejected_by_the_whole_file_hash(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    hub.delay_per_chunk = 0.01
    progress, cancelled = _cancel_after(2**20)
    with pytest.raises(DownloadCancelled):
        download.download(REPO, target, progress=progress, cancelled=cancelled, connections=1)
    hub.delay_per_chunk = 0.0
    resumed = [p.name.removesuffix(".part.json") for p in target.glob("*.safetensors.part.json")
               if sum(s[2] for s in json.loads(p.read_text())["segments"])]
    assert len(resumed) == 1, "one shard was begun before Cancel (every .part exists, at full size)"
    hub.corrupt = {resumed[0]}
    first = len(hub.requests)
    with pytest.raises(DownloadError, match=rf"{resumed[0]} of {REPO} failed the integrity check"):
        download.download(REPO, target, connections=1)
    assert any(r[1] and not r[1].startswith("bytes=0-") for r in hub.requests[first:] if r[0].split("?")[0]
               .endswith(resumed[0])), "the corrupted transfer was a resumed range"
    assert not (target / resumed[0]).exists() and not list(target.glob(f"{resumed[0]}.part*"))
    download.download(REPO, target)
    assert _digest(target) == _release(hub_repo)


def test_branch_moving_between_listing_and_transfer_never_mixes_versions(hub, hub_repo, tmp_path):
    target = tmp_path / "Sa2VA-Tiny"
    v1 = hub.heads[REPO]
    v2 = _new_version(hub_repo, tmp_path)
    hub.after_listing = lambda: hub.publish(REPO, v2)  # a push right after the file list was made
    download.download(REPO, target)
    assert hub.heads[REPO] != v1 and download.pinned_commit(target) == v1
    assert _digest(target) == _release(hub_repo), "every file of the commit that was listed"


@pytest.mark.parametrize("knob, words", [("linked_etag", "The hub served another version of"),
                                         ("repo_commit", "The hub served .* from commit .*, not the pinned")])
def test_another_version_served_after_listing_is_refused_before_any_byte(hub, hub_repo, tmp_path, knob, words):
    """A proxy or mirror that serves another version of a file than the listed commit's (its etag or commit changed
    between the listing and the transfer) is refused before a byte is written; the next run finishes the pinned
    version."""
    target = tmp_path / "Sa2VA-Tiny"
    shard = _shards(hub_repo)[0]
    getattr(hub, knob)[shard] = "ab" * 32 if knob == "linked_etag" else "cd" * 20
    with pytest.raises(DownloadError, match=words):
        download.download(REPO, target, connections=1)
    assert not (target / shard).exists()
    part = target / f"{shard}.part.json"
    assert not part.exists() or not sum(s[2] for s in json.loads(part.read_text())["segments"]), "no byte written"
    getattr(hub, knob).clear()
    download.download(REPO, target)
    assert _digest(target) == _release(hub_repo)


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_loader_checks_bitsandbytes_before_any_download_or_eviction(hub, tmp_path, monkeypatch, quantization):
    """8-bit/4-bit without bitsandbytes: the install-command error comes before the Loader downloads the model or
    asks ComfyUI to evict other models for it."""
    import sys

    from pack import pack_module

    loader = pack_module("nodes.loader")
    comfy = pack_module("nodes.comfy")
    errors = pack_module("sa2va.errors")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(tmp_path / "models"))
    evictions = []
    monkeypatch.setattr(comfy, "free_memory", lambda *args: evictions.append(args))
    with pytest.raises(errors.DependencyError, match=rf"bitsandbytes is required for quantization='{quantization}'"):
        loader.load_handle(model="Sa2VA-Qwen3-VL-4B", quantization=quantization, device="cpu")
    assert not hub.requests and not evictions and not (tmp_path / "models").exists()
