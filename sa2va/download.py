"""Hub -> ``<models>/sa2va/<name>/`` as plain files, with byte progress, prompt cancel and resume.

Files are fetched with HTTP Range requests from ``$HF_ENDPOINT`` (default https://huggingface.co) into
``<file>.part`` and renamed into place only when whole, so a folder never holds a truncated file under its final
name: a cancelled, killed or failed download leaves ``.part`` files that the next run resumes. The file list comes
from the hub's tree API (sizes included); the repository's ``.py`` files are never fetched (no remote code runs).
``HF_TOKEN`` is sent when set; with ``HF_HUB_OFFLINE=1`` nothing is fetched and the error says which files to
place by hand. A lock file keeps two loaders of the same model from writing the same files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import INDEX_FILE, read_safetensors_header
from .errors import ModelFolderError, Sa2VAError

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
TIMEOUT_S = 30.0
#: files every release folder needs besides the shards listed in the index (the Qwen releases also ship
#: preprocessor_config.json: see :func:`required_files`)
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def required_files(family: str) -> tuple[str, ...]:
    """The non-weight files a release of ``family`` needs: InternVL3 releases have no processor files."""
    return REQUIRED_FILES if family == "internvl" else REQUIRED_FILES + ("preprocessor_config.json",)
#: never fetched: remote code, docs and repository media
SKIPPED_SUFFIXES = (".py", ".md", ".gitattributes", ".png", ".jpg", ".jpeg", ".gif", ".mp4", ".webp")
LOCK_SUFFIX = ".sa2va-download.lock"


class DownloadCancelled(Sa2VAError):
    """The download was cancelled; partial files are kept and the next run resumes them."""


class DownloadError(Sa2VAError):
    """The hub could not be reached or answered with an error."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository: path inside the repo and size in bytes."""

    path: str
    size: int


ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)
CancelCallback = Callable[[], bool]


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _headers() -> dict[str, str]:
    headers = {"User-Agent": "ComfyUI-Sa2VA"}
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def missing_files(folder: str | os.PathLike, required: tuple[str, ...] = REQUIRED_FILES) -> list[str]:
    """Files a complete model folder still lacks, from local files only (no network).

    Complete means: the ``required`` files (for a Sa2VA release: config.json, the tokenizer and processor files),
    the shard index and every shard it lists (or one model.safetensors), each shard whole (its size matches its
    safetensors header)."""
    folder = Path(folder)
    missing = [name for name in required if not (folder / name).is_file()]
    index = folder / INDEX_FILE
    if (folder / "model.safetensors").is_file() and not index.is_file():
        shards = ["model.safetensors"]
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            return missing + [INDEX_FILE]
    else:
        return missing + [INDEX_FILE]
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            missing.append(shard)
            continue
        try:
            read_safetensors_header(path)
        except ModelFolderError:
            missing.append(shard)
    return missing


def is_complete(folder: str | os.PathLike, required: tuple[str, ...] = REQUIRED_FILES) -> bool:
    return Path(folder).is_dir() and not missing_files(folder, required)


def list_remote(repo_id: str, revision: str = "main") -> list[RemoteFile]:
    """Files (with sizes) of a hub model repository that a release folder needs."""
    url = f"{endpoint()}/api/models/{repo_id}/tree/{urllib.parse.quote(revision, safe='')}?recursive=true"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_headers()), timeout=TIMEOUT_S) as resp:
            entries = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"The hub answered {exc.code} for {repo_id} ({url}); check the model name, or set "
                            f"HF_TOKEN if the repository needs a login.") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DownloadError(f"Cannot reach the model hub at {endpoint()} ({exc}); check the network or set "
                            f"HF_ENDPOINT to a mirror.") from exc
    files = []
    for entry in entries:
        if entry.get("type") != "file" or entry["path"].endswith(SKIPPED_SUFFIXES) or "/" in entry["path"]:
            continue
        size = entry.get("lfs", {}).get("size", entry.get("size", 0))
        files.append(RemoteFile(entry["path"], int(size)))
    return sorted(files, key=lambda f: (f.path.endswith(".safetensors"), f.path))


def _by_hand(repo_id: str, folder: Path) -> str:
    files = ", ".join(missing_files(folder)) if folder.is_dir() else "config.json, " + INDEX_FILE + \
        " and every shard it lists, the tokenizer and processor files"
    return f"Or place these files from https://huggingface.co/{repo_id} in {folder} by hand: {files}."


@contextlib.contextmanager
def folder_lock(folder: Path, cancelled: CancelCallback | None = None) -> Iterator[None]:
    """An exclusive lock on ``folder`` across processes (fcntl) and threads; waits, checking ``cancelled``.

    The lock file sits beside the folder (``.<name>.sa2va-download.lock``), so nothing is created inside it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    handle = open(folder.parent / f".{folder.name}{LOCK_SUFFIX}", "a+")
    try:
        try:
            import fcntl
        except ImportError:  # Windows: msvcrt byte-range lock on the lock file
            fcntl = None
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    import msvcrt

                    msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if cancelled is not None and cancelled():
                    raise DownloadCancelled(f"Download of {folder.name} cancelled while waiting for another "
                                            f"download of the same model.") from None
                time.sleep(0.2)
        yield
    finally:
        handle.close()


def _fetch(url: str, target: Path, size: int, on_bytes: Callable[[int], None], stop: threading.Event) -> None:
    """Append the rest of ``url`` to ``target.part`` from its current length; rename when whole."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    on_bytes(have)
    if have < size or size == 0:
        request = urllib.request.Request(url, headers={**_headers(), **({"Range": f"bytes={have}-"} if have else {})})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            if have and resp.status != 206:  # server ignored Range: start over
                have = 0
                part.unlink()
                on_bytes(0)
            with open(part, "ab") as out:
                while not stop.is_set():
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    have += len(chunk)
                    on_bytes(have)
        if stop.is_set():
            return
    got = part.stat().st_size if part.exists() else 0
    if size and got != size:
        raise DownloadError(f"{target.name}: received {got} of {size} bytes; run the loader again to resume.")
    if not part.exists():
        part.touch()
    if target.suffix == ".safetensors":
        try:
            read_safetensors_header(part)
        except ModelFolderError as exc:
            part.unlink()
            raise DownloadError(f"{target.name} arrived corrupted ({exc}); it was deleted, run the loader again.") \
                from exc
    os.replace(part, target)


def download(repo_id: str, folder: str | os.PathLike, *, revision: str = "main",
             progress: ProgressCallback | None = None, cancelled: CancelCallback | None = None,
             poll_s: float = 0.1, required: tuple[str, ...] = REQUIRED_FILES) -> Path:
    """Download a release into ``folder`` as plain files; resume partial files; return the folder.

    progress(done, total) is called with byte counts from the calling thread; cancelled() is polled every
    ``poll_s`` seconds, also in the middle of a large file, and raises :class:`DownloadCancelled` when it says so.
    Files already present in full are not fetched again."""
    folder = Path(folder)
    if offline():
        raise DownloadError(f"{folder} is incomplete and HF_HUB_OFFLINE is set, so nothing is downloaded. "
                            f"{_by_hand(repo_id, folder)}")
    try:
        remote = list_remote(repo_id, revision)
    except DownloadError as exc:
        raise DownloadError(f"{exc} {_by_hand(repo_id, folder)}") from exc
    with folder_lock(folder, cancelled):
        folder.mkdir(parents=True, exist_ok=True)
        if not any(f.path == "config.json" for f in remote):
            raise DownloadError(f"{repo_id} on {endpoint()} has no config.json; it is not a model repository.")
        todo = [f for f in remote if not ((folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size)]
        total = sum(f.size for f in remote)
        done_before = total - sum(f.size for f in todo)
        state = {"current": 0}
        stop = threading.Event()
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for item in todo:
                    if stop.is_set():
                        return
                    url = f"{endpoint()}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{item.path}"
                    base = state["current"]
                    _fetch(url, folder / item.path, item.size,
                           lambda n, base=base: state.__setitem__("partial", base + n), stop)
                    state["current"] = base + item.size
                    state["partial"] = state["current"]
            except (OSError, urllib.error.URLError, DownloadError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=worker, name=f"sa2va-download-{folder.name}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(poll_s)
            if progress is not None:
                progress(done_before + state.get("partial", 0), total)
            if cancelled is not None and cancelled():
                stop.set()
                thread.join(5.0)
                raise DownloadCancelled(f"Download of {repo_id} cancelled; the partial files in {folder} are kept "
                                        f"and the next run resumes them.")
        if errors:
            exc = errors[0]
            if isinstance(exc, DownloadError):
                raise exc
            raise DownloadError(f"Download of {repo_id} into {folder} failed ({exc}); run the loader again to "
                                f"resume.") from exc
    left = missing_files(folder, required)
    if left:
        raise DownloadError(f"{folder} is still incomplete after downloading {repo_id}: {', '.join(left)}.")
    return folder
