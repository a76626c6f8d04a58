"""Hub -> ``<models>/sa2va/<name>/`` as plain files: pinned, verified, private, resumable, parallel, cancellable.

How a download runs (design notes in docs/architecture.md, "Downloads"):

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
  honoured), resuming from the bytes on disk; 401/403/404 are not retried and say what to do.
- **Resumable and safe on disk.** Bytes go to ``<file>.part`` (progress of each range in ``<file>.part.json``) and
  a file is renamed to its final name only when whole and verified: a folder never holds a bad file under its final
  name. A lock beside the folder keeps two downloads of one model apart.
- **Cancellable.** ``cancelled()`` is polled every ``poll_s``; on Cancel (or Ctrl-C) the sockets are shut down, no
  worker writes after the stop flag is set (writes pass through one gate), and the call returns within a second.
- **Parallel.** Up to ``connections`` (default 8) transfers at once: several files, and large files split into
  ranges.

The repository's ``.py`` files are never fetched (no remote code runs). ``HF_ENDPOINT`` selects a mirror; with
``HF_HUB_OFFLINE=1`` nothing is fetched and the error says which files to place by hand. A complete folder is used
without any network access.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import INDEX_FILE, read_safetensors_header
from ..errors import ModelFolderError, Sa2VAError

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
#: bytes per socket read: small, so a slow link still checks the stop flag often
CHUNK = 64 * 1024
TIMEOUT_S = 30.0
#: parallel transfers (files and ranges of large files)
CONNECTIONS = 8
#: files of at least twice this size are fetched as several ranges at once
SEGMENT_MIN = 8 * 2**20
#: consecutive failed attempts (no byte received) before a range gives up; the count restarts when bytes arrive
RETRIES = 5
#: attempts of one range in all, whatever arrived (a hard bound on the retry loop)
MAX_ATTEMPTS = 50
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
MAX_REDIRECTS = 5
#: progress of a partial file is saved to its .part.json after this many new bytes of a range
SAVE_EVERY = 8 * 2**20
STATE_FILE = ".sa2va-download.json"
#: files every release folder needs besides the shards listed in the index (the Qwen releases also ship
#: preprocessor_config.json: see :func:`required_files`)
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def required_files(family: str, tokenizer: str = "tokenizer.json") -> tuple[str, ...]:
    """The non-weight files a release of ``family`` needs: InternVL3 releases and Sa2VA-LLaVA (whose 336-px squash
    is not LlavaProcessor's) have no processor files; the InternLM2 releases (Sa2VA-8B/26B) ship
    ``tokenizer="tokenizer.model"`` (SentencePiece) instead of ``tokenizer.json``."""
    files = tuple(tokenizer if name == "tokenizer.json" else name for name in REQUIRED_FILES)
    return files if family in ("internvl", "llava") else files + ("preprocessor_config.json",)


#: never fetched: remote code, docs, repository media, and pickle or foreign-format weights (never loaded)
SKIPPED_SUFFIXES = (".py", ".md", ".gitattributes", ".png", ".jpg", ".jpeg", ".gif", ".mp4", ".webp", ".bin", ".pt",
                    ".pth", ".ckpt", ".pkl", ".h5", ".msgpack", ".onnx")
LOCK_SUFFIX = ".sa2va-download.lock"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_OID = re.compile(r"^[0-9a-f]{40}$")
_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class DownloadCancelled(Sa2VAError):
    """The download was cancelled; partial files are kept and the next run resumes them."""


class DownloadError(Sa2VAError):
    """The hub could not be reached or answered with an error."""


class HubStatusError(DownloadError):
    """The hub answered an HTTP error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Retry(Exception):
    """A transient failure of one transfer (dropped connection, 429, 5xx); ``wait_s`` from Retry-After."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository: path inside the repo, size in bytes, and what verifies it.

    sha256: the LFS sha256 of a weight file (None for small files); oid: the git blob id (sha1 of
    ``b"blob <size>\\0" + bytes``) of a small file, None when the hub did not give one."""

    path: str
    size: int
    sha256: str | None = None
    oid: str | None = None

    @property
    def check(self) -> str | None:
        """What a complete copy must hash to, as ``sha256:<hex>`` or ``git:<hex>``; None: nothing to check."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"git:{self.oid}" if self.oid else None


ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)
CancelCallback = Callable[[], bool]


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def token() -> str | None:
    """The hub token: ``HF_TOKEN``, else the one ``hf auth login`` saved (``$HF_HOME/token`` or
    ``HF_TOKEN_PATH``), looked up by huggingface_hub itself; None when there is none."""
    from huggingface_hub import get_token

    return get_token()


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


# ----------------------------------------------------------------------------------------------------- HTTP
def _connection(parts: urllib.parse.SplitResult) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``parts`` (through the environment's proxy, as urllib would) and the request target."""
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    https = parts.scheme == "https"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if https:
            conn = http.client.HTTPSConnection(proxy_parts.hostname, proxy_parts.port or 8080, timeout=TIMEOUT_S)
            conn.set_tunnel(parts.hostname, parts.port or 443)
            return conn, target
        conn = http.client.HTTPConnection(proxy_parts.hostname, proxy_parts.port or 8080, timeout=TIMEOUT_S)
        return conn, urllib.parse.urlunsplit(parts)
    cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=TIMEOUT_S), target


class _Session:
    """Open requests with the token on the hub's host only, following redirects by hand; track live connections
    so that :meth:`abort` can shut them down; the write gate that no write passes once stopped."""

    def __init__(self) -> None:
        hub = urllib.parse.urlsplit(endpoint())
        self.hub_origin = (hub.scheme, hub.netloc)
        self.token = token()
        self.stop = threading.Event()
        self.gate = threading.Lock()
        self._live: set[http.client.HTTPConnection] = set()
        self._live_lock = threading.Lock()

    def headers_for(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": "ComfyUI-Sa2VA", "Accept-Encoding": "identity"}
        parts = urllib.parse.urlsplit(url)
        if self.token and (parts.scheme, parts.netloc) == self.hub_origin:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @contextlib.contextmanager
    def open(self, url: str, extra: dict[str, str] | None = None
             ) -> Iterator[tuple[http.client.HTTPResponse, dict[str, str]]]:
        """GET ``url`` following up to MAX_REDIRECTS redirects; yields the final response and the hub's
        ``X-Linked-*``/``X-Repo-Commit`` headers seen on the way (lower-case names)."""
        meta: dict[str, str] = {}
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            conn, target = _connection(parts)
            with self._live_lock:
                self._live.add(conn)
            try:
                conn.connect()
                if self.stop.is_set():  # checked after the socket exists: abort() shuts down any later one
                    raise _Retry(reason="stopped")
                conn.request("GET", target, headers={**self.headers_for(url), **(extra or {})})
                resp = conn.getresponse()
                for name in ("x-linked-etag", "x-linked-size", "x-repo-commit"):
                    value = resp.getheader(name)
                    if value is not None:
                        meta.setdefault(name, value.strip().strip('"'))
                if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                    url = urllib.parse.urljoin(url, resp.getheader("Location"))
                    resp.read()
                    continue
                yield resp, meta
                return
            finally:
                with self._live_lock:
                    self._live.discard(conn)
                conn.close()
        raise DownloadError(f"The hub redirected {url} more than {MAX_REDIRECTS} times; check HF_ENDPOINT.")

    def abort(self) -> None:
        """Stop: after this returns no write passes the gate, and every live socket is shut down."""
        with self.gate:
            self.stop.set()
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def get_json(self, url: str, what: str) -> object:
        """A JSON answer of the hub API, retried like file transfers on 429/5xx and dropped connections."""
        failures = 0
        while True:
            try:
                with self.open(url) as (resp, _):
                    _raise_for_status(resp, what)
                    return json.loads(resp.read().decode("utf-8"))
            except _Retry as exc:
                reason, wait = str(exc), exc.wait_s
            except (OSError, http.client.HTTPException) as exc:
                if failures == 0 and isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
                    raise DownloadError(f"Cannot reach the model hub at {endpoint()} ({exc}); check the network "
                                        f"or set HF_ENDPOINT to a mirror.") from exc
                reason, wait = f"{type(exc).__name__}: {exc}", None
            except ValueError as exc:
                raise DownloadError(f"The hub sent an unreadable answer for {what} ({url}: {exc}); check "
                                    f"HF_ENDPOINT.") from exc
            failures += 1
            if failures > RETRIES:
                raise DownloadError(f"Cannot reach the model hub at {endpoint()} ({reason}, {failures} attempts); "
                                    f"check the network or set HF_ENDPOINT to a mirror.")
            if self.stop.wait(_backoff(failures, wait)):
                raise DownloadCancelled(f"Download cancelled while asking the hub for {what}.")


def _write_all(out, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def _backoff(failures: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(max(retry_after, 0.0), 2 * MAX_BACKOFF_S)
    return min(BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S)


def _retry_after(resp: http.client.HTTPResponse) -> float | None:
    value = resp.getheader("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare; use the normal backoff
        return None


def _raise_for_status(resp: http.client.HTTPResponse, what: str) -> None:
    """Retry on 408/429/5xx; a clear permanent error on any other error status."""
    if resp.status < 400:
        return
    resp.read()
    if resp.status in _RETRY_STATUSES:
        raise _Retry(reason=f"HTTP {resp.status}", wait_s=_retry_after(resp))
    if resp.status in (401, 403):
        raise HubStatusError(f"The hub answered {resp.status} for {what}: the repository needs a login or access "
                             f"was not granted; accept its terms on the hub and set HF_TOKEN (or run "
                             f"`hf auth login`).", resp.status)
    raise HubStatusError(f"The hub answered {resp.status} for {what}; check the model name (and HF_ENDPOINT), or "
                         f"set HF_TOKEN if the repository needs a login.", resp.status)


# ------------------------------------------------------------------------------------------------ hub API
def resolve_commit(repo_id: str, revision: str = "main", session: _Session | None = None) -> str:
    """The commit sha ``revision`` of ``repo_id`` points at now (the hub's revision API)."""
    session = session or _Session()
    url = f"{endpoint()}/api/models/{repo_id}/revision/{urllib.parse.quote(revision, safe='')}"
    answer = session.get_json(url, f"{repo_id} ({url})")
    sha = answer.get("sha") if isinstance(answer, dict) else None
    if not isinstance(sha, str) or not _GIT_OID.match(sha):
        raise DownloadError(f"The hub gave no commit for {repo_id} at {revision} ({url}); check HF_ENDPOINT.")
    return sha


def list_remote(repo_id: str, revision: str = "main", session: _Session | None = None) -> list[RemoteFile]:
    """Files (with sizes and hashes) of a hub model repository that a release folder needs, small files first."""
    session = session or _Session()
    url = f"{endpoint()}/api/models/{repo_id}/tree/{urllib.parse.quote(revision, safe='')}?recursive=true"
    entries = session.get_json(url, f"{repo_id} ({url})")
    if not isinstance(entries, list):
        raise DownloadError(f"The hub sent an unreadable answer for {repo_id} ({url}: not a file list); check "
                            f"HF_ENDPOINT.")
    files = []
    for entry in entries:
        if entry.get("type") != "file" or entry["path"].endswith(SKIPPED_SUFFIXES) or "/" in entry["path"]:
            continue
        lfs = entry.get("lfs") or {}
        sha256 = str(lfs.get("oid", lfs.get("sha256", ""))).removeprefix("sha256:")
        oid = str(entry.get("oid", ""))
        files.append(RemoteFile(entry["path"], int(lfs.get("size", entry.get("size", 0))),
                                sha256 if _SHA256.match(sha256) else None,
                                oid if not lfs and _GIT_OID.match(oid) else None))
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


# -------------------------------------------------------------------------------------- on-disk state
def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pinned_commit(folder: str | os.PathLike) -> str | None:
    """The commit a download into ``folder`` is pinned to (recorded in ``.sa2va-download.json``), or None."""
    return _read_json(Path(folder) / STATE_FILE).get("commit")


def _git_blob_hasher(size: int):
    hasher = hashlib.sha1()
    hasher.update(b"blob %d\0" % size)
    return hasher


def _hasher(check: str | None, size: int):
    if check is None:
        return None
    return hashlib.sha256() if check.startswith("sha256:") else _git_blob_hasher(size)


@dataclass
class _Segment:
    start: int
    end: int  # exclusive
    done: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class _FileJob:
    """One file to fetch into ``<target>.part``, as one or more ranges, with its progress in ``<target>.part.json``."""

    remote: RemoteFile
    target: Path
    segments: list[_Segment]
    hasher: object | None = None  # hashing while writing: only for a one-range file started at byte 0 this run
    lock: threading.Lock = field(default_factory=threading.Lock)
    finishing: bool = False  # one worker verifies and places the file
    ended: bool = False  # renamed into place or deleted: no state to save

    @property
    def part(self) -> Path:
        return self.target.with_name(self.target.name + ".part")

    @property
    def sidecar(self) -> Path:
        return self.target.with_name(self.target.name + ".part.json")

    def done(self) -> int:
        return sum(s.done for s in self.segments)

    def save(self) -> None:
        with self.lock:
            if not self.ended:
                _write_json(self.sidecar, {"size": self.remote.size, "check": self.remote.check,
                                           "segments": [[s.start, s.end, s.done] for s in self.segments]})


def _plan(remote: RemoteFile, target: Path, connections: int) -> _FileJob:
    """Resume ``target.part`` when its recorded state belongs to the same remote file, else start it afresh."""
    job = _FileJob(remote, target, [])
    state = _read_json(job.sidecar)
    if job.part.is_file() and state.get("size") == remote.size and state.get("check") == remote.check and \
            job.part.stat().st_size == remote.size:
        try:
            job.segments = [_Segment(int(a), int(b), min(max(int(c), 0), int(b) - int(a)))
                            for a, b, c in state["segments"]]
        except (KeyError, TypeError, ValueError):
            job.segments = []
        if job.segments and job.segments[0].start == 0 and job.segments[-1].end == remote.size:
            return job
    # no usable state: bytes of unknown origin are never joined to new ones
    for stale in (job.part, job.sidecar):
        stale.unlink(missing_ok=True)
    pieces = 1 if remote.size < 2 * SEGMENT_MIN else min(connections, math.ceil(remote.size / SEGMENT_MIN))
    step = math.ceil(remote.size / pieces) if remote.size else 0
    job.segments = [_Segment(i * step, min((i + 1) * step, remote.size)) for i in range(pieces)]
    job.hasher = _hasher(remote.check, remote.size) if pieces == 1 else None
    with open(job.part, "wb") as handle:  # every range worker opens it "r+b": created once, at full size
        handle.truncate(remote.size)
    job.save()
    return job


class _Download:
    """One run of :func:`download` inside the folder lock: the jobs, the worker pool and the shared state."""

    def __init__(self, repo_id: str, folder: Path, commit: str, remote: list[RemoteFile], state: dict,
                 session: _Session, connections: int) -> None:
        self.repo_id, self.folder, self.commit, self.session = repo_id, folder, commit, session
        self.state = state
        self.state_lock = threading.Lock()
        self.total = sum(f.size for f in remote)
        self.jobs: list[_FileJob] = []
        self.verify: list[RemoteFile] = []  # complete files of unknown origin: hashed once before they count
        done = 0
        for item in remote:
            target = folder / item.path
            if target.is_file() and target.stat().st_size == item.size:
                if state["files"].get(item.path) == item.check or item.check is None:
                    done += item.size
                    continue
                self.verify.append(item)
                continue
            job = _plan(item, target, connections)
            done += job.done()
            self.jobs.append(job)
        self.base_done = done
        self.moved = 0  # bytes counted by workers since the start (under progress_lock)
        self.progress_lock = threading.Lock()
        self.queue: list[tuple[str, object, object]] = [("verify", item, None) for item in self.verify]
        for job in self.jobs:
            if all(s.done >= s.length for s in job.segments):
                self.queue.append(("finish", job, None))
            else:
                self.queue.extend(("range", job, s) for s in job.segments if s.done < s.length)
        self.queue_lock = threading.Lock()
        self.fatal: list[BaseException] = []
        self.bad: list[str] = []  # files that failed their check (deleted)

    def done_bytes(self) -> int:
        return self.base_done + self.moved

    def _count(self, n: int) -> None:
        with self.progress_lock:
            self.moved += n

    def url(self, path: str) -> str:
        return f"{endpoint()}/{self.repo_id}/resolve/{self.commit}/{urllib.parse.quote(path)}"

    # ------------------------------------------------------------------------------------------- workers
    def worker(self) -> None:
        while not self.session.stop.is_set():
            with self.queue_lock:
                if not self.queue:
                    return
                kind, item, segment = self.queue.pop(0)
            try:
                if kind == "verify":
                    self._verify_existing(item)
                elif kind == "range":
                    self._fetch_range(item, segment)
                else:
                    self._finish(item)
            except (DownloadError, OSError) as exc:
                if not self.session.stop.is_set():
                    self.fatal.append(exc)
                    self.session.abort()
                return

    def _fetch_range(self, job: _FileJob, seg: _Segment) -> None:
        name = job.remote.path
        failures = attempts = 0
        while seg.done < seg.length:
            if self.session.stop.is_set():
                return
            attempts += 1
            offset = seg.start + seg.done
            whole = seg.start == 0 and seg.end == job.remote.size
            extra = {} if whole and offset == 0 else {"Range": f"bytes={offset}-{seg.end - 1}"}
            before = seg.done
            try:
                self._transfer(job, seg, extra)
                return_reason, wait = None, None
            except _Retry as exc:
                return_reason, wait = str(exc), exc.wait_s
            except (OSError, http.client.HTTPException) as exc:
                if self.session.stop.is_set():
                    return
                return_reason, wait = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None
            if return_reason is None or self.session.stop.is_set():
                continue  # the loop condition (and the stop flag) decides
            failures = 0 if seg.done > before else failures + 1
            if failures > RETRIES or attempts >= MAX_ATTEMPTS:
                raise DownloadError(f"{name}: the transfer failed {attempts} times ({return_reason}); the partial "
                                    f"file is kept, run the download again to resume.")
            logger.info("%s: %s; retrying from byte %d", name, return_reason, seg.start + seg.done)
            if self.session.stop.wait(_backoff(max(failures, 1), wait)):
                return
        with job.lock:
            last = all(s.done >= s.length for s in job.segments) and not job.finishing
            job.finishing = job.finishing or last
        if last:
            self._finish(job)

    def _transfer(self, job: _FileJob, seg: _Segment, extra: dict[str, str]) -> None:
        """One request for the rest of ``seg``; raises _Retry on transient failures."""
        name = job.remote.path
        offset = seg.start + seg.done
        with self.session.open(self.url(name), extra) as (resp, meta):
            _raise_for_status(resp, f"{name} of {self.repo_id}")
            commit = meta.get("x-repo-commit")
            if commit and commit != self.commit:
                raise DownloadError(f"The hub served {name} from commit {commit}, not the pinned {self.commit}; "
                                    f"run the download again (a proxy or mirror may be rewriting answers).")
            etag = meta.get("x-linked-etag")
            if job.remote.sha256 and etag and _SHA256.match(etag) and etag != job.remote.sha256:
                raise DownloadError(f"The hub served another version of {name} (sha256 {etag[:12]}..., expected "
                                    f"{job.remote.sha256[:12]}...); run the download again.")
            if "Range" in extra:
                if resp.status != 206:
                    raise DownloadError(f"The server behind {endpoint()} ignored a Range request for {name} "
                                        f"(answered {resp.status}); set HF_ENDPOINT to a server that supports "
                                        f"resuming.")
                content_range = resp.getheader("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    raise _Retry(reason=f"unexpected Content-Range {content_range!r}")
            with open(job.part, "r+b", buffering=0) as out:
                out.seek(offset)
                since_save = 0
                while seg.done < seg.length:
                    data = resp.read1(min(CHUNK, seg.length - seg.done))
                    if not data:
                        raise _Retry(reason="connection closed early")
                    if not self._gated(lambda: _write_all(out, data)):
                        return
                    seg.done += len(data)
                    self._count(len(data))
                    if job.hasher is not None:
                        job.hasher.update(data)
                    since_save += len(data)
                    if since_save >= SAVE_EVERY:
                        since_save = 0
                        self._gated(job.save)

    def _gated(self, action: Callable[[], object]) -> bool:
        """Run a disk write unless stopped; False when stopped (nothing written)."""
        with self.session.gate:
            if self.session.stop.is_set():
                return False
            try:
                action()
            except OSError as exc:
                raise DownloadError(f"Download of {self.repo_id} into {self.folder} failed ({exc}); run the loader "
                                    f"again to resume.") from exc
            return True

    def _hash_file(self, path: Path, check: str, size: int) -> str | None:
        """The hex digest of ``path`` for ``check``'s kind; None when stopped meanwhile."""
        hasher = _hasher(check, size)
        with open(path, "rb") as handle:
            while block := handle.read(4 * 2**20):
                if self.session.stop.is_set():
                    return None
                hasher.update(block)
        return hasher.hexdigest()

    def _finish(self, job: _FileJob) -> None:
        """Verify a whole ``.part`` and rename it into place, or delete it when it fails."""
        with job.lock:
            if job.ended:
                return
        remote = job.remote
        if not job.part.exists():
            raise DownloadError(f"{remote.path}.part disappeared during the download; run the download again.")
        check = remote.check
        if check is not None:
            digest = job.hasher.hexdigest() if job.hasher is not None else self._hash_file(job.part, check,
                                                                                            remote.size)
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

        self._gated(place)

    def _discard(self, job: _FileJob) -> None:
        def delete() -> None:
            job.part.unlink(missing_ok=True)
            job.sidecar.unlink(missing_ok=True)
            with job.lock:
                job.ended = True
            self._count(-job.done())

        self._gated(delete)

    def _verify_existing(self, remote: RemoteFile) -> None:
        """A complete file of unknown origin (placed by hand, or from before pinning): keep it when it matches."""
        target = self.folder / remote.path
        digest = self._hash_file(target, remote.check, remote.size)
        if digest is None:
            return
        if digest == remote.check.split(":", 1)[1]:
            self._gated(lambda: self._record(remote))
            self._count(remote.size)
            return
        logger.info("%s differs from %s at the pinned commit; fetching it again", remote.path, self.repo_id)
        job = _plan(remote, target, 1)
        with self.queue_lock:
            self.jobs.append(job)
            self.queue.append(("range", job, job.segments[0]) if remote.size else ("finish", job, None))

    def _record(self, remote: RemoteFile) -> None:
        with self.state_lock:
            self.state["files"][remote.path] = remote.check
            _write_json(self.folder / STATE_FILE, self.state)

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
            exc = self.fatal[0]
            if isinstance(exc, DownloadError):
                raise exc
            raise DownloadError(f"Download of {self.repo_id} into {self.folder} failed ({exc}); run the loader "
                                f"again to resume.") from exc
        if progress is not None:
            progress(min(self.done_bytes(), self.total), self.total)


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
    session = _Session()
    with folder_lock(folder, cancelled):
        if is_complete(folder, required):
            return folder
        state = _read_json(folder / STATE_FILE)
        try:
            commit, remote = _in_thread(lambda: _pin(repo_id, revision, state, session), session, cancelled,
                                        poll_s, repo_id, folder)
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
                _write_json(folder / STATE_FILE, state)
            state.setdefault("files", {})
            run = _Download(repo_id, folder, commit, remote, state, session, connections)
        except OSError as exc:  # a read-only folder, a full disk
            raise DownloadError(f"Download of {repo_id} into {folder} failed ({exc}); run the loader again to "
                                f"resume.") from exc
        run.run(connections, progress, cancelled, poll_s)
        if run.bad:
            raise DownloadError(f"{', '.join(run.bad)} of {repo_id} failed the integrity check (the bytes received "
                                f"differ from the hub's sha256) and were deleted; run the download again to fetch "
                                f"them anew.")
    left = missing_files(folder, required)
    if left:
        raise DownloadError(f"{folder} is still incomplete after downloading {repo_id}: {', '.join(left)}.")
    return folder


def _in_thread(fn: Callable[[], object], session: _Session, cancelled: CancelCallback | None, poll_s: float,
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


def _pin(repo_id: str, revision: str, state: dict, session: _Session) -> tuple[str, list[RemoteFile]]:
    """The commit to fetch from and its files: the one recorded in the folder when the hub still has it, else the
    one ``revision`` points at now."""
    pinned = state.get("commit") if state.get("repo_id") == repo_id else None
    if isinstance(pinned, str) and _GIT_OID.match(pinned):
        try:
            return pinned, list_remote(repo_id, pinned, session)
        except HubStatusError as exc:
            if exc.status != 404:
                raise
            logger.warning("%s no longer has commit %s; starting over on the current %s", repo_id, pinned, revision)
    commit = resolve_commit(repo_id, revision, session)
    return commit, list_remote(repo_id, commit, session)
