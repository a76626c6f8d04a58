"""The hub over HTTP: the session (connections through the environment's proxy, redirects followed by hand, the
token sent to the hub's host only, live sockets that Cancel shuts down), the retry policy (which statuses are
transient, exponential backoff or ``Retry-After``, how many attempts) and the download errors every layer raises.

Design notes: docs/architecture.md, "Downloads"."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

from ..errors import Sa2VAError

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 30.0
#: consecutive failed attempts (no byte received) before a range gives up; the count restarts when bytes arrive
RETRIES = 5
#: attempts of one range in all, whatever arrived (a hard bound on the retry loop)
MAX_ATTEMPTS = 50
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
MAX_REDIRECTS = 5
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class DownloadCancelled(Sa2VAError):
    """The download was cancelled; partial files are kept and the next run resumes them."""


class DownloadError(Sa2VAError):
    """The hub could not be reached or answered with an error."""


class HubStatusError(DownloadError):
    """The hub answered an HTTP error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TransientError(Exception):
    """A transient failure of one transfer (dropped connection, 429, 5xx); ``wait_s`` from Retry-After."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


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


def connection(parts: urllib.parse.SplitResult) -> tuple[http.client.HTTPConnection, str]:
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


class Session:
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
            conn, target = connection(parts)
            with self._live_lock:
                self._live.add(conn)
            try:
                conn.connect()
                if self.stop.is_set():  # checked after the socket exists: abort() shuts down any later one
                    raise TransientError(reason="stopped")
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
        raise DownloadError(f"The hub redirected {url} more than {MAX_REDIRECTS} times; check HF_ENDPOINT (now "
                            f"{endpoint()}) and the proxy settings.")

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
                    raise_for_status(resp, what)
                    return json.loads(resp.read().decode("utf-8"))
            except TransientError as exc:
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
            if out_of_retries(failures):
                raise DownloadError(f"Cannot reach the model hub at {endpoint()} ({reason}, {failures} attempts); "
                                    f"check the network or set HF_ENDPOINT to a mirror.")
            if self.stop.wait(backoff(failures, wait)):
                raise DownloadCancelled(f"Download cancelled while asking the hub for {what}.")



def backoff(failures: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(max(retry_after, 0.0), 2 * MAX_BACKOFF_S)
    return min(BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S)


def retry_after(resp: http.client.HTTPResponse) -> float | None:
    value = resp.getheader("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare; use the normal backoff
        return None


def raise_for_status(resp: http.client.HTTPResponse, what: str) -> None:
    """Retry on 408/429/5xx; a clear permanent error on any other error status."""
    if resp.status < 400:
        return
    resp.read()
    if resp.status in RETRY_STATUSES:
        raise TransientError(reason=f"HTTP {resp.status}", wait_s=retry_after(resp))
    if resp.status in (401, 403):
        raise HubStatusError(f"The hub answered {resp.status} for {what}: the repository needs a login or access "
                             f"was not granted; accept its terms on the hub ({endpoint()}) and set HF_TOKEN (or run "
                             f"`hf auth login`).", resp.status)
    raise HubStatusError(f"The hub answered {resp.status} for {what}; check the model name and the endpoint in use "
                         f"({endpoint()}; HF_ENDPOINT sets it), or set HF_TOKEN if the repository needs a login.",
                         resp.status)


def out_of_retries(failures: int, attempts: int = 0) -> bool:
    """True when a transfer (or an API call) that failed ``failures`` times in a row, ``attempts`` times in all,
    must give up."""
    return failures > RETRIES or attempts >= MAX_ATTEMPTS
