"""Moving the bytes: a pool of worker threads takes byte ranges from one queue and fetches them from the pinned
commit (:class:`RangeFetcher`, retrying transient failures from the bytes on disk), then verifies each whole file and
renames it into place. Every disk write passes through one :class:`WriteGate`, which no write passes once the
download is stopped (Cancel, Ctrl-C or a fatal error)."""
from __future__ import annotations

import contextlib
import http.client
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .checkpoint import read_safetensors_header
from .local_folder import STATE_FILE, hash_file, raise_disk_error, write_json
from .plan import SHA256, FileJob, RemoteFile, Segment, plan
from .session import (CancelCallback, DownloadCancelled, DownloadError, ProgressCallback, Session, TransientError,
                      backoff, endpoint, out_of_retries, raise_for_status)
from ..errors import ModelFolderError

logger = logging.getLogger(__name__)

#: bytes per socket read: small, so a slow link still checks the stop flag often
CHUNK = 64 * 1024
#: parallel transfers (files and ranges of large files)
CONNECTIONS = 8
#: progress of a partial file is saved to its .part.json after this many new bytes of a range
SAVE_EVERY = 8 * 2**20


def write_all(out, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


class WriteGate:
    """The one door of every disk write of a download: :meth:`Session.abort` takes the same lock to set the stop
    flag, so once it returns no write passes. A failed write raises :class:`DiskError` (never retried: a full disk
    stops the download at once, saying how much space it needs)."""

    def __init__(self, session: Session, folder: Path, needed: Callable[[], int]) -> None:
        self.session, self.folder, self.needed = session, folder, needed

    def write(self, action: Callable[[], object], path: Path | None = None) -> bool:
        """Run a disk write (of ``path``) unless stopped; False when stopped (nothing written)."""
        with self.session.gate:
            if self.session.stop.is_set():
                return False
            try:
                action()
            except OSError as exc:
                self.fail(exc, path)
            return True

    def fail(self, exc: OSError, path: Path | None = None) -> NoReturn:
        """Raise the :class:`DiskError` for ``exc``, a file-system failure at ``path`` (default: the folder)."""
        raise_disk_error(exc, path or self.folder, max(self.needed(), 0))


class RangeFetcher:
    """Fetches the rest of one byte range of one file from the pinned commit into its ``.part``, retrying dropped
    connections and 408/429/5xx answers from the bytes on disk (see :func:`session.out_of_retries`)."""

    def __init__(self, session: Session, gate: WriteGate, repo_id: str, commit: str,
                 count: Callable[[int], None]) -> None:
        self.session, self.gate, self.repo_id, self.commit, self.count = session, gate, repo_id, commit, count

    def url(self, path: str) -> str:
        return f"{endpoint()}/{self.repo_id}/resolve/{self.commit}/{urllib.parse.quote(path)}"

    def fetch(self, job: FileJob, seg: Segment) -> bool:
        """Fetch until ``seg`` is whole (True) or the download is stopped (False); DownloadError when it gives up."""
        name = job.remote.path
        failures = attempts = 0
        while seg.done < seg.length:
            if self.session.stop.is_set():
                return False
            attempts += 1
            offset = seg.start + seg.done
            whole = seg.start == 0 and seg.end == job.remote.size
            extra = {} if whole and offset == 0 else {"Range": f"bytes={offset}-{seg.end - 1}"}
            before = seg.done
            try:
                self._request(job, seg, extra)
                return_reason, wait = None, None
            except TransientError as exc:
                return_reason, wait = str(exc), exc.wait_s
            except (OSError, http.client.HTTPException) as exc:
                if self.session.stop.is_set():
                    return False
                return_reason, wait = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None
            if return_reason is None or self.session.stop.is_set():
                continue  # the loop condition (and the stop flag) decides
            failures = 0 if seg.done > before else failures + 1
            if out_of_retries(failures, attempts):
                raise DownloadError(f"{name}: the transfer failed {attempts} times ({return_reason}); the partial "
                                    f"file is kept, run the download again to resume.")
            logger.info("%s: %s; retrying from byte %d", name, return_reason, seg.start + seg.done)
            if self.session.stop.wait(backoff(max(failures, 1), wait)):
                return False
        return True

    def _request(self, job: FileJob, seg: Segment, extra: dict[str, str]) -> None:
        """One request for the rest of ``seg``; raises TransientError on transient failures."""
        name = job.remote.path
        offset = seg.start + seg.done
        with self.session.open(self.url(name), extra) as (resp, meta):
            raise_for_status(resp, f"{name} of {self.repo_id}")
            commit = meta.get("x-repo-commit")
            if commit and commit != self.commit:
                raise DownloadError(f"The hub served {name} from commit {commit}, not the pinned {self.commit}; "
                                    f"run the download again (a proxy or mirror may be rewriting answers).")
            etag = meta.get("x-linked-etag")
            if job.remote.sha256 and etag and SHA256.match(etag) and etag != job.remote.sha256:
                raise DownloadError(f"The hub served another version of {name} (sha256 {etag[:12]}..., expected "
                                    f"{job.remote.sha256[:12]}...); run the download again.")
            if "Range" in extra:
                if resp.status != 206:
                    raise DownloadError(f"The server behind {endpoint()} ignored a Range request for {name} "
                                        f"(answered {resp.status}); set HF_ENDPOINT to a server that supports "
                                        f"resuming.")
                content_range = resp.getheader("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    raise TransientError(reason=f"unexpected Content-Range {content_range!r}")
            try:
                out = open(job.part, "r+b", buffering=0)
            except FileNotFoundError:
                raise DownloadError(f"{name}.part disappeared during the download; run the download "
                                    f"again.") from None
            except OSError as exc:  # a file-system failure: not retried like a dropped connection
                self.gate.fail(exc, job.part)
            with out:
                out.seek(offset)
                since_save = 0
                while seg.done < seg.length:
                    data = resp.read1(min(CHUNK, seg.length - seg.done))
                    if not data:
                        raise TransientError(reason="connection closed early")
                    if not self.gate.write(lambda: write_all(out, data), job.part):
                        return
                    seg.done += len(data)
                    self.count(len(data))
                    if job.hasher is not None:
                        job.hasher.update(data)
                    since_save += len(data)
                    if since_save >= SAVE_EVERY:
                        since_save = 0
                        self.gate.write(job.save, job.sidecar)


class Download:
    """One run of :func:`download.download` inside the folder lock: the jobs, the worker pool and the shared state;
    a whole file is verified and renamed into place (or deleted and named in :attr:`bad`)."""

    def __init__(self, repo_id: str, folder: Path, commit: str, remote: list[RemoteFile], state: dict,
                 session: Session, connections: int) -> None:
        self.repo_id, self.folder, self.commit, self.session = repo_id, folder, commit, session
        self.state = state
        self.state_lock = threading.Lock()
        self.gate = WriteGate(session, folder, lambda: self.total - self.done_bytes())
        self.fetcher = RangeFetcher(session, self.gate, repo_id, commit, self._count)
        self.total = sum(f.size for f in remote)
        self.base_done = 0  # bytes on disk before this run
        self.moved = 0  # bytes counted by workers since the start (under progress_lock)
        self.progress_lock = threading.Lock()
        self.jobs: list[FileJob] = []
        self.verify: list[RemoteFile] = []  # complete files of unknown origin: hashed once before they count
        for item in remote:
            target = folder / item.path
            if target.is_file() and target.stat().st_size == item.size:
                if state["files"].get(item.path) == item.check or item.check is None:
                    self.base_done += item.size
                    continue
                self.verify.append(item)
                continue
            job = plan(item, target, connections)
            if job.fresh:
                self.gate.write(job.create, job.part)
            self.base_done += job.done()
            self.jobs.append(job)
        self.queue: list[tuple[str, object, object]] = [("verify", item, None) for item in self.verify]
        for job in self.jobs:
            if all(s.done >= s.length for s in job.segments):
                self.queue.append(("finish", job, None))
            else:
                self.queue.extend(("range", job, s) for s in job.segments if s.done < s.length)
        self.queue_lock = threading.Lock()
        self.fatal: list[DownloadError] = []
        self.bad: list[str] = []  # files that failed their check (deleted)

    def done_bytes(self) -> int:
        return self.base_done + self.moved

    def _count(self, n: int) -> None:
        with self.progress_lock:
            self.moved += n

    # ------------------------------------------------------------------------------------------- workers
    def worker(self) -> None:
        while not self.session.stop.is_set():
            with self.queue_lock:
                if not self.queue:
                    return
                kind, item, segment = self.queue.pop(0)
            try:
                self._do(kind, item, segment)
            except DownloadError as exc:
                if not self.session.stop.is_set():
                    self.fatal.append(exc)
                    self.session.abort()
                return

    def _do(self, kind: str, item: object, segment: Segment | None) -> None:
        try:
            if kind == "verify":
                self._verify_existing(item)
            elif kind == "range":
                self._fetch_range(item, segment)
            else:
                self._finish(item)
        except OSError as exc:  # reading a file to verify it; writes fail inside the gate
            self.gate.fail(exc)

    def _fetch_range(self, job: FileJob, seg: Segment) -> None:
        """Fetch ``seg``; the worker that completes a file's last range verifies and places the file."""
        if not self.fetcher.fetch(job, seg):
            return
        with job.lock:
            last = all(s.done >= s.length for s in job.segments) and not job.finishing
            job.finishing = job.finishing or last
        if last:
            self._finish(job)

    def _finish(self, job: FileJob) -> None:
        """Verify a whole ``.part`` and rename it into place, or delete it when it fails."""
        with job.lock:
            if job.ended:
                return
        remote = job.remote
        if not job.part.exists():
            raise DownloadError(f"{remote.path}.part disappeared during the download; run the download again.")
        check = remote.check
        if check is not None:
            digest = job.hasher.hexdigest() if job.hasher is not None else hash_file(job.part, check, remote.size,
                                                                                     self.session.stop)
            if digest is None:
                return
            if digest != check.split(":", 1)[1]:
                kind = check.split(":", 1)[0]
                self._discard(job)
                logger.warning("%s failed its %s check (expected %s, got %s)", remote.path, kind,
                               check.split(":", 1)[1], digest)
                self.bad.append(remote.path)
                return
        if job.target.suffix == ".safetensors":
            try:
                read_safetensors_header(job.part)
            except ModelFolderError:
                self._discard(job)
                self.bad.append(remote.path)
                return

        def place() -> None:
            os.replace(job.part, job.target)
            job.sidecar.unlink(missing_ok=True)
            with job.lock:
                job.ended = True
            self._record(remote)

        self.gate.write(place, job.target)

    def _discard(self, job: FileJob) -> None:
        def delete() -> None:
            job.part.unlink(missing_ok=True)
            job.sidecar.unlink(missing_ok=True)
            with job.lock:
                job.ended = True
            self._count(-job.done())

        self.gate.write(delete, job.part)

    def _verify_existing(self, remote: RemoteFile) -> None:
        """A complete file of unknown origin (placed by hand, or from before pinning): keep it when it matches."""
        target = self.folder / remote.path
        digest = hash_file(target, remote.check, remote.size, self.session.stop)
        if digest is None:
            return
        if digest == remote.check.split(":", 1)[1]:
            self.gate.write(lambda: self._record(remote), self.folder / STATE_FILE)
            self._count(remote.size)
            return
        logger.info("%s differs from %s at the pinned commit; fetching it again", remote.path, self.repo_id)
        job = plan(remote, target, 1)
        if not self.gate.write(job.create, job.part):  # stopped meanwhile: nothing written, nothing queued
            return
        with self.queue_lock:
            self.jobs.append(job)
            self.queue.append(("range", job, job.segments[0]) if remote.size else ("finish", job, None))

    def _record(self, remote: RemoteFile) -> None:
        with self.state_lock:
            self.state["files"][remote.path] = remote.check
            write_json(self.folder / STATE_FILE, self.state)

    # ------------------------------------------------------------------------------------------ control
    def run(self, connections: int, progress: ProgressCallback | None, cancelled: CancelCallback | None,
            poll_s: float) -> None:
        threads = [threading.Thread(target=self.worker, name=f"sa2va-download-{self.folder.name}-{i}", daemon=True)
                   for i in range(max(1, min(connections, len(self.queue))))]
        for thread in threads:
            thread.start()
        try:
            while alive := [t for t in threads if t.is_alive()]:
                alive[0].join(poll_s)
                if progress is not None:
                    progress(min(self.done_bytes(), self.total), self.total)
                if cancelled is not None and cancelled():
                    raise DownloadCancelled(f"Download of {self.repo_id} cancelled; the partial files in "
                                            f"{self.folder} are kept and the next run resumes them.")
        finally:
            self.session.abort()  # no-op for finished workers; stops the rest: nothing is written after this
            deadline = time.monotonic() + 0.5  # a thread still alive after this can no longer write
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            for job in self.jobs:  # the exact progress of every partial file, for the next run
                if job.part.exists():
                    with contextlib.suppress(OSError):
                        job.save()
        if self.fatal:
            raise self.fatal[0]
        if progress is not None:
            progress(min(self.done_bytes(), self.total), self.total)
