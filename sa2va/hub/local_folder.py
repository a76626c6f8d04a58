"""The model folder on disk: what a complete folder holds (:func:`missing_files`, :func:`is_complete`), the lock that
keeps two downloads of one model apart, the state file that records the pinned commit and the verified files, and
the hashes that verify a file (the hub's sha256 for weights, the git blob id for small files)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from .checkpoint import INDEX_FILE, read_safetensors_header
from .session import CancelCallback, DownloadCancelled, DownloadError
from ..errors import ModelFolderError

STATE_FILE = ".sa2va-download.json"
LOCK_SUFFIX = ".sa2va-download.lock"
#: files every release folder needs besides the shards listed in the index (the Qwen releases also ship
#: preprocessor_config.json: see :func:`required_files`)
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
#: errnos of a full disk (EDQUOT: a quota; absent on Windows)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskError(DownloadError):
    """A file-system failure while downloading (no permission, a read-only disk, a path under a regular file, a
    full disk); ``path`` is where it happened. Partial files are kept; verified files are not touched."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}" if n >= 1e9 else f"{n / 1e9:.2f}"


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def raise_disk_error(exc: OSError, path: Path, needed: int | None = None) -> NoReturn:
    """Raise the :class:`DiskError` for ``exc``, a file-system failure at ``path`` (the file ``exc`` names, when it
    names one): what went wrong there and the fix. ``needed``: bytes the download still has to write (a full disk
    says how much space to free)."""
    path = Path(exc.filename) if exc.filename else Path(path)
    if exc.errno in _FULL:
        free = shutil.disk_usage(_existing(path)).free
        if needed is None:
            raise DiskError(f"The disk holding {path} is full: free some space (free: {_gb(free)} GB), then run "
                            f"the download again to resume; the partial files are kept.", path) from exc
        raise DiskError(f"The disk holding {path} is full: free some space (needed: {_gb(needed)} GB, free: "
                        f"{_gb(free)} GB), then run the download again to resume; the partial files are kept.",
                        path) from exc
    if exc.errno in (errno.EACCES, errno.EPERM):
        raise DiskError(f"No permission to write {path}: give your user write access there or choose another "
                        f"models folder, then run the download again.", path) from exc
    if exc.errno == errno.EROFS:
        raise DiskError(f"Read-only file system at {path}: choose a models folder on a writable disk, then run the "
                        f"download again.", path) from exc
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and blocker is not None:
        raise DiskError(f"A file is in the way of {path}: {blocker} is a regular file, not a folder; move it away "
                        f"or choose another models folder, then run the download again.", path) from exc
    raise DiskError(f"The download could not write {path} ({exc.strerror or exc}); check the disk and the folder's "
                    f"permissions, then run the download again to resume.", path) from exc


def required_files(family: str, tokenizer: str = "tokenizer.json") -> tuple[str, ...]:
    """The non-weight files a release of ``family`` needs: InternVL3 releases and Sa2VA-LLaVA (whose 336-px squash
    is not LlavaProcessor's) have no processor files; the InternLM2 releases (Sa2VA-8B/26B) ship
    ``tokenizer="tokenizer.model"`` (SentencePiece) instead of ``tokenizer.json``."""
    files = tuple(tokenizer if name == "tokenizer.json" else name for name in REQUIRED_FILES)
    return files if family in ("internvl", "llava") else files + ("preprocessor_config.json",)


def missing_files(folder: str | os.PathLike, required: tuple[str, ...] = REQUIRED_FILES) -> list[str]:
    """Files a complete model folder still lacks, from local files only (no network).

    Complete means: the ``required`` files (for a Sa2VA release: config.json, the tokenizer and processor files),
    the shard index and every shard it lists (or one model.safetensors), each shard whole (its size matches its
    safetensors header)."""
    folder = Path(folder)
    # a SentencePiece tokenizer.model stands in for tokenizer.json (hand-placed Sa2VA-8B/26B folders)
    missing = [name for name in required if not (folder / name).is_file()
               and not (name == "tokenizer.json" and (folder / "tokenizer.model").is_file())]
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


@contextlib.contextmanager
def folder_lock(folder: Path, cancelled: CancelCallback | None = None) -> Iterator[None]:
    """An exclusive lock on ``folder`` across processes (fcntl) and threads; waits, checking ``cancelled``.

    The lock file sits beside the folder (``.<name>.sa2va-download.lock``), so nothing is created inside it."""
    lock = folder.parent / f".{folder.name}{LOCK_SUFFIX}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as exc:  # no permission, a read-only disk, a path under a regular file, a full disk
        raise_disk_error(exc, lock)
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


# -------------------------------------------------------------------------------------------- state file
def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pinned_commit(folder: str | os.PathLike) -> str | None:
    """The commit a download into ``folder`` is pinned to (recorded in ``.sa2va-download.json``), or None."""
    return read_json(Path(folder) / STATE_FILE).get("commit")


# ------------------------------------------------------------------------------------------------ hashes
def _git_blob_hasher(size: int):
    hasher = hashlib.sha1()
    hasher.update(b"blob %d\0" % size)
    return hasher


def hasher(check: str | None, size: int):
    """A fresh hashlib object for ``check`` (``sha256:<hex>`` or ``git:<hex>``) of a ``size``-byte file; None for
    no check."""
    if check is None:
        return None
    return hashlib.sha256() if check.startswith("sha256:") else _git_blob_hasher(size)


def hash_file(path: Path, check: str, size: int, stop: threading.Event) -> str | None:
    """The hex digest of ``path`` for ``check``'s kind; None when ``stop`` was set meanwhile."""
    digest = hasher(check, size)
    with open(path, "rb") as handle:
        while block := handle.read(4 * 2**20):
            if stop.is_set():
                return None
            digest.update(block)
    return digest.hexdigest()
