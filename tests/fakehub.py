"""A tiny stand-in for the Hugging Face hub on 127.0.0.1, serving model folders for download tests.

Routes: ``GET /api/models/<repo>/tree/<rev>`` (file list with sizes, as the hub's tree API) and
``GET /<repo>/resolve/<rev>/<path>`` (file bytes, honouring ``Range: bytes=N-``). Knobs: ``delay_per_chunk``
slows transfers (to cancel mid-file), ``fail_once_after`` drops the connection after that many bytes of the next
file transfer (a network error), ``requests`` records (path, range header, authorization header)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.delay_per_chunk = 0.0
        self.chunk = 64 * 1024
        self.fail_once_after: int | None = None
        self.requests: list[tuple[str, str | None, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                hub.requests.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "models"] and "tree" in parts:
                    repo = "/".join(parts[2:parts.index("tree")])
                    return self._tree(repo)
                if "resolve" in parts:
                    i = parts.index("resolve")
                    return self._file("/".join(parts[:i]), "/".join(parts[i + 2:]))
                self.send_error(404)

            def _tree(self, repo: str) -> None:
                if repo not in hub.repos:
                    return self.send_error(404)
                entries = [{"type": "file", "path": p.name, "size": p.stat().st_size, "oid": "0"}
                           for p in sorted(hub.repos[repo].iterdir()) if p.is_file()]
                body = json.dumps(entries).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self, repo: str, name: str) -> None:
                path = hub.repos.get(repo, Path("/nonexistent")) / name
                if not path.is_file():
                    return self.send_error(404)
                data = path.read_bytes()
                start = 0
                header = self.headers.get("Range")
                if header and header.startswith("bytes="):
                    start = int(header[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                sent, fail = 0, hub.fail_once_after
                for offset in range(start, len(data), hub.chunk):
                    piece = data[offset:offset + hub.chunk]
                    if fail is not None and sent + len(piece) > fail:
                        hub.fail_once_after = None
                        self.wfile.write(piece[: max(0, fail - sent)])
                        self.wfile.flush()
                        self.connection.close()
                        return
                    try:
                        self.wfile.write(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    sent += len(piece)
                    if hub.delay_per_chunk:
                        time.sleep(hub.delay_per_chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
