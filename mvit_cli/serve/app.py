"""The HTTP app: routes, limits and errors around one `Classifier` and its batcher.

    GET  /             the page (page.html)
    GET  /healthz      200 {"status": "ok", "variant", "source"} once the model is loaded; 503 before
    POST /v1/classify  [?top_k=K] a raw image body or a multipart form of image files -> {"results": [record ...]}
    GET  /v1/info      what `mvit info --format json` prints for the loaded variant and source
    GET  /metrics      Prometheus text (metrics.py)

Records are those of `mvit classify --format json`, made by the same code: uploads are decoded by the pipeline
(`pixels_or_reason`), batched into the model's tensor by `batch_tensor`, run on the classifier's runner, and
ranked by `top_k_predictions`. The model is the traced one a job of unknown size gets (`load()` without
`expected_images`), as `classify` of 100 or more images uses: a server runs many images.

Errors are JSON {"error": "..."}: 400 bad request (empty body, bad top_k, a form without files, a text field),
408 body stalled, 413 body over the limit (or too many files), 415 unsupported Content-Type, 422 a raw body that
is no decodable image (decompression bombs included; in a form, an undecodable file is an error record among
the others, as in classify), 404 / 405 unknown route or method, 503 model not loaded yet or shutting down.

The model loads on a thread when the app starts, so the server listens (and /healthz answers 503) meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mvit_cli.api import Classifier
from mvit_cli.pipeline.batching import pixels_or_reason
from mvit_cli.pipeline.records import Result, top_k_predictions
from mvit_cli.serve import metrics as metrics_module
from mvit_cli.serve.batcher import BatcherClosed, DynamicBatcher
from mvit_cli.serve.page import page_headers, page_html
from mvit_cli.serve.uploads import (
    RequestError,
    Upload,
    check_media_type,
    media_type,
    read_body,
    uploads_of,
)

# Names a loopback server answers to (the Host header): a web page elsewhere that points a name of its own at
# 127.0.0.1 (DNS rebinding) cannot make the browser talk to this server as that page's origin.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

ROUTES = ("/", "/healthz", "/v1/classify", "/v1/info", "/metrics")  # metric labels; anything else is "other"
_TOP_K = re.compile(r"[0-9]{1,4}")


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts."""

    batch_size: int | None = None  # images per model batch (None: the device's default, as classify)
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others to join it
    max_body_bytes: int = 20_000_000
    top_k: int = 5  # classes per image when a request does not say (?top_k=)
    workers: int = 2  # image-decoding threads
    allowed_hosts: frozenset[str] | None = None  # Host names accepted (None: any)
    body_timeout_s: float = 30.0  # a body that stops arriving this long is dropped (408)


class ServerState:
    """The loaded model (or the error that kept it from loading), its batcher and the decoding threads."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.metrics = metrics_module.Metrics()
        self.classifier: Classifier | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: BaseException | None = None
        self.decoders = ThreadPoolExecutor(settings.workers, thread_name_prefix="mvit-decode")

    def load(self, loader: Callable[[], Classifier], on_ready: Callable[[Classifier], None] | None,
             on_error: Callable[[BaseException], None] | None) -> None:
        try:
            classifier = loader()
            batch_size = self.settings.batch_size or _default_batch_size(classifier)
            # The first model calls trace and compile the model's graph (runners/torch_cpu.py): done before the
            # server says ok, so that the first request is as fast as any other. One image runs on the batcher's
            # thread, four spread over the cores (batcher.py says why from its thread).
            self.batcher = DynamicBatcher(classifier.logits, classifier.preprocessing, batch_size,
                                          self.settings.max_wait_ms / 1000, on_batch=self.metrics.batch,
                                          single_threaded=classifier.device.type == "cpu", warm_up=(1, 4),
                                          unit=_unit(classifier))
            self.classifier = classifier
            self.metrics.model_loaded = True
        except BaseException as exc:  # noqa: BLE001 - reported by the caller (the CLI prints it and stops)
            self.load_error = exc
            if on_error is not None:
                on_error(exc)
            return
        if on_ready is not None:
            on_ready(classifier)

    def ready(self) -> tuple[Classifier, DynamicBatcher]:
        if self.classifier is None or self.batcher is None:
            raise RequestError(503, "the model is still loading; retry when /healthz answers 200"
                               if self.load_error is None else f"the model could not be loaded: {self.load_error}")
        return self.classifier, self.batcher

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()  # runs every image still queued
        self.decoders.shutdown(wait=True)


def _unit(classifier: Classifier) -> int:
    """Images the classifier's runner computes at once without padding: per-core chunks times cores on the CPU
    runners (runners/torch_cpu.py, onnxruntime.py), 1 elsewhere."""
    run = classifier.model.run
    return max(1, getattr(run, "micro_batch", 1) * getattr(run, "threads", 1))


def _default_batch_size(classifier: Classifier) -> int:
    from mvit_cli import runners

    return runners.default_batch_size(classifier.device)


def create_app(loader: Callable[[], Classifier], settings: ServeSettings = ServeSettings(), *,
               on_ready: Callable[[Classifier], None] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> Starlette:
    """The ASGI app serving the classifier `loader` returns (called on a thread at startup).

    `on_ready(classifier)` is called once the model is loaded and warm, `on_load_error(exc)` if loading fails
    (both on the loading thread). Run it with any ASGI server; `mvit serve` uses uvicorn.
    """
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        threading.Thread(target=state.load, args=(loader, on_ready, on_load_error), name="mvit-load",
                         daemon=True).start()
        try:
            yield
        finally:
            # uvicorn gets here after the requests in flight are answered: drain whatever is still queued.
            await run_in_threadpool(state.close)

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html(), headers=page_headers())

    async def healthz(request: Request) -> Response:
        if state.classifier is None:
            body: dict[str, Any] = {"status": "loading" if state.load_error is None else "error"}
            if state.load_error is not None:
                body["error"] = str(state.load_error)
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "variant": state.classifier.variant,
                             "source": state.classifier.source})

    async def info(request: Request) -> Response:
        classifier, _ = state.ready()
        return JSONResponse(await run_in_threadpool(classifier.info))

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(state.metrics.render(), media_type=metrics_module.CONTENT_TYPE)

    async def classify(request: Request) -> Response:
        classifier, batcher = state.ready()
        top_k = _top_k_of(request, settings.top_k)
        kind = media_type(request)
        is_form = check_media_type(kind)  # 415 before reading a body we would not take
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        if is_form:
            uploads = await run_in_threadpool(uploads_of, True, request.headers.get("content-type", ""), body)
        else:
            uploads = uploads_of(False, "", body)
        del body
        # A form's files go through decoding and the model a batch's worth at a time: a form of many small
        # files holds at most that many decoded images in memory (and cannot crowd out other requests).
        window = asyncio.Semaphore(batcher.batch_size)
        outcomes = await asyncio.gather(*(_logits_or_reason(upload, classifier, batcher, window)
                                          for upload in uploads))
        if not is_form and isinstance(outcomes[0], str):
            state.metrics.image(False)
            raise RequestError(422, f"not a decodable image: {outcomes[0]}")
        return JSONResponse({"results": _records(uploads, outcomes, top_k)})

    async def _logits_or_reason(upload: Upload, classifier: Classifier, batcher: DynamicBatcher,
                                window: asyncio.Semaphore) -> torch.Tensor | str:
        loop = asyncio.get_running_loop()
        async with window:
            batcher.expect()  # a batch forming now may wait for this image (batcher.py)
            try:
                # Bytes, never a str: the pipeline decodes them as an image, never takes them for a path or URL.
                pixels = await loop.run_in_executor(state.decoders, pixels_or_reason, upload.data,
                                                    classifier.preprocessing)
            except BaseException:
                batcher.withdraw()
                raise
            if isinstance(pixels, str):
                batcher.withdraw()
                return pixels
            try:
                return await batcher.logits(pixels, expected=True)
            except BatcherClosed:
                raise RequestError(503, "the server is shutting down") from None

    def _records(uploads: list[Upload], outcomes: list[torch.Tensor | str], top_k: int) -> list[dict[str, Any]]:
        rows = [outcome for outcome in outcomes if not isinstance(outcome, str)]
        ranked = iter(top_k_predictions(torch.stack(rows), top_k) if rows else [])
        records = []
        for upload, outcome in zip(uploads, outcomes):
            failed = isinstance(outcome, str)
            state.metrics.image(not failed)
            result = Result(upload.name, error=outcome) if failed else Result(upload.name, next(ranked))
            records.append(result.to_dict())
        return records

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no such route: {request.url.path}; routes: {', '.join(ROUTES)}",
                   405: f"method {request.method} not allowed here"}.get(exc.status_code, exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "internal error (the server's log has the details)"}, status_code=500)

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/info", info, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={RequestError: request_error, HTTPException: http_error, 500: server_error},
        lifespan=lifespan,
    )
    app.state.mvit = state
    return _Guard(app, state.metrics, settings.allowed_hosts)


def _top_k_of(request: Request, default: int) -> int:
    params = request.query_params
    unknown = sorted(set(params.keys()) - {"top_k"})
    if unknown:
        raise RequestError(400, f"unknown query parameter {unknown[0]!r}; the only one is top_k")
    values = params.getlist("top_k")
    if not values:
        return default
    if len(values) > 1 or not _TOP_K.fullmatch(values[0]) or not 1 <= int(values[0]) <= 1000:
        raise RequestError(400, f"top_k must be one whole number from 1 to 1000, not {'&'.join(values)!r}")
    return int(values[0])


def _host_name(host: str) -> str:
    """The name part of a Host header: "[::1]:8000" -> "::1", "Localhost:8000" -> "localhost"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Guard:
    """ASGI middleware around the app: refuses Host names not served (DNS rebinding), counts every response by
    route and status (and times classify requests), and adds headers every response gets."""

    def __init__(self, app: Starlette, metrics: metrics_module.Metrics, allowed_hosts: frozenset[str] | None):
        self.app = app
        self.metrics = metrics
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500  # if the app fails before it answers

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            if not self._host_allowed(scope):
                response = JSONResponse({"error": "this server does not answer to that Host name"}, status_code=400)
                await response(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            self.metrics.request(route, status, time.perf_counter() - started if route == "/v1/classify" else None)

    def _host_allowed(self, scope) -> bool:
        if self.allowed_hosts is None:
            return True
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        return host is None or _host_name(host.decode("latin-1")) in self.allowed_hosts
