"""Hub -> ``<models>/sa2va/<name>/`` as plain files: pinned, verified, private, resumable, parallel, cancellable.

How a download runs (design notes in docs/architecture.md, "Downloads"; this module is the entry, the work is done by
``session`` (HTTP, token, retries), ``plan`` (commit, file list, ``.part`` jobs), ``transfer`` (workers, write gate,
verify and place) and ``local_folder`` (completeness, lock, state file, hashes)):

- **Pinned.** The first attempt resolves the revision (``main``) to a commit sha through the hub's revision API and
  records it in ``<folder>/.sa2va-download.json``; every file of every later attempt is fetched from that commit, so
  bytes of two remote versions are never joined. If the hub no longer has the pinned commit, partial files are
  dropped and the download starts over on the current one.
- **Verified.** The tree API gives each weight file's sha256 (``lfs.oid``) and each small file's git blob id; every
  file is checked before it is renamed into place. A file fetched in one piece is hashed while it is written; a
  resumed or multi-range file is hashed whole once complete. A mismatch deletes the bad bytes and names the file.
- **Private.** The token (``HF_TOKEN``, else the one ``hf auth login`` stored, found by huggingface_hub's own
  ``get_token()``) is sent to the hub's host only, never to a redirect target on another host (the storage CDN).
- **Robust.** 429/5xx answers and dropped connections are retried with exponential backoff (``Retry-After`` is
  honoured), resuming from the bytes on disk; 401/403/404 are not retried and say what to do. A file-system failure
  (no permission, a read-only disk, a path under a regular file, a full disk) is a :class:`DiskError` naming the
  path and the fix, never retried.
- **Resumable and safe on disk.** Bytes go to ``<file>.part`` (progress of each range in ``<file>.part.json``) and
  a file is renamed to its final name only when whole and verified: a folder never holds a bad file under its final
  name. A lock beside the folder keeps two downloads of one model apart.
- **Cancellable.** ``cancelled()`` is polled every ``poll_s``; on Cancel (or Ctrl-C) the sockets are shut down, no
  worker writes after the stop flag is set (writes pass through one gate), and the call returns within a second.
- **Parallel.** Up to ``connections`` (default 8) transfers at once: several files, and large files split into
  ranges.

The repository's ``.py`` files are never fetched (no remote code runs). ``HF_ENDPOINT`` selects a mirror (and the
messages name it); with ``HF_HUB_OFFLINE=1`` nothing is fetched and the error says which files to place by hand. A
complete folder is used without any network access.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .checkpoint import INDEX_FILE
from .local_folder import (LOCK_SUFFIX, REQUIRED_FILES, STATE_FILE, DiskError, folder_lock, is_complete,
                           missing_files, pinned_commit, raise_disk_error, read_json, required_files, write_json)
from .plan import SKIPPED_SUFFIXES, RemoteFile, list_remote, pin, resolve_commit
from .session import (CancelCallback, DownloadCancelled, DownloadError, HubStatusError, ProgressCallback, Session,
                      endpoint, offline, token)
from .transfer import CONNECTIONS, Download
from ..errors import Sa2VAError

__all__ = ["CONNECTIONS", "LOCK_SUFFIX", "REQUIRED_FILES", "SKIPPED_SUFFIXES", "STATE_FILE", "CancelCallback",
           "DiskError", "DownloadCancelled", "DownloadError", "HubStatusError", "ProgressCallback", "RemoteFile",
           "download", "endpoint", "folder_lock", "is_complete", "list_remote", "missing_files", "offline",
           "pinned_commit", "required_files", "resolve_commit", "token"]

logger = logging.getLogger(__name__)


def download(repo_id: str, folder: str | os.PathLike, *, revision: str = "main",
             progress: ProgressCallback | None = None, cancelled: CancelCallback | None = None,
             poll_s: float = 0.1, required: tuple[str, ...] = REQUIRED_FILES,
             connections: int = CONNECTIONS) -> Path:
    """Download a release into ``folder`` as plain, verified files; resume partial files; return the folder.

    A complete folder returns at once without any network access. progress(done, total) is called with byte counts
    from the calling thread; cancelled() is polled every ``poll_s`` seconds and raises :class:`DownloadCancelled`
    (within a second, with nothing written afterwards). ``connections`` transfers run at once (1..16)."""
    folder = Path(folder)
    if is_complete(folder, required):
        return folder
    if offline():
        raise DownloadError(f"{folder} is incomplete and HF_HUB_OFFLINE is set, so nothing is downloaded. "
                            f"{_by_hand(repo_id, folder)}")
    connections = max(1, min(int(connections), 16))
    session = Session()
    with folder_lock(folder, cancelled):
        if is_complete(folder, required):
            return folder
        state = read_json(folder / STATE_FILE)
        try:
            commit, remote = _in_thread(lambda: pin(repo_id, revision, state, session), session, cancelled,
                                        poll_s, repo_id, folder)
        except HubStatusError as exc:  # keeps its class and status, as a status from the storage host does
            raise HubStatusError(f"{exc} {_by_hand(repo_id, folder)}", exc.status) from exc
        except DownloadError as exc:
            raise DownloadError(f"{exc} {_by_hand(repo_id, folder)}") from exc
        if not any(f.path == "config.json" for f in remote):
            raise DownloadError(f"{repo_id} on {endpoint()} has no config.json; it is not a model repository.")
        logger.info("Downloading %s at commit %s into %s", repo_id, commit[:12], folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if state.get("commit") != commit or state.get("repo_id") != repo_id:
                state = {"repo_id": repo_id, "revision": revision, "commit": commit,
                         "files": state.get("files", {}) if state.get("repo_id") == repo_id else {}}
                write_json(folder / STATE_FILE, state)
            state.setdefault("files", {})
            run = Download(repo_id, folder, commit, remote, state, session, connections)
        except OSError as exc:  # no permission, a read-only disk, a full disk
            raise_disk_error(exc, folder, _bytes_missing(folder, remote))
        run.run(connections, progress, cancelled, poll_s)
        if run.bad:
            raise DownloadError(f"{', '.join(run.bad)} of {repo_id} failed the integrity check (the bytes received "
                                f"differ from the hub's sha256) and were deleted; run the download again to fetch "
                                f"them anew.")
    left = missing_files(folder, required)
    if left:
        raise DownloadError(f"{folder} is still incomplete after downloading {repo_id}: {', '.join(left)}.")
    return folder


def _bytes_missing(folder: Path, remote: list[RemoteFile]) -> int:
    """Bytes of ``remote`` not yet in ``folder`` under their final names."""
    return sum(f.size for f in remote
               if not ((folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size))


def _in_thread(fn: Callable[[], object], session: Session, cancelled: CancelCallback | None, poll_s: float,
               repo_id: str, folder: Path):
    """``fn()`` run in a thread while this one polls ``cancelled`` (a stalled hub API cannot delay Cancel)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except (Sa2VAError, OSError, ValueError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"sa2va-download-{folder.name}-api", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(poll_s)
            if thread.is_alive() and cancelled is not None and cancelled():
                raise DownloadCancelled(f"Download of {repo_id} cancelled; the partial files in {folder} are kept "
                                        f"and the next run resumes them.")
    finally:
        if thread.is_alive():
            session.abort()
            thread.join(0.5)
    if "error" in result:
        raise result["error"]
    return result["value"]


def _by_hand(repo_id: str, folder: Path) -> str:
    files = ", ".join(missing_files(folder)) if folder.is_dir() else "config.json, " + INDEX_FILE + \
        " and every shard it lists, the tokenizer and processor files"
    return f"Or place these files from {endpoint()}/{repo_id} in {folder} by hand: {files}."

