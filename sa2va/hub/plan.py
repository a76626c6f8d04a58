"""What to fetch: the commit a download is pinned to, the files of that commit (:class:`RemoteFile`, with the hash
that verifies each), and each missing file's job: ``<file>.part`` created at full size, split into byte ranges
(:class:`Segment`), with the progress of every range in ``<file>.part.json`` so that the next run resumes it."""
from __future__ import annotations

import logging
import math
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .local_folder import hasher, read_json, write_json
from .session import DownloadError, HubStatusError, Session, endpoint

logger = logging.getLogger(__name__)

#: files of at least twice this size are fetched as several ranges at once
SEGMENT_MIN = 8 * 2**20
#: never fetched: remote code, docs, repository media, and pickle or foreign-format weights (never loaded)
SKIPPED_SUFFIXES = (".py", ".md", ".gitattributes", ".png", ".jpg", ".jpeg", ".gif", ".mp4", ".webp", ".bin", ".pt",
                    ".pth", ".ckpt", ".pkl", ".h5", ".msgpack", ".onnx")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_OID = re.compile(r"^[0-9a-f]{40}$")


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



def resolve_commit(repo_id: str, revision: str = "main", session: Session | None = None) -> str:
    """The commit sha ``revision`` of ``repo_id`` points at now (the hub's revision API)."""
    session = session or Session()
    url = f"{endpoint()}/api/models/{repo_id}/revision/{urllib.parse.quote(revision, safe='')}"
    answer = session.get_json(url, f"{repo_id} ({url})")
    sha = answer.get("sha") if isinstance(answer, dict) else None
    if not isinstance(sha, str) or not GIT_OID.match(sha):
        raise DownloadError(f"The hub gave no commit for {repo_id} at {revision} ({url}); check HF_ENDPOINT.")
    return sha


def list_remote(repo_id: str, revision: str = "main", session: Session | None = None) -> list[RemoteFile]:
    """Files (with sizes and hashes) of a hub model repository that a release folder needs, small files first."""
    session = session or Session()
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
                                sha256 if SHA256.match(sha256) else None,
                                oid if not lfs and GIT_OID.match(oid) else None))
    return sorted(files, key=lambda f: (f.path.endswith(".safetensors"), f.path))


def pin(repo_id: str, revision: str, state: dict, session: Session) -> tuple[str, list[RemoteFile]]:
    """The commit to fetch from and its files: the one recorded in the folder when the hub still has it, else the
    one ``revision`` points at now."""
    pinned = state.get("commit") if state.get("repo_id") == repo_id else None
    if isinstance(pinned, str) and GIT_OID.match(pinned):
        try:
            return pinned, list_remote(repo_id, pinned, session)
        except HubStatusError as exc:
            if exc.status != 404:
                raise
            logger.warning("%s no longer has commit %s; starting over on the current %s", repo_id, pinned, revision)
    commit = resolve_commit(repo_id, revision, session)
    return commit, list_remote(repo_id, commit, session)


# ------------------------------------------------------------------------------------------------- jobs
@dataclass
class Segment:
    start: int
    end: int  # exclusive
    done: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class FileJob:
    """One file to fetch into ``<target>.part``, as one or more ranges, with its progress in ``<target>.part.json``."""

    remote: RemoteFile
    target: Path
    segments: list[Segment]
    hasher: object | None = None  # hashing while writing: only for a one-range file started at byte 0 this run
    lock: threading.Lock = field(default_factory=threading.Lock)
    finishing: bool = False  # one worker verifies and places the file
    ended: bool = False  # renamed into place or deleted: no state to save
    fresh: bool = False  # planned afresh, not yet created on disk (see create())

    @property
    def part(self) -> Path:
        return self.target.with_name(self.target.name + ".part")

    @property
    def sidecar(self) -> Path:
        return self.target.with_name(self.target.name + ".part.json")

    def done(self) -> int:
        return sum(s.done for s in self.segments)

    def create(self) -> None:
        """Start a fresh job on disk: delete any stale ``.part``/``.part.json``, create the ``.part`` at full size
        (every range worker opens it ``r+b``) and save the empty progress. A disk write: run it through the gate."""
        for stale in (self.part, self.sidecar):
            stale.unlink(missing_ok=True)
        with open(self.part, "wb") as handle:
            handle.truncate(self.remote.size)
        self.save()
        self.fresh = False

    def save(self) -> None:
        with self.lock:
            if not self.ended:
                write_json(self.sidecar, {"size": self.remote.size, "check": self.remote.check,
                                           "segments": [[s.start, s.end, s.done] for s in self.segments]})


def plan(remote: RemoteFile, target: Path, connections: int) -> FileJob:
    """Resume ``target.part`` when its recorded state belongs to the same remote file, else plan it afresh: then
    ``job.fresh`` is True and nothing is on disk until :meth:`FileJob.create` runs (through the write gate). Reads
    only."""
    job = FileJob(remote, target, [])
    state = read_json(job.sidecar)
    if job.part.is_file() and state.get("size") == remote.size and state.get("check") == remote.check and \
            job.part.stat().st_size == remote.size:
        try:
            job.segments = [Segment(int(a), int(b), min(max(int(c), 0), int(b) - int(a)))
                            for a, b, c in state["segments"]]
        except (KeyError, TypeError, ValueError):
            job.segments = []
        if job.segments and job.segments[0].start == 0 and job.segments[-1].end == remote.size:
            return job
    # no usable state: bytes of unknown origin are never joined to new ones (create() deletes them)
    pieces = 1 if remote.size < 2 * SEGMENT_MIN else min(connections, math.ceil(remote.size / SEGMENT_MIN))
    step = math.ceil(remote.size / pieces) if remote.size else 0
    job.segments = [Segment(i * step, min((i + 1) * step, remote.size)) for i in range(pieces)]
    job.hasher = hasher(remote.check, remote.size) if pieces == 1 else None
    job.fresh = True
    return job
