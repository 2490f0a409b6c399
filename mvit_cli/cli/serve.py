"""`mvit serve`: the classifier behind an HTTP API and a web page (mvit_cli/serve/), run on uvicorn."""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from typing import Annotated, Any, Iterator, Optional

import typer

from mvit_cli.cli._options import (
    Backend,
    BackendOpt,
    BatchSizeOpt,
    CacheDirOpt,
    Device,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    OfflineOpt,
    SourceOpt,
    VariantOpt,
    WeightsOpt,
)
from mvit_cli.errors import EXIT_OK, UsageError

EXTRA = "pip install 'mvit-cli[serve]'"
_MODULES = ("starlette", "uvicorn", "python_multipart")  # the serve extra, by import name

# Connections (and requests) served at once; beyond, uvicorn answers 503 at once. Each request may hold up to
# --max-body-mb of body (twice, for a form being parsed), so this bounds the memory requests can take.
MAX_CONNECTIONS = 128
# After SIGTERM / Ctrl-C, requests in flight get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN_S = 30


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on. The default answers this machine only; 0.0.0.0 "
                          "(or ::) answers every network the machine is on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on (0: any free "
                                      "port, printed when ready).")] = 8000,
    variant: VariantOpt = None,
    source: SourceOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = Backend.torch,
    dtype: DtypeOpt = Dtype.float32,
    batch_size: BatchSizeOpt = None,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, max=10_000, help="How long an image waits for images of other "
                            "requests to share its model batch (0: never waits; batches still form under load).")
    ] = 5.0,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.001, help="Largest request body accepted, in MB (413 beyond).")
    ] = 20.0,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, max=1000, help="Classes per image when a request gives no top_k.")
    ] = 5,
    workers: Annotated[
        Optional[int], typer.Option("--workers", "-j", min=1, help="Image-decoding threads \\[default: one per core, "
                                    "2 to 5].", show_default=False)
    ] = None,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> int:
    """Serve the classifier over HTTP: a JSON API with dynamic batching, and a web page to drop images on.

    The model stays loaded; images of concurrent requests are classified together in batches of up to
    --batch-size, each waiting at most --max-wait-ms for company. Records are exactly those of
    `mvit classify --format json`. Listens on 127.0.0.1 (this machine only) unless --host says otherwise, and
    prints the URL on stderr once the model is loaded; /healthz answers 503 until then.

    Endpoints: GET / (the page), POST /v1/classify\\[?top_k=K] (a raw image body, or multipart/form-data with image
    files) -> {"results": \\[record, ...]}, GET /healthz, GET /v1/info (as `mvit info --format json`),
    GET /metrics (Prometheus). Errors are JSON {"error": "..."} with their HTTP status.

    Ctrl-C or SIGTERM stops it gracefully: no new connections, requests in flight are answered, exit code 0.
    Needs the optional extra: pip install 'mvit-cli\\[serve]'.

    Examples:

      mvit serve --variant xxs

      curl -s -H 'Content-Type: image/jpeg' --data-binary @cat.jpg http://127.0.0.1:8000/v1/classify

      curl -s -F file=@cat.jpg -F file=@dog.png 'http://127.0.0.1:8000/v1/classify?top_k=3'
    """
    _require_extra()
    import uvicorn

    from mvit_cli import api, runners
    from mvit_cli.cli import output
    from mvit_cli.serve.app import LOOPBACK_NAMES, ServeSettings, create_app

    listener = _listen(host, port)
    settings = ServeSettings(
        batch_size=batch_size, max_wait_ms=max_wait_ms, max_body_bytes=int(max_body_mb * 1e6), top_k=top_k,
        workers=workers or runners.default_workers() + 1,
        allowed_hosts=LOOPBACK_NAMES | {host.lower()} if _is_loopback(host) else None,
    )
    failure: list[BaseException] = []
    server: Any = None

    def load() -> api.Classifier:
        # No expected_images: a server runs an unknown number of images, so the model is traced (as classify
        # of 100 or more images), and its records equal classify's for those.
        return api.load(variant.value if variant else None, source.value if source else None, weights,
                        device.value, backend.value, cache_dir, offline, dtype.value, warn=output.warn,
                        progress=output.progress_enabled())

    def on_ready(classifier: api.Classifier) -> None:
        while server is None or not server.started:  # listening too, not only loaded
            if server is not None and server.should_exit:
                return
            time.sleep(0.02)
        output.warn(f"serving MobileViT-{classifier.variant.upper()} ({classifier.source} weights) at "
                    f"{_url(listener)} (Ctrl-C to stop)")

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        while server is None:
            time.sleep(0.02)
        server.should_exit = True

    app = create_app(load, settings, on_ready=on_ready, on_load_error=on_load_error)
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False, lifespan="on",
                            limit_concurrency=MAX_CONNECTIONS, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    _log_errors_to_stderr()
    server = _graceful_server_class()(config)
    server.run(sockets=[listener])
    if failure:
        raise failure[0]
    if server.stopped_by is not None:
        output.warn(f"stopped ({signal.Signals(server.stopped_by).name}); every request received was answered")
    return EXIT_OK


def _require_extra() -> None:
    missing = []
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"mvit serve needs its optional extra ({', '.join(missing)} missing): {EXTRA}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port or a bad address is one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    # proto must say TCP: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that do, and with it
    # on, every response whose body follows its headers in a second write waits ~40 ms for a delayed ACK.
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        hint = " (another server there? choose one with --port)" if exc.errno == 98 else ""
        raise UsageError(f"cannot listen on {host} port {port}: {(exc.strerror or str(exc)).lower()}{hint}") from None
    listener.set_inheritable(False)
    return listener


def _url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _log_errors_to_stderr() -> None:
    """uvicorn's own messages: warnings and errors only (a failing request's traceback is a bug), as mvit lines."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("mvit: %(message)s"))
    log = logging.getLogger("uvicorn.error")
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING)
    log.propagate = False


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is when a record comes (a StreamHandler would keep the stream it was given)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never fail the server
            self.handleError(record)


def _graceful_server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping on SIGTERM and Ctrl-C as a success.

        uvicorn itself shuts down gracefully on either signal and then raises the signal again, so that the
        process dies of it (exit 143 or 130). For `mvit serve` a graceful stop is the normal end (docker stop,
        systemd): exit 0. A second Ctrl-C still forces the stop.
        """

        stopped_by: int | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(signum: int, frame: Any) -> None:
                self.stopped_by = self.stopped_by or signum
                self.handle_exit(signum, frame)

            saved = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)

    return Server
