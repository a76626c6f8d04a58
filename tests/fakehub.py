"""A stand-in for the Hugging Face hub on 127.0.0.1 that behaves like the real one, for download tests and benches.

Two servers, so that the storage host differs from the hub's host (another port):

- the hub: ``GET /api/models/<repo>/revision/<rev>`` (``{"sha": commit}``), ``GET /api/models/<repo>/tree/<rev>``
  (files with sizes, git blob ``oid`` and, for ``*.safetensors``, ``lfs: {oid: sha256, size}``) and
  ``GET /<repo>/resolve/<rev>/<path>``: small files answered by the hub itself, weight files by a 302 to the CDN
  carrying ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and ``X-Repo-Commit``, as the real hub does;
- the CDN: ``GET /cdn/<commit>/<path>`` honouring ``Range: bytes=a-b`` and ``bytes=a-``.

``<rev>`` is ``main`` or a commit sha; :meth:`FakeHub.publish` adds a new commit of a repository (old ones stay
reachable by sha unless ``forget=True``, as after a force-push).

Knobs (all bounded): ``delay_per_chunk`` (seconds per 64 KiB chunk, per connection: a throttled link),
``fail_once_after`` (drop the connection of the next transfer longer than that after that many bytes),
``fail_statuses`` (statuses, e.g. ``[503, 503]``, answered to the next CDN requests, with ``retry_after``),
``hub_fail_statuses`` (the same for the next requests to the hub's own host: the revision and tree API, small
files), ``corrupt`` (file names whose bytes the CDN flips once: corrupted in transit, same size), ``stall`` (a
transfer sends its headers then nothing for that many seconds), ``api_stall`` (the API answers after that many
seconds), ``after_listing`` (called once after a tree listing is made: e.g. a push between listing and transfer),
``linked_etag`` / ``repo_commit`` (name -> value sent as that file's ``X-Linked-Etag`` / ``X-Repo-Commit`` instead of
the true one: a proxy or mirror serving another version).
``requests`` records ``(path, range, authorization, server)`` with server ``"hub"`` or ``"cdn"``; ``cdn_bytes``
counts the bytes the CDN sent; ``max_active`` the most transfers at once."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Commit:
    def __init__(self, folder: Path, parent: str = "") -> None:
        self.files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        digest = hashlib.sha1(parent.encode())
        for name, data in self.files.items():
            digest.update(name.encode() + hashlib.sha256(data).digest())
        self.sha = digest.hexdigest()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a dropped connection is the point of some tests
        pass


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.commits: dict[str, dict[str, _Commit]] = {}
        self.heads: dict[str, str] = {}
        for repo, folder in repos.items():
            self.publish(repo, folder)
        self.delay_per_chunk = 0.0
        self.chunk = 64 * 1024
        self.fail_once_after: int | None = None
        self.fail_statuses: list[int] = []
        self.hub_fail_statuses: list[int] = []
        self.after_listing = None
        self.linked_etag: dict[str, str] = {}
        self.repo_commit: dict[str, str] = {}
        self.retry_after: float | None = 0
        self.corrupt: set[str] = set()
        self.stall = 0.0
        self.api_stall = 0.0
        self.cdn_bytes = 0
        self.active = self.max_active = 0  # concurrent transfers now / at most
        self.requests: list[tuple[str, str | None, str | None, str]] = []
        self._lock = threading.Lock()
        self.hub = self._server("hub")
        self.cdn = self._server("cdn")

    # ------------------------------------------------------------------------------------------- repository
    def publish(self, repo: str, folder: Path, forget: bool = False) -> str:
        """Make ``folder``'s files the new head commit of ``repo``; return its sha."""
        commit = _Commit(folder, self.heads.get(repo, ""))
        if forget:
            self.commits[repo] = {}
        self.commits.setdefault(repo, {})[commit.sha] = commit
        self.heads[repo] = commit.sha
        return commit.sha

    def _commit(self, repo: str, rev: str) -> _Commit | None:
        commits = self.commits.get(repo, {})
        return commits.get(self.heads.get(repo, "") if rev == "main" else rev)

    # ----------------------------------------------------------------------------------------------- servers
    def _server(self, role: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                with hub._lock:
                    hub.requests.append((self.path, self.headers.get("Range"), self.headers.get("Authorization"),
                                         role))
                parts = self.path.split("?")[0].strip("/").split("/")
                if role == "cdn":
                    return self._cdn(parts)
                with hub._lock:
                    status = hub.hub_fail_statuses.pop(0) if hub.hub_fail_statuses else None
                if status is not None:
                    return self._empty(status, {} if hub.retry_after is None else {"Retry-After": str(hub.retry_after)})
                if parts[:2] == ["api", "models"] and "tree" in parts:
                    i = parts.index("tree")
                    return self._tree("/".join(parts[2:i]), parts[i + 1])
                if parts[:2] == ["api", "models"] and "revision" in parts:
                    i = parts.index("revision")
                    commit = hub._commit("/".join(parts[2:i]), parts[i + 1])
                    return self._json({"sha": commit.sha} if commit else None)
                if "resolve" in parts:
                    i = parts.index("resolve")
                    return self._resolve("/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2:]))
                self._empty(404)

            def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, value) -> None:
                if hub.api_stall:
                    time.sleep(hub.api_stall)
                if value is None:
                    return self._empty(404)
                body = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _tree(self, repo: str, rev: str) -> None:
                commit = hub._commit(repo, rev)
                if commit is None:
                    return self._empty(404)
                entries = []
                for name, data in commit.files.items():
                    entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_oid(data)}
                    if name.endswith(".safetensors"):
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                        "pointerSize": 134}
                    entries.append(entry)
                hook, hub.after_listing = hub.after_listing, None
                if hook is not None:
                    hook()
                self._json(entries)

            def _resolve(self, repo: str, rev: str, name: str) -> None:
                commit = hub._commit(repo, rev)
                if commit is None or name not in commit.files:
                    return self._empty(404)
                data = commit.files[name]
                if name.endswith(".safetensors"):  # weight files live on the storage host
                    host, port = hub.cdn.server_address[:2]
                    return self._empty(302, {
                        "Location": f"http://{host}:{port}/cdn/{repo}/{commit.sha}/{name}?X-Amz-Signature=x",
                        "X-Linked-Etag": f'"{hub.linked_etag.get(name, hashlib.sha256(data).hexdigest())}"',
                        "X-Linked-Size": str(len(data)), "X-Repo-Commit": hub.repo_commit.get(name, commit.sha),
                        "ETag": f'"{git_blob_oid(data)}"'})
                self._send(data, name, {"X-Repo-Commit": hub.repo_commit.get(name, commit.sha),
                                        "ETag": f'"{git_blob_oid(data)}"'})

            def _cdn(self, parts: list[str]) -> None:
                # /cdn/<owner>/<repo>/<commit>/<name>
                repo, sha, name = "/".join(parts[1:-2]), parts[-2], parts[-1]
                commit = hub.commits.get(repo, {}).get(sha)
                if commit is None or name not in commit.files:
                    return self._empty(404)
                with hub._lock:
                    status = hub.fail_statuses.pop(0) if hub.fail_statuses else None
                if status is not None:
                    headers = {} if hub.retry_after is None else {"Retry-After": str(hub.retry_after)}
                    return self._empty(status, headers)
                self._send(commit.files[name], name, {})

            def _send(self, data: bytes, name: str, headers: dict[str, str]) -> None:
                start, end = 0, len(data)
                header = self.headers.get("Range")
                if header and header.startswith("bytes="):
                    first, _, last = header[6:].partition("-")
                    start, end = int(first), (int(last) + 1 if last else len(data))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                else:
                    self.send_response(200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                with hub._lock:
                    corrupt = name in hub.corrupt and end - start > 100
                    hub.corrupt.discard(name)
                    fail = hub.fail_once_after if (hub.fail_once_after or 0) < end - start else None
                    if fail is not None:  # the first transfer long enough to be cut takes the knob
                        hub.fail_once_after = None
                if corrupt:  # one flipped byte in the middle of this transfer
                    middle = (start + end) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
                if hub.stall:
                    time.sleep(hub.stall)
                with hub._lock:
                    hub.active += 1
                    hub.max_active = max(hub.max_active, hub.active)
                ended = []

                def finished() -> None:  # once, before the last byte goes out: the client may reuse the
                    if not ended:        # connection the moment it has the whole body
                        ended.append(True)
                        with hub._lock:
                            hub.active -= 1

                try:
                    self._stream(data, start, end, fail, finished)
                finally:
                    finished()

            def _stream(self, data: bytes, start: int, end: int, fail: int | None, finished) -> None:
                sent = 0
                for offset in range(start, end, hub.chunk):
                    piece = data[offset:min(offset + hub.chunk, end)]
                    if offset + hub.chunk >= end:
                        finished()
                    if fail is not None and sent + len(piece) > fail:
                        self.wfile.write(piece[: max(0, fail - sent)])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    try:
                        self.wfile.write(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    sent += len(piece)
                    with hub._lock:
                        hub.cdn_bytes += len(piece) if role == "cdn" else 0
                    if hub.delay_per_chunk:
                        time.sleep(hub.delay_per_chunk)

        server = _QuietServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        # a short poll: shutdown() in __exit__ waits up to one poll interval per server (0.5 s by default)
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
                         for s in (self.hub, self.cdn)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()
