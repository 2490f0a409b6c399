"""An HTTP(S) server on 127.0.0.1 for tests that fetch URLs: nothing here touches the real internet.

    with WebServer() as server:
        server.route("/cat.jpg", body(jpeg_bytes))
        server.route("/old", redirect("/cat.jpg", 301))
        fetch(server.url("/old"))

Each route is a responder: a function that answers one request through the handler (see `body`,
`status`, `redirect`, `chunked`, `lying_length`, `trickle`, `head_then_hang`, `hang`, `raw`). The server
logs every request (`server.requests`) and how many body bytes each route managed to write before it
finished or the client went away (`server.sent`, `server.finished`), so a test can prove that a client
cut a download off.

Teardown never hangs: handler threads are daemon threads, `hang` waits on the server's stop event rather
than sleeping, streaming routes stop when it is set, and every connection has a socket timeout. A path
with no route answers 404.

Also here: `refused_port` (nothing listens there), `unresponsive_port` (a listener whose accept queue is
full, so a connect neither succeeds nor fails: the way to test a connect timeout on loopback),
`tcp_server` (bytes below HTTP, e.g. for a TLS client) and `make_tls_files` (a throwaway CA and a server
certificate for 127.0.0.1, made with the openssl tool).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

Responder = Callable[["_Handler"], None]


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # as sent, query included
    headers: dict[str, str]  # names lower-cased


class WebServer:
    """A threading HTTP server with per-test routes; HTTPS when given a server-side `ssl.SSLContext`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Responder] = {}
        self.requests: list[LoggedRequest] = []
        self.sent: dict[str, int] = {}  # route path -> body bytes written so far
        self.finished: dict[str, threading.Event] = {}  # route path -> set when its responder returned
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self._tls = tls
        self._server: _Server | None = None

    # ------------------------------------------------------------------------------------ setup

    def route(self, path: str, responder: Responder) -> str:
        """Serve `path` with `responder`; returns the full URL of the route."""
        self.routes[path] = responder
        self.finished[path] = threading.Event()
        return self.url(path)

    @property
    def port(self) -> int:
        assert self._server is not None, "start the server first"
        return self._server.server_address[1]

    @property
    def origin(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def paths(self) -> list[str]:
        """The paths requested so far, in order, without their queries."""
        with self.lock:
            return [urlsplit(r.path).path for r in self.requests]

    # ------------------------------------------------------------------------------------ lifetime

    def start(self) -> "WebServer":
        web = self

        class Handler(_Handler):
            server_state = web

        self._server = _Server(("127.0.0.1", 0), Handler, self._tls)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # releases `hang` and the streaming responders
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck on a dead client never blocks the test run's exit
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.errors: list[BaseException] = []
        super().__init__(address, handler)

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:  # type: ignore[override]
        # The TLS handshake runs here, in the connection's own thread, so that a client that never
        # completes it cannot stall the accepting thread.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        with self.tls.wrap_socket(request, server_side=True) as wrapped:
            super().finish_request(wrapped, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that hang up early (the point of several tests) are expected: keep stderr quiet.
        import sys

        self.errors.append(sys.exc_info()[1])  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer needs 1.1
    timeout = 10  # socket timeout: a write to a client that stopped reading fails instead of hanging
    server_state: WebServer

    def do_GET(self) -> None:
        state = self.server_state
        with state.lock:
            state.requests.append(
                LoggedRequest("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
            )
        path = urlsplit(self.path).path
        responder = state.routes.get(path, status(404))
        try:
            responder(self)
        finally:
            self.close_connection = True
            if path in state.finished:
                state.finished[path].set()

    def write_body(self, data: bytes) -> None:
        """Write body bytes, counting them for the route (what the client was sent, not what it read)."""
        self.wfile.write(data)
        self.count_sent(len(data))

    def count_sent(self, n_bytes: int) -> None:
        path = urlsplit(self.path).path
        with self.server_state.lock:
            self.server_state.sent[path] = self.server_state.sent.get(path, 0) + n_bytes

    def log_message(self, format: str, *args: object) -> None:
        pass


# ---------------------------------------------------------------------------------------- responders


def body(
    data: bytes, code: int = 200, content_type: str = "image/jpeg", headers: dict[str, str] | None = None
) -> Responder:
    """A complete response with a true Content-Length."""

    def respond(h: _Handler) -> None:
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.write_body(data)

    return respond


def status(code: int, reason: str | None = None, data: bytes = b"") -> Responder:
    """An answer with this status (the standard reason phrase unless given) and a small body."""

    def respond(h: _Handler) -> None:
        h.send_response(code, reason)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.write_body(data)

    return respond


def redirect(location: str | None, code: int = 302) -> Responder:
    """A redirect to `location` (sent as given: relative, absolute, any scheme); None: no Location header."""

    def respond(h: _Handler) -> None:
        h.send_response(code)
        if location is not None:
            h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return respond


def chunked(piece: bytes, count: int | None = None) -> Responder:
    """A chunked body of `count` copies of `piece` (None: without end) until the client goes away."""

    def respond(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        size_line = f"{len(piece):x}\r\n".encode()
        sent = 0
        try:
            while (count is None or sent < count) and not h.server_state.stopping.is_set():
                # Three writes, not one concatenation: no allocation of the piece's size on this side,
                # so that tracemalloc in a test sees the client's memory.
                h.wfile.write(size_line)
                h.wfile.write(piece)
                h.wfile.write(b"\r\n")
                h.count_sent(len(piece))
                sent += 1
            h.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client hung up: what this responder exists to observe
            pass

    return respond


def lying_length(declared: int, data: bytes) -> Responder:
    """Announce `declared` bytes, send `data`, hang up: a connection dropped mid-body."""

    def respond(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(declared))
        h.end_headers()
        h.write_body(data)
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)

    return respond


def trickle(data: bytes, interval: float) -> Responder:
    """A response whose body arrives one byte every `interval` seconds."""

    def respond(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            for i in range(len(data)):
                if h.server_state.stopping.wait(interval):
                    return
                h.write_body(data[i : i + 1])
        except OSError:
            pass

    return respond


def head_then_hang(headers: dict[str, str], code: int = 200) -> Responder:
    """Send the status line and these headers, then no body ever (until the server stops)."""

    def respond(h: _Handler) -> None:
        h.send_response(code)
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.flush()
        h.server_state.stopping.wait()

    return respond


def hang() -> Responder:
    """Read the request, then never answer (until the server stops)."""

    def respond(h: _Handler) -> None:
        h.server_state.stopping.wait()

    return respond


def raw(data: bytes) -> Responder:
    """Write `data` as the whole response (no status line of our own), then close: malformed answers."""

    def respond(h: _Handler) -> None:
        h.wfile.write(data)

    return respond


# ---------------------------------------------------------------------------------------- sockets


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed: the kernel answers connects with RST)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def unresponsive_port(probe_timeout: float = 0.2) -> Iterator[int | None]:
    """A loopback port where a connect hangs: a listener that never accepts, its backlog filled.

    Linux drops the SYN of a connect to a full accept queue, so the connect neither succeeds nor fails.
    Yields None where the kernel behaves otherwise (the test should skip)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        hangs = False
        for _ in range(4):
            filler = socket.socket()
            fillers.append(filler)
            filler.settimeout(probe_timeout)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                hangs = True
                break
            except OSError:
                break
        yield port if hangs else None
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.contextmanager
def tcp_server(greeting: bytes | None) -> Iterator[int]:
    """A bare TCP listener below HTTP: each connection gets `greeting` and is closed; None: connections
    are accepted (by the kernel) and never answered, which stalls a TLS handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # timeout, or the listener closed
                continue
            with conn:
                with contextlib.suppress(OSError):
                    conn.sendall(greeting or b"")

    if greeting is not None:
        threading.Thread(target=serve, name="test-tcp", daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


# ---------------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # trust this (e.g. SSL_CERT_FILE) to accept the server
    server_cert: Path  # for 127.0.0.1 (subjectAltName IP), signed by the CA
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def make_tls_files(folder: Path) -> TlsFiles | None:
    """A throwaway CA and a server certificate for 127.0.0.1, or None without a working openssl tool."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, csr, cert, ext = folder / "server.key", folder / "server.csr", folder / "server.pem", folder / "ext.cnf"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
        "authorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert, "-days", "2", "-subj", "/CN=mvit test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        try:
            done = subprocess.run([str(part) for part in command], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:  # e.g. an old openssl without -addext
            return None
    return TlsFiles(ca_cert, cert, key)


