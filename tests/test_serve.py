"""`mvit serve`: a real server process on a loopback port, a random-weight XXS checkpoint, a real HTTP client
(http.client and raw sockets from the standard library) and a real headless browser for the page.

Expected answers are the test's own: `mvit classify --format json` of the same files, and `mvit info --format
json`. Which classify: a server runs the model traced (a job of unknown size, `load()` without
`expected_images`), which gives the last bits of the logits that `classify` gives a job of 100 or more images,
not those of its eager path for small jobs (api.py `_model_for`). So the expected records come from one classify
run over a `--files-from` list naming the test's files 21 times over (105 lines: traced, like the server).

No timings are asserted; the only waits are bounded polls for something that must happen.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from http_fixtures import WebServer, body
from image_corpus import decompression_bomb_png, encode, exif_rotated_jpeg, in_mode, smooth_rgb
from cli_helpers import invoke

pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[test]')")

MAX_BODY_MB = 1  # the shared server's --max-body-mb: small, so the limit tests send little
MAX_BODY = int(MAX_BODY_MB * 1e6)


# ------------------------------------------------------------------------------------------ inputs and answers


@dataclass(frozen=True)
class Photos:
    good: list[Path]
    broken: Path  # not an image: an error record in a form, a 422 as a raw body

    @property
    def all(self) -> list[Path]:
        return [*self.good, self.broken]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Photos:
    folder = tmp_path_factory.mktemp("serve-photos")
    files = {
        "p0.jpg": encode(smooth_rgb(120, 90, seed=0), "JPEG", quality=90),
        "p1.png": encode(smooth_rgb(64, 160, seed=1), "PNG"),
        "p2-rgba.png": encode(in_mode("RGBA", 97, 97, seed=2), "PNG"),
        "p3-exif.jpg": exif_rotated_jpeg(smooth_rgb(80, 60, seed=3)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"this is text, not a JPEG")
    return Photos([folder / name for name in files], broken)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-cache")


@pytest.fixture(scope="module")
def expected(xxs_checkpoint, photos, tmp_path_factory) -> dict[Path, dict]:
    """`mvit classify --format json` record of every test file, from a job of 105 inputs (module docstring)."""
    listing = tmp_path_factory.mktemp("serve-list") / "list.txt"
    listing.write_text("\n".join(str(path) for path in photos.all * 21) + "\n")
    result = invoke("classify", "--files-from", str(listing), "--weights", str(xxs_checkpoint.path),
                    "--format", "json")
    assert result.exit_code == 3, result.output  # 3: the broken file failed, the others were classified
    records = json.loads(result.stdout)
    assert len(records) == 105
    return {path: record for path, record in zip(photos.all, records)}


def named(record: dict, name: str) -> dict:
    return {**record, "path": name}


# ------------------------------------------------------------------------------------------ the server process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    """A `mvit serve` process and a client for it."""

    process: subprocess.Popen
    port: int
    stderr: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = dict(headers or {})
            connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            if data is not None:
                connection.putheader("Content-Length", str(len(data)))
            connection.endheaders(data)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def get_json(self, path: str) -> tuple[int, dict]:
        status, _, data = self.request("GET", path)
        return status, json.loads(data)

    def post_raw(self, data: bytes, content_type: str | None = "application/octet-stream",
                 path: str = "/v1/classify") -> tuple[int, dict]:
        status, _, answer = self.request("POST", path, data, {"Content-Type": content_type} if content_type else {})
        return status, json.loads(answer)

    def post_form(self, files: list[tuple[str, bytes]], path: str = "/v1/classify") -> tuple[int, dict]:
        boundary, data = multipart(files)
        form_type = f"multipart/form-data; boundary={boundary}"
        status, _, answer = self.request("POST", path, data, {"Content-Type": form_type})
        return status, json.loads(answer)

    def metrics(self) -> dict[str, float]:
        status, _, data = self.request("GET", "/metrics")
        assert status == 200
        samples = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def healthy(self) -> bool:
        status, answer = self.get_json("/healthz")
        return status == 200 and answer["status"] == "ok"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def multipart(files: list[tuple[str, bytes]], fields: list[tuple[str, str]] = ()) -> tuple[str, bytes]:
    """(boundary, body) of a multipart/form-data form with these files (all in field "file") and text fields."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields]
    for filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return boundary, b"".join(parts) + f"--{boundary}--\r\n".encode()


def start_server(checkpoint: Path, cache_dir: Path, *options: str) -> Served:
    """`python -m mvit_cli serve` on a free loopback port; returns once /healthz says ok and the URL is printed."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mvit_cli", "serve", "--port", str(port), "--weights", str(checkpoint),
         "--cache-dir", str(cache_dir), "--offline", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    served = Served(process, port)

    def drain() -> None:
        for line in process.stderr:
            served.stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 180  # torch import, load and trace on a busy CI machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            time.sleep(0.2)
            pytest.fail(f"mvit serve exited with {process.returncode}: {served.stderr}")
        try:
            if served.healthy() and any("serving" in line for line in served.stderr):
                return served
        except (OSError, http.client.HTTPException):
            pass  # not listening yet
        time.sleep(0.05)
    served.stop()
    pytest.fail(f"mvit serve did not get ready: {served.stderr}")


@pytest.fixture(scope="module")
def server(xxs_checkpoint, cache_dir) -> Served:
    # --max-wait-ms 20: batching is proven below even on a loaded CI machine (the default, 5, batches too).
    served = start_server(xxs_checkpoint.path, cache_dir, "--max-body-mb", str(MAX_BODY_MB), "--max-wait-ms", "20")
    yield served
    assert served.stop() == 0, served.stderr


# ------------------------------------------------------------------------------------------ the API


def test_listens_on_loopback_and_prints_the_url_when_ready(server):
    assert f"at http://127.0.0.1:{server.port}/ " in "\n".join(server.stderr)
    assert server.get_json("/healthz") == (200, {"status": "ok", "variant": "xxs", "source": "timm"})


def test_records_equal_classify_json(server, photos, expected):
    # Each photo as a raw body, under each media type a raw image may come with: path "-", as for stdin.
    for path, content_type in zip(photos.good, ("image/jpeg", "image/png", None, "application/octet-stream")):
        assert server.post_raw(path.read_bytes(), content_type) == (200, {"results": [named(expected[path], "-")]})
    # All in one form, the broken file among them: its error record is classify's, the others are classified.
    status, answer = server.post_form([(path.name, path.read_bytes()) for path in photos.all])
    assert status == 200
    assert answer == {"results": [named(expected[path], path.name) for path in photos.all]}


def test_a_form_of_more_files_than_a_batch_keeps_its_order(server, photos, expected):
    files = [photos.all[i % len(photos.all)] for i in range(45)]  # the default batch is 32
    status, answer = server.post_form([(f"{i}-{path.name}", path.read_bytes()) for i, path in enumerate(files)])
    assert status == 200
    assert answer["results"] == [named(expected[path], f"{i}-{path.name}") for i, path in enumerate(files)]


def test_top_k_query_parameter(server, photos, expected):
    path = photos.good[0]
    status, answer = server.post_raw(path.read_bytes(), path="/v1/classify?top_k=2")
    assert status == 200
    assert answer["results"][0]["predictions"] == expected[path]["predictions"][:2]
    status, answer = server.post_raw(path.read_bytes(), path="/v1/classify?top_k=1000")
    assert status == 200 and len(answer["results"][0]["predictions"]) == 1000


def test_sixteen_concurrent_clients_are_batched_together_and_answered_right(server, photos, expected):
    before = server.metrics()
    clients = 16
    start = threading.Barrier(clients)

    def client(i: int) -> tuple[Path, tuple[int, dict]]:
        path = photos.good[i % len(photos.good)]
        data = path.read_bytes()
        start.wait()
        return path, server.post_raw(data)

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(client, range(clients)))
    for path, answer in answers:
        assert answer == (200, {"results": [named(expected[path], "-")]})

    after = server.metrics()
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert delta['mvit_requests_total{route="/v1/classify",status="200"}'] == clients
    assert delta['mvit_images_total{outcome="classified"}'] == clients
    assert delta["mvit_batch_size_sum"] == clients
    # Every request holds one image, so a batch of more than one holds images of several requests.
    assert delta["mvit_batch_size_count"] - delta['mvit_batch_size_bucket{le="1"}'] >= 1
    assert delta["mvit_batch_size_count"] < clients
    assert delta["mvit_request_duration_seconds_count"] == clients


def test_info_equals_mvit_info_json(server, cache_dir):
    result = invoke("info", "--variant", "xxs", "--source", "timm", "--format", "json",
                    "--cache-dir", str(cache_dir))
    assert result.exit_code == 0, result.output
    assert server.get_json("/v1/info") == (200, json.loads(result.stdout))


def test_metrics_are_prometheus_text(server):
    status, headers, data = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    text = data.decode()
    for family, kind in (("mvit_requests_total", "counter"), ("mvit_images_total", "counter"),
                         ("mvit_batch_size", "histogram"), ("mvit_request_duration_seconds", "histogram")):
        assert f"# TYPE {family} {kind}\n" in text
    assert re.search(r'^mvit_batch_size_bucket\{le="\+Inf"\} \d+$', text, re.M)
    assert "mvit_model_loaded 1\n" in text


# ------------------------------------------------------------------------------------------ bad requests

JPEG = encode(smooth_rgb(90, 70, seed=7), "JPEG", quality=90)
_FORM_BOUNDARY, _TEXT_FIELD_FORM = multipart([], [("file", "/etc/passwd")])
_CUT_BOUNDARY, _FULL_FORM = multipart([("a.jpg", JPEG)])
_UNTERMINATED_FORM = _FULL_FORM.removesuffix(f"--{_CUT_BOUNDARY}--\r\n".encode())
assert _UNTERMINATED_FORM != _FULL_FORM

BAD_REQUESTS = [
    # name, method, path, body, headers, status, words of the error
    ("empty-raw-body", "POST", "/v1/classify", b"", {"Content-Type": "image/jpeg"}, 400, "empty body"),
    ("empty-form-body", "POST", "/v1/classify", b"", {"Content-Type": "multipart/form-data; boundary=b"}, 400,
     "empty body"),
    ("top-k-zero", "POST", "/v1/classify?top_k=0", JPEG, {"Content-Type": "image/jpeg"}, 400, "top_k"),
    ("top-k-too-big", "POST", "/v1/classify?top_k=1001", JPEG, {"Content-Type": "image/jpeg"}, 400, "top_k"),
    ("top-k-negative", "POST", "/v1/classify?top_k=-1", JPEG, {"Content-Type": "image/jpeg"}, 400, "top_k"),
    ("top-k-text", "POST", "/v1/classify?top_k=five", JPEG, {"Content-Type": "image/jpeg"}, 400, "top_k"),
    ("top-k-twice", "POST", "/v1/classify?top_k=2&top_k=3", JPEG, {"Content-Type": "image/jpeg"}, 400, "top_k"),
    ("unknown-parameter", "POST", "/v1/classify?topk=3", JPEG, {"Content-Type": "image/jpeg"}, 400, "topk"),
    ("get-classify", "GET", "/v1/classify", None, {}, 405, "not allowed"),
    ("delete-healthz", "DELETE", "/healthz", None, {}, 405, "not allowed"),
    ("post-page", "POST", "/", JPEG, {"Content-Type": "image/jpeg"}, 405, "not allowed"),
    ("unknown-route", "GET", "/v2/classify", None, {}, 404, "no such route"),
    ("undecodable-raw-body", "POST", "/v1/classify", b"hello", {"Content-Type": "image/jpeg"}, 422, "not an image"),
    ("truncated-jpeg", "POST", "/v1/classify", JPEG[: len(JPEG) // 2], {"Content-Type": "image/jpeg"}, 422,
     "truncated"),
    ("decompression-bomb", "POST", "/v1/classify", decompression_bomb_png(), {"Content-Type": "image/png"}, 422,
     "decompression-bomb"),
    ("text-plain", "POST", "/v1/classify", JPEG, {"Content-Type": "text/plain"}, 415, "Content-Type"),
    ("urlencoded-form", "POST", "/v1/classify", JPEG, {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "Content-Type"),
    ("form-text-field", "POST", "/v1/classify", _TEXT_FIELD_FORM,
     {"Content-Type": f"multipart/form-data; boundary={_FORM_BOUNDARY}"}, 400, "not a file"),
    ("form-without-files", "POST", "/v1/classify", b"--b--\r\n", {"Content-Type": "multipart/form-data; boundary=b"},
     400, "no file"),
    ("form-unterminated", "POST", "/v1/classify", _UNTERMINATED_FORM,
     {"Content-Type": f"multipart/form-data; boundary={_CUT_BOUNDARY}"}, 400, "closing boundary"),
    ("form-without-boundary", "POST", "/v1/classify", JPEG, {"Content-Type": "multipart/form-data"}, 400,
     "boundary"),
    ("foreign-host-name", "GET", "/healthz", None, {"Host": "attacker.example:8000"}, 400, "Host"),
]


@pytest.mark.parametrize("method, path, data, headers, status, words", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_gets_its_status_and_the_server_goes_on(server, photos, expected, method, path, data, headers,
                                                              status, words):
    got, response_headers, answer = server.request(method, path, data, headers)
    assert got == status
    assert response_headers["content-type"] == "application/json"
    error = json.loads(answer)["error"]
    assert words in error
    assert server.healthy()
    good = photos.good[1]
    assert server.post_raw(good.read_bytes()) == (200, {"results": [named(expected[good], "-")]})


def raw_response(sock: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"\xff\xd8" * 5)
        # Only 10 of the announced bytes were sent: the answer comes without the rest.
        status, answer = raw_response(sock)
    assert status == 413 and "too large" in answer["error"]
    assert server.healthy()


def send_chunked(sock: socket.socket, data: bytes, piece: int = 1 << 16, end: bool = True) -> None:
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    for start in range(0, len(data), piece):
        chunk = data[start:start + piece]
        sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    if end:
        sock.sendall(b"0\r\n\r\n")


def test_a_chunked_body_is_counted_as_it_streams(server, photos, expected):
    good = photos.good[0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        send_chunked(sock, good.read_bytes(), piece=1000)
        assert raw_response(sock) == (200, {"results": [named(expected[good], "-")]})
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        # One byte over the limit and no end: the server answers as soon as it has counted past the limit.
        send_chunked(sock, b"\0" * (MAX_BODY + 1), end=False)
        status, answer = raw_response(sock)
    assert status == 413 and "too large" in answer["error"]
    assert server.healthy()


def test_no_request_makes_the_server_read_a_path_or_fetch_a_url(server, photos, expected):
    with WebServer() as web:
        url = web.route("/cat.jpg", body(photos.good[0].read_bytes()))
        local = str(photos.good[0])
        for text in (url, local, "file://" + local):
            status, answer = server.post_raw(text.encode())
            assert status == 422 and "not an image" in answer["error"]
        boundary, form = multipart([], [("file", url), ("url", url)])
        status, _, _ = server.request("POST", "/v1/classify", form,
                                      {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 400
        # Files named like a path or a URL: their uploaded bytes are classified; the name is only a name.
        status, answer = server.post_form([(local, photos.good[2].read_bytes()), (url, photos.good[3].read_bytes())])
        assert status == 200
        assert answer["results"] == [named(expected[photos.good[2]], local), named(expected[photos.good[3]], url)]
        assert web.requests == []


# ------------------------------------------------------------------------------------------ life cycle


@pytest.mark.slow
def test_sigterm_lets_the_requests_in_flight_finish_and_exits_0(xxs_checkpoint, cache_dir, photos, expected):
    served = start_server(xxs_checkpoint.path, cache_dir)
    sockets = []
    try:
        # Three requests in flight: headers and half of each body sent when SIGTERM comes.
        for path in photos.good[:3]:
            data = path.read_bytes()
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=60)
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(data) + data[: len(data) // 2])
            sockets.append((sock, path, data))
        time.sleep(0.3)  # let the server see them (it starts a request once its headers are in)
        served.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:  # it stops accepting new connections...
            try:
                socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        for sock, path, data in sockets:  # ...and answers the ones it has
            sock.sendall(data[len(data) // 2:])
            assert raw_response(sock) == (200, {"results": [named(expected[path], "-")]})
        assert served.process.wait(60) == 0
    finally:
        for sock, _, _ in sockets:
            sock.close()
        served.stop()
    time.sleep(0.2)  # the stderr reader catches up
    assert any("stopped (SIGTERM)" in line for line in served.stderr), served.stderr
    assert not any("Traceback" in line for line in served.stderr), served.stderr


def test_healthz_is_503_until_the_model_is_loaded(xxs_checkpoint, offline_empty_cache):
    """In this process, with a loader that waits for the test's word before loading the real checkpoint."""
    import uvicorn

    from mvit_cli import load
    from mvit_cli.serve.app import ServeSettings, create_app

    gate = threading.Event()

    def loader():
        gate.wait(60)
        return load(weights=xxs_checkpoint.path)

    port = free_port()
    application = create_app(loader, ServeSettings(body_timeout_s=0.5, workers=1))
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = Served(process=None, port=port)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        assert client.get_json("/healthz") == (503, {"status": "loading"})
        status, answer = client.post_raw(JPEG, "image/jpeg")
        assert status == 503 and "loading" in answer["error"]
        gate.set()
        deadline = time.monotonic() + 120
        while client.get_json("/healthz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get_json("/healthz") == (200, {"status": "ok", "variant": "xxs", "source": "timm"})
        # A body that stops arriving is dropped after the idle timeout (0.5 s here; 30 s in mvit serve): 408.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 1000\r\n\r\n" + JPEG[:10])
            status, answer = raw_response(sock)
        assert status == 408 and "arrived" in answer["error"]
    finally:
        gate.set()
        server.should_exit = True
        thread.join(60)


def test_weights_that_cannot_load_end_the_server_with_one_line(tmp_path, offline_empty_cache):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\0" * 64)
    result = invoke("serve", "--port", "0", "--weights", str(broken))
    assert result.exit_code == 1
    assert "mvit: error:" in result.output and "Traceback" not in result.output


def test_a_port_in_use_is_one_clear_error(xxs_checkpoint, offline_empty_cache):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke("serve", "--port", str(port), "--weights", str(xxs_checkpoint.path))
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in result.output and "Traceback" not in result.output


def test_connections_to_the_listening_socket_have_nagle_off():
    """uvicorn serves the socket mvit binds; asyncio turns Nagle's algorithm off only on sockets that say they
    are TCP. With it on, every response whose body follows its headers waited ~40 ms for a delayed ACK."""
    import asyncio

    from mvit_cli.cli.serve import _listen

    listener = _listen("127.0.0.1", 0)
    seen: list[int] = []

    async def main() -> None:
        async def on_connect(reader, writer) -> None:
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)  # what uvicorn does with it
        reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert len(seen) == 1 and seen[0] != 0


def test_without_the_serve_extra_one_line_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what `import uvicorn` meets where it is not installed
    result = invoke("serve")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "pip install 'mvit-cli[serve]'" in result.output


# ------------------------------------------------------------------------------------------ the batcher


def _batcher(run, batch_size: int, max_wait_s: float = 0.0, sizes: list | None = None, **options):
    from mvit_cli.manifest import preprocessing
    from mvit_cli.serve.batcher import DynamicBatcher

    return DynamicBatcher(run, preprocessing("timm"), batch_size, max_wait_s,
                          on_batch=None if sizes is None else sizes.append, **options)


def _image(value: int):
    import numpy as np

    return np.full((256, 256, 3), value, dtype=np.uint8)


def _mean_logit(batch):
    """A stand-in model: one logit per image, its mean input value (what came in is what comes out)."""
    return batch.mean(dim=(1, 2, 3)).unsqueeze(1)


def logit_value(row) -> int:
    return round(float(row[0]) * 255)


def test_batcher_waits_for_images_on_their_way_and_only_for_them():
    sizes: list[int] = []
    batcher = _batcher(_mean_logit, batch_size=4, max_wait_s=30.0, sizes=sizes)
    try:
        # Nothing else on its way: a lone image runs at once, without waiting the 30 s for company.
        assert logit_value(batcher.submit(_image(7)).result(timeout=10)) == 7
        assert sizes == [1]
        # Six announced (being decoded): the first four wait for each other and fill a batch.
        batcher.expect(6)
        futures = [batcher.submit(_image(value), expected=True) for value in (0, 51, 102, 153)]
        assert [logit_value(future.result(timeout=10)) for future in futures] == [0, 51, 102, 153]
        assert sizes == [1, 4]
        # The fifth waits for the sixth, until that one is withdrawn (it failed to decode): then it runs alone.
        fifth = batcher.submit(_image(204), expected=True)
        time.sleep(0.2)
        assert not fifth.done()
        batcher.withdraw()
        assert logit_value(fifth.result(timeout=10)) == 204
        assert sizes == [1, 4, 1]
    finally:
        batcher.close()


def test_batcher_takes_whole_units_and_leaves_the_rest_first_in_line():
    sizes: list[int] = []
    batcher = _batcher(_mean_logit, batch_size=16, max_wait_s=30.0, sizes=sizes, unit=4)
    try:
        batcher.expect(7)  # all seven are waiting before the batch forms (it waits for those announced)
        futures = [batcher.submit(_image(value), expected=True) for value in range(7)]
        assert [logit_value(future.result(timeout=10)) for future in futures] == list(range(7))
        assert sizes == [4, 3]  # not 7 (padded to 8): the three left over go next, ahead of anything newer
    finally:
        batcher.close()


def test_batcher_drains_on_close_and_then_refuses():
    from mvit_cli.serve.batcher import BatcherClosed

    started = threading.Event()
    release = threading.Event()

    def slow(batch):
        started.set()
        release.wait(30)
        return _mean_logit(batch)

    batcher = _batcher(slow, batch_size=2)
    futures = [batcher.submit(_image(value)) for value in range(7)]
    assert started.wait(30)
    closing = threading.Thread(target=batcher.close)
    closing.start()
    time.sleep(0.1)
    with pytest.raises(BatcherClosed):
        batcher.submit(_image(0))
    release.set()
    closing.join(30)
    assert not closing.is_alive()
    assert [logit_value(future.result(timeout=0)) for future in futures] == list(range(7))


def test_a_single_threaded_batcher_warms_up_on_its_own_thread_and_leaves_the_default_alone():
    import torch

    default = torch.get_num_threads()
    seen: list[tuple[str, int, int]] = []

    def threads_seen(batch):
        seen.append((threading.current_thread().name, batch.shape[0], torch.get_num_threads()))
        return _mean_logit(batch)

    batcher = _batcher(threads_seen, batch_size=4, single_threaded=True, warm_up=(1, 4))
    try:
        assert seen == [("mvit-batcher", 1, 1), ("mvit-batcher", 4, 1)]  # warmed up before the constructor returned
        assert logit_value(batcher.submit(_image(9)).result(timeout=30)) == 9
        assert seen[-1] == ("mvit-batcher", 1, 1)
    finally:
        batcher.close()
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert torch.get_num_threads() == default and later == [default]


def test_a_warm_up_that_fails_is_raised_by_the_constructor():
    def broken(batch):
        raise RuntimeError("no model here")

    with pytest.raises(RuntimeError, match="no model here"):
        _batcher(broken, batch_size=4, warm_up=(1,))


def test_a_batch_that_fails_fails_only_its_own_images():
    def fragile(batch):
        if (batch == 1.0).all(dim=(1, 2, 3)).any():  # an all-white image breaks this model
            raise RuntimeError("broken batch")
        return _mean_logit(batch)

    batcher = _batcher(fragile, batch_size=1)
    try:
        futures = [batcher.submit(_image(value)) for value in (10, 255, 20)]
        assert logit_value(futures[0].result(timeout=30)) == 10
        with pytest.raises(RuntimeError, match="broken batch"):
            futures[1].result(timeout=30)
        assert logit_value(futures[2].result(timeout=30)) == 20
    finally:
        batcher.close()


# ------------------------------------------------------------------------------------------ the page


def test_the_page_is_self_contained(server):
    status, headers, data = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    html = data.decode()
    assert not re.search(r"https?:|//[a-z]", html.replace("http://www.w3.org", ""), re.I)  # nothing from elsewhere
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy


def test_the_page_classifies_photos_in_a_real_browser(browser, server, photos, expected, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"  # a file name that is HTML
    hostile.write_bytes(photos.good[1].read_bytes())
    driver = browser.driver
    browser.open(server.origin + "/")
    WebDriverWait(driver, 30).until(lambda d: "MobileViT-XXS" in d.find_element(By.ID, "model").text)

    driver.find_element(By.ID, "files").send_keys(f"{photos.good[0]}\n{hostile}")

    def finished(d) -> list:
        cards = d.find_elements(By.CSS_SELECTOR, "#results .card")
        return cards if len(cards) == 2 and all(c.get_attribute("data-state") == "done" for c in cards) else []

    cards = WebDriverWait(driver, 60).until(finished)
    assert [card.find_element(By.CLASS_NAME, "name").text for card in cards] == [photos.good[0].name, hostile.name]
    for card, path in zip(cards, (photos.good[0], photos.good[1])):
        assert card.find_element(By.CSS_SELECTOR, '.pred[data-rank="1"] .label').text == \
            expected[path]["predictions"][0]["label"]
        assert len(card.find_elements(By.CSS_SELECTOR, ".pred .bar")) == 5
    # The hostile name stayed text: no element was made of it, no script of it ran.
    assert driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018
    assert browser.console_errors() == []
    urls = browser.requested_urls()
    assert f"{server.origin}/v1/classify?top_k=5" in urls  # the log sees the page's requests...
    assert browser.requests_outside([server.origin], urls) == []  # ...and none goes elsewhere
