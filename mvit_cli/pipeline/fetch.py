"""Fetch one image from an http(s) URL: bounded in size and time, cancellable, and failing with one line.

Why not `urllib.request.urlopen`: it opens `file:` URLs (a redirect could make mvit read a local file),
its timeout applies per socket call with no overall bound and no way to interrupt a blocked read, it
buffers whatever the server sends unless the caller counts, and its errors range from `URLError` to bare
`socket.timeout` and `http.client` exceptions. A user's dead or hostile URL must cost one error record, not
a traceback, a hung Ctrl-C or the machine's memory. So this module drives `http.client` over a socket it
connects itself:

- Schemes: only http and https, for the URL given and for every redirect; anything else (file:, ftp:,
  data:, javascript:) is a `FetchError`. Nothing is ever read from the local filesystem.
- Redirects: 301, 302, 303, 307 and 308, at most `max_redirects` of them, each resolved against the URL
  that answered it. A redirect from https to http is followed, as browsers do: the bytes are an image
  that gets decoded and classified, never executed or shown as trusted.
- Time: DNS resolution, the TCP connect and the TLS handshake together get `connect_timeout` per hop; each
  wait for bytes from the server (the response head, and every read of the body) gets `read_timeout`,
  so a slow but steady download is never cut off while a silent server is. `total_timeout`, when set,
  bounds the whole fetch, redirects included. DNS runs in a daemon thread because `getaddrinfo` has no
  timeout of its own; a resolver that hangs is abandoned (it finishes by itself later).
- Cancellation: every wait is sliced into at most `_SLICE` seconds, and the `cancelled` event is checked
  between slices, so Ctrl-C never waits more than about a quarter of a second on the network.
- Size: a `Content-Length` over `max_bytes` is refused before any of the body is read; a chunked or
  unsized body is refused as soon as it grows past `max_bytes`, so no more than `max_bytes + 1` bytes of
  body are ever held. A body shorter than its `Content-Length` (a dropped connection) is an error, not a
  truncated image.
- Bytes are passed on raw: `Accept-Encoding: identity` asks for no compression, and nothing is decoded.
- Credentials in the URL (`https://user:pass@host/...`) are refused with a clear reason rather than sent:
  sending them to every host a redirect points at would leak them, and dropping them silently would turn
  into a puzzling `HTTP 401`. The same holds for a redirect target that carries credentials.
- Proxies are not used: `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` are ignored, and every connection goes
  straight to the host in the URL.
- TLS: certificates are verified against the default trust store of Python's `ssl` module, so OpenSSL's
  `SSL_CERT_FILE` and `SSL_CERT_DIR` environment variables are honoured (e.g. a company's CA).
- One connection per request (`Connection: close`): a batch of URLs from many hosts gains little from
  keep-alive, and a fresh socket per hop keeps every timeout and the cleanup in one place.
"""

from __future__ import annotations

import errno
import http.client
import io
import ipaddress
import os
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from mvit_cli import __version__

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds
DEFAULT_READ_TIMEOUT = 30.0  # seconds without a byte arriving
MAX_REDIRECTS = 5

_SCHEMES = {"http": 80, "https": 443}
_REDIRECTS = {301, 302, 303, 307, 308}
_SLICE = 0.25  # longest uninterrupted wait: how late a cancellation may be noticed
_READ_CHUNK = 64 * 1024
_MIB = 1024 * 1024
# Connect in progress on a non-blocking socket: EINPROGRESS on POSIX, WSAEWOULDBLOCK (10035) on Windows.
_CONNECT_PENDING = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, 10035}
# Characters left as they are when a path or query is percent-encoded: everything RFC 3986 allows there,
# and '%' itself so that an already encoded URL is not encoded twice.
_SAFE_IN_PATH = "/%:@!$&'()*+,;=~"
_SAFE_IN_QUERY = _SAFE_IN_PATH + "?"


def is_url(text: str) -> bool:
    """True for text that names an http(s) URL (the scheme in any case), i.e. an input for `fetch`."""
    head = text[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_redirects: int = MAX_REDIRECTS
    total_timeout: float | None = None  # optional overall deadline for one fetch (connect + all reads)

    def __post_init__(self) -> None:
        # A zero timeout would turn a socket non-blocking and every wait into an instant failure.
        if self.max_bytes < 0 or self.max_redirects < 0:
            raise ValueError("max_bytes and max_redirects must not be negative")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("connect_timeout and read_timeout must be positive")
        if self.total_timeout is not None and self.total_timeout <= 0:
            raise ValueError("total_timeout must be positive (or None)")


class FetchError(Exception):
    """One URL could not be fetched; str(exc) is a short one-line reason for an error record,
    e.g. 'HTTP 404 Not Found', 'connection refused', 'timed out after 10 s (connect)',
    'larger than the 50 MB download limit', 'too many redirects (more than 5)',
    'redirect to unsupported scheme ftp:', 'cannot resolve host example.invalid'."""

    def __init__(self, reason: str, url: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.url = url  # the URL as given to `fetch`, before any redirect
        self.status = status  # the HTTP status when the server answered with an error, else None

    def __reduce__(self) -> tuple[type, tuple[str, str, int | None]]:
        # Pickled whole, so that an error travels from a worker process with its url and status.
        return (type(self), (str(self), self.url, self.status))


def fetch(url: str, limits: FetchLimits = FetchLimits(), cancelled: threading.Event | None = None) -> bytes:
    """The body of `url` (after redirects), or FetchError. b"" for an empty 2xx body: the caller decides."""
    return _Fetch(url, limits, cancelled).run()


@dataclass(frozen=True)
class _Target:
    """Where one request goes, validated: a URL that reaches this point is safe to connect to."""

    tls: bool
    host: str  # ASCII (IDNA), without brackets
    port: int
    host_header: str
    request_target: str  # path and query, percent-encoded


class _Fetch:
    """One call of `fetch`: the URL it reports, its limits, and its deadlines."""

    def __init__(self, url: str, limits: FetchLimits, cancelled: threading.Event | None) -> None:
        self.url = url
        self.limits = limits
        self.cancelled = cancelled
        self.end = None if limits.total_timeout is None else time.monotonic() + limits.total_timeout

    # ------------------------------------------------------------------------------------ outline

    def run(self) -> bytes:
        current = self.url
        target = self.parse(current, redirected=False)
        redirects = 0
        while True:
            status, reason, location, body = self.request(target)
            if status not in _REDIRECTS:
                if 200 <= status < 300:
                    return body
                raise self.fail(f"HTTP {status} {reason}".rstrip(), status=status)
            if location is None:
                raise self.fail(f"redirect (HTTP {status}) without a Location header", status=status)
            if redirects >= self.limits.max_redirects:
                raise self.fail(f"too many redirects (more than {self.limits.max_redirects})")
            redirects += 1
            current = urljoin(current, location.strip())
            target = self.parse(current, redirected=True)

    def fail(self, reason: str, status: int | None = None) -> FetchError:
        return FetchError(reason, self.url, status)

    def parse(self, url: str, redirected: bool) -> _Target:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:  # e.g. "Port out of range 0-65535", "Invalid IPv6 URL"
            raise self.fail(f"invalid URL: {_first_line(str(exc))}") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            shown = f"{scheme}:" if scheme else "(none)"
            lead = "redirect to unsupported scheme" if redirected else "unsupported URL scheme"
            raise self.fail(f"{lead} {shown}")
        if parts.username is not None or parts.password is not None:
            lead = "redirect to a URL with" if redirected else "URL with"
            raise self.fail(f"{lead} credentials (user:password@) is not supported")
        if not parts.hostname:
            raise self.fail("invalid URL: no host name")
        try:
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise self.fail(f"invalid host name {parts.hostname}") from None
        return _Target(
            tls=scheme == "https",
            host=host,
            port=_SCHEMES[scheme] if port is None else port,
            host_header=_host_header(host, port, _SCHEMES[scheme]),
            request_target=_request_target(parts),
        )

    # ------------------------------------------------------------------------------------ deadlines

    def slice(self, phase_end: float, phase: str, phase_seconds: float) -> float:
        """Seconds the next wait may take, or FetchError when cancelled or out of time."""
        if self.cancelled is not None and self.cancelled.is_set():
            raise self.fail("cancelled")
        now = time.monotonic()
        if self.end is not None and now >= self.end:
            raise self.fail(f"timed out after {self.limits.total_timeout:g} s (total)")
        if now >= phase_end:
            raise self.fail(f"timed out after {phase_seconds:g} s ({phase})")
        left = phase_end - now if self.end is None else min(phase_end, self.end) - now
        return min(_SLICE, left)

    def connect_slice(self, phase_end: float) -> float:
        return self.slice(phase_end, "connect", self.limits.connect_timeout)

    def read_slice(self, phase_end: float) -> float:
        return self.slice(phase_end, "read", self.limits.read_timeout)

    # ------------------------------------------------------------------------------------ one hop

    def request(self, target: _Target) -> tuple[int, str, str | None, bytes]:
        """(status, reason, Location, body) of one GET; the body only for a 2xx answer."""
        sock: socket.socket | None = None
        if self.cancelled is not None and self.cancelled.is_set():  # before connecting, not after
            raise self.fail("cancelled")
        try:
            sock = self.connect(target)
            conn = http.client.HTTPConnection(target.host, target.port)
            conn.sock = _Channel(sock, self)  # type: ignore[assignment]  # http.client needs only these methods
            conn.request("GET", target.request_target, headers=_headers(target.host_header))
            response = conn.getresponse()
            status = response.status
            reason = response.reason.strip() or _phrase(status)
            if not 200 <= status < 300:
                return status, reason, response.getheader("Location"), b""
            return status, reason, None, self.read_body(response)
        except FetchError:
            raise
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError is an OSError
            raise self.fail(_describe(exc, target.host)) from exc
        finally:
            if sock is not None:
                sock.close()

    def connect(self, target: _Target) -> socket.socket:
        phase_end = time.monotonic() + self.limits.connect_timeout
        addresses = self.resolve(target.host, target.port, phase_end)
        sock = self.connect_any(addresses, phase_end)
        if not target.tls:
            return sock
        try:
            return self.handshake(sock, target.host, phase_end)
        except BaseException:
            sock.close()
            raise

    def resolve(self, host: str, port: int, phase_end: float) -> list[tuple]:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:  # a literal address: getaddrinfo returns at once, no thread needed
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        done = threading.Event()
        outcome: dict[str, object] = {}

        def resolve_in_thread() -> None:
            try:
                outcome["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except BaseException as exc:  # handed over to the waiting thread, which raises it
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=resolve_in_thread, name="mvit-fetch-dns", daemon=True).start()
        while not done.wait(self.connect_slice(phase_end)):
            pass
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["addresses"]  # type: ignore[return-value]

    def connect_any(self, addresses: list[tuple], phase_end: float) -> socket.socket:
        """A connected socket to the first address that accepts, in the resolver's order."""
        last_error: OSError = OSError("no address to connect to")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                # connect_ex and a selector, not a socket timeout: an interrupted wait can be resumed,
                # which a timed-out `sock.connect` cannot.
                code = sock.connect_ex(address)
                if code != 0 and code not in _CONNECT_PENDING:
                    raise OSError(code, os.strerror(code))
                while code != 0:
                    if _wait(sock, selectors.EVENT_WRITE, self.connect_slice(phase_end)):
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if code != 0:
                            raise OSError(code, os.strerror(code))
                return sock
            except FetchError:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last_error = exc
        raise last_error

    def handshake(self, sock: socket.socket, host: str, phase_end: float) -> ssl.SSLSocket:
        tls = _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")).wrap_socket(
            sock, server_hostname=host, do_handshake_on_connect=False
        )
        try:
            while True:
                try:
                    tls.do_handshake()
                    return tls
                except ssl.SSLWantReadError:
                    events = selectors.EVENT_READ
                except ssl.SSLWantWriteError:
                    events = selectors.EVENT_WRITE
                _wait(tls, events, self.connect_slice(phase_end))
        except BaseException:
            tls.close()
            raise

    def read_body(self, response: http.client.HTTPResponse) -> bytes:
        declared = response.length  # None when chunked or unsized
        if declared is not None and declared > self.limits.max_bytes:
            raise self.too_large()
        body = bytearray()
        while True:
            # Never ask for more than one byte past the limit: that byte is enough to know it is too big.
            piece = response.read1(min(_READ_CHUNK, self.limits.max_bytes + 1 - len(body)))
            if not piece:
                break
            body += piece
            if len(body) > self.limits.max_bytes:
                raise self.too_large()
        if declared is not None and len(body) < declared:
            raise self.fail(f"connection closed after {len(body)} of {declared} bytes")
        return bytes(body)

    def too_large(self) -> FetchError:
        return self.fail(f"larger than the {_size(self.limits.max_bytes)} download limit")


class _Channel:
    """The socket as http.client sees it: sends with a timeout, reads through `_Reader`.

    `close` does nothing: http.client closes its connection right after the response head when the server
    will close too, while the body is still to be read; the socket belongs to `_Fetch.request`, which closes it.
    """

    def __init__(self, sock: socket.socket, fetch: _Fetch) -> None:
        self._sock = sock
        self._fetch = fetch

    def sendall(self, data: bytes) -> None:
        # A request is a few hundred bytes: it fits in the socket buffer and never waits in practice.
        end = time.monotonic() + self._fetch.limits.read_timeout
        self._sock.settimeout(self._fetch.read_slice(end))
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise self._fetch.fail(f"timed out after {self._fetch.limits.read_timeout:g} s (send)") from None

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self._sock, self._fetch))

    def close(self) -> None:
        pass


class _Reader(io.RawIOBase):
    """Reads the socket in short slices, so that the read timeout, the overall deadline and a cancellation
    are all noticed while a read is blocked. (A timed-out `socket.makefile` stream is dead for good;
    a bare socket, TLS included, can be read again after a timeout.)"""

    def __init__(self, sock: socket.socket, fetch: _Fetch) -> None:
        super().__init__()
        self._sock = sock
        self._fetch = fetch

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        # Called only when the buffered reader needs bytes, so the read timeout runs from here.
        phase_end = time.monotonic() + self._fetch.limits.read_timeout
        while True:
            self._sock.settimeout(self._fetch.read_slice(phase_end))
            try:
                return self._sock.recv_into(buffer)
            except (TimeoutError, ssl.SSLWantReadError):
                continue


def _wait(sock: socket.socket, events: int, timeout: float) -> bool:
    """Whether `sock` became ready within `timeout`. A selector, not select.select: no FD_SETSIZE limit."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, events)
        return bool(selector.select(timeout))


@lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """One context per trust-store setting: loading the CA bundle takes milliseconds, a batch has many URLs.
    The arguments are only the cache key: OpenSSL reads the variables itself."""
    return ssl.create_default_context()


def _headers(host_header: str) -> dict[str, str]:
    return {
        "Host": host_header,
        "User-Agent": f"mvit/{__version__}",
        "Accept": "image/*,*/*;q=0.8",
        "Accept-Encoding": "identity",
        "Connection": "close",
    }


def _host_header(host: str, port: int | None, default_port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None or port == default_port else f"{shown}:{port}"


def _request_target(parts: SplitResult) -> str:
    # Spaces, non-ASCII and control characters (from a user or a Location header) would make
    # http.client refuse the request line; encoded they reach the server as the URL meant.
    path = quote(parts.path or "/", safe=_SAFE_IN_PATH)
    return f"{path}?{quote(parts.query, safe=_SAFE_IN_QUERY)}" if parts.query else path


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _size(n_bytes: int) -> str:
    if n_bytes >= _MIB:
        return f"{n_bytes / _MIB:g} MB"
    return f"{n_bytes} bytes"


def _first_line(text: str, limit: int = 80) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(exc: BaseException, host: str) -> str:
    """A short reason for a network or protocol failure. Order matters: several classes overlap
    (RemoteDisconnected is a ConnectionResetError, SSLCertVerificationError an SSLError)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {_first_line(str(exc.verify_message or exc.reason))}"
    if isinstance(exc, ssl.SSLError):
        detail = exc.reason.replace("_", " ").lower() if exc.reason else _first_line(str(exc))
        return f"TLS error: {detail}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection without answering"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the whole body arrived"
    if isinstance(exc, http.client.BadStatusLine):  # str(exc) is the line itself: quoted, it stays one line
        return f"invalid HTTP response: {_first_line(repr(str(exc).strip()))}"
    if isinstance(exc, http.client.HTTPException):
        detail = _first_line(str(exc))
        return f"invalid HTTP response: {detail}" if detail else f"invalid HTTP response ({type(exc).__name__})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, ConnectionAbortedError):
        return "connection aborted"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by the server"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"network error: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    return f"network error: {_first_line(str(exc)) or type(exc).__name__}"
