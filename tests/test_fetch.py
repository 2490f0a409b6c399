"""mvit_cli.pipeline.fetch against a real HTTP(S) server on 127.0.0.1 (tests/http_fixtures.py).

Timeouts in these tests are small so that a fetch that fails to enforce one fails the test quickly
instead of hanging it; every fetch also carries a total deadline as a backstop.
"""

from __future__ import annotations

import http.client
import os
import pickle
import threading
import time
import tracemalloc

import pytest

from http_fixtures import (
    WebServer,
    body,
    chunked,
    hang,
    head_then_hang,
    lying_length,
    make_tls_files,
    raw,
    redirect,
    refused_port,
    status,
    trickle,
    tcp_server,
    unresponsive_port,
)
from mvit_cli import __version__
from mvit_cli.pipeline.fetch import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_BYTES,
    DEFAULT_READ_TIMEOUT,
    MAX_REDIRECTS,
    FetchError,
    FetchLimits,
    fetch,
    is_url,
)

QUICK = FetchLimits(connect_timeout=2.0, read_timeout=2.0, total_timeout=10.0)


def quick(**changes: object) -> FetchLimits:
    return FetchLimits(**{**QUICK.__dict__, **changes})


@pytest.fixture
def server():
    with WebServer() as web:
        yield web


def fails(url: str, limits: FetchLimits = QUICK, cancelled: threading.Event | None = None) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch(url, limits, cancelled)
    assert "\n" not in str(caught.value)
    return caught.value


# ---------------------------------------------------------------------------------------- success


def test_body_is_returned_byte_exact_with_the_documented_headers(server: WebServer) -> None:
    data = os.urandom(300_000)  # several reads, not one buffer
    assert fetch(server.route("/cat.jpg", body(data)), QUICK) == data
    (request,) = server.requests
    assert request.headers["user-agent"] == f"mvit/{__version__}"
    assert request.headers["accept"] == "image/*,*/*;q=0.8"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert "authorization" not in request.headers


def test_empty_body_is_returned_as_empty_bytes(server: WebServer) -> None:
    assert fetch(server.route("/empty", body(b"")), QUICK) == b""


def test_chunked_body_is_reassembled(server: WebServer) -> None:
    piece = os.urandom(1000)
    assert fetch(server.route("/chunks", chunked(piece, count=7)), QUICK) == piece * 7


def test_body_of_exactly_max_bytes_is_accepted(server: WebServer) -> None:
    data = os.urandom(4096)
    limits = quick(max_bytes=4096)
    assert fetch(server.route("/sized", body(data)), limits) == data
    assert fetch(server.route("/chunked", chunked(data[:1024], count=4)), limits) == data[:1024] * 4


def test_path_with_spaces_and_non_ascii_is_percent_encoded(server: WebServer) -> None:
    server.route("/my%20photos/%C3%A9t%C3%A9.jpg", body(b"summer"))
    assert fetch(server.url("/my photos/été.jpg?size=big w"), QUICK) == b"summer"
    assert server.requests[0].path == "/my%20photos/%C3%A9t%C3%A9.jpg?size=big%20w"


# ---------------------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize(
    ("code", "reason"),
    [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error"), (403, "HTTP 403 Forbidden")],
)
def test_error_status_is_reported_with_number_and_reason(server: WebServer, code: int, reason: str) -> None:
    url = server.route("/x", status(code, data=b"<html>nope</html>"))
    error = fails(url)
    assert str(error) == reason
    assert error.status == code
    assert error.url == url


def test_error_status_without_reason_phrase_gets_the_standard_one(server: WebServer) -> None:
    error = fails(server.route("/x", raw(b"HTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n")))
    assert (str(error), error.status) == ("HTTP 503 Service Unavailable", 503)


# ---------------------------------------------------------------------------------------- redirects


def test_redirect_chain_of_three_is_followed(server: WebServer) -> None:
    server.route("/1", redirect(server.url("/2"), 301))
    server.route("/2", redirect("/3", 303))
    server.route("/3", redirect("/final.jpg", 307))
    server.route("/final.jpg", body(b"the image"))
    assert fetch(server.url("/1"), QUICK) == b"the image"
    assert server.paths() == ["/1", "/2", "/3", "/final.jpg"]


def _chain(server: WebServer, length: int) -> str:
    for i in range(length):
        server.route(f"/hop{i}", redirect(f"/hop{i + 1}", 308 if i % 2 else 302))
    server.route(f"/hop{length}", body(b"end"))
    return server.url("/hop0")


def test_exactly_max_redirects_are_followed(server: WebServer) -> None:
    assert fetch(_chain(server, MAX_REDIRECTS), QUICK) == b"end"


def test_one_redirect_too_many_fails_without_following_it(server: WebServer) -> None:
    error = fails(_chain(server, MAX_REDIRECTS + 1))
    assert str(error) == "too many redirects (more than 5)"
    assert error.url == server.url("/hop0")
    assert len(server.requests) == MAX_REDIRECTS + 1  # the 6th Location was never requested


def test_max_redirects_zero_refuses_any_redirect(server: WebServer) -> None:
    error = fails(_chain(server, 1), quick(max_redirects=0))
    assert str(error) == "too many redirects (more than 0)"


def test_relative_redirect_is_resolved_against_the_current_url(server: WebServer) -> None:
    server.route("/a/b/start", redirect("../img/cat.jpg?v=2"))
    server.route("/a/img/cat.jpg", body(b"meow"))
    assert fetch(server.url("/a/b/start"), QUICK) == b"meow"
    assert [r.path for r in server.requests] == ["/a/b/start", "/a/img/cat.jpg?v=2"]


def test_redirect_to_another_origin_is_followed(server: WebServer) -> None:
    with WebServer() as other:
        other.route("/there.jpg", body(b"elsewhere"))
        server.route("/here", redirect(other.url("/there.jpg")))
        assert fetch(server.url("/here"), QUICK) == b"elsewhere"
        assert other.paths() == ["/there.jpg"]


@pytest.mark.parametrize(
    ("location", "scheme"),
    [
        ("ftp://127.0.0.1/cat.jpg", "ftp:"),
        ("file:///etc/passwd", "file:"),
        ("FILE:///etc/hostname", "file:"),
        ("data:image/png;base64,iVBORw0KGgo=", "data:"),
        ("javascript:alert(1)", "javascript:"),
    ],
)
def test_redirect_to_a_non_http_scheme_is_refused(server: WebServer, location: str, scheme: str) -> None:
    error = fails(server.route("/go", redirect(location)))
    assert str(error) == f"redirect to unsupported scheme {scheme}"


def test_redirect_without_location_is_an_error(server: WebServer) -> None:
    error = fails(server.route("/nowhere", redirect(None, 302)))
    assert str(error) == "redirect (HTTP 302) without a Location header"


def test_redirect_to_a_url_with_credentials_is_refused(server: WebServer) -> None:
    server.route("/login", redirect(f"http://me:secret@127.0.0.1:{server.port}/cat.jpg"))
    server.route("/cat.jpg", body(b"meow"))
    assert "credentials" in str(fails(server.url("/login")))
    assert server.paths() == ["/login"]


# ---------------------------------------------------------------------------------------- size


def test_content_length_over_limit_is_refused_before_reading_the_body(server: WebServer) -> None:
    # The body never comes: had fetch tried to read it, it would have timed out instead.
    url = server.route("/huge", head_then_hang({"Content-Length": str(10 * 1024 * 1024)}))
    start = time.monotonic()
    error = fails(url, quick(max_bytes=1024 * 1024, read_timeout=3.0))
    assert str(error) == "larger than the 1 MB download limit"
    assert time.monotonic() - start < 2.0


def test_body_one_byte_over_the_limit_is_refused(server: WebServer) -> None:
    assert str(fails(server.route("/big", body(b"x" * 4097)), quick(max_bytes=4096))) == (
        "larger than the 4096 bytes download limit"
    )


def test_endless_chunked_body_is_cut_off_at_the_limit(server: WebServer) -> None:
    url = server.route("/endless", chunked(os.urandom(64 * 1024), count=None))
    limit = 256 * 1024
    tracemalloc.start()
    try:
        error = fails(url, quick(max_bytes=limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(error) == "larger than the 262144 bytes download limit"
    assert peak < 4 * limit  # the body was not buffered past the limit
    # The server only stops when its writes fail, i.e. when the client hung up on it.
    assert server.finished["/endless"].wait(5.0), "the server is still sending: the client never hung up"
    assert server.sent["/endless"] < 64 * 1024 * 1024


def test_reads_never_ask_for_more_than_one_byte_past_the_limit(
    server: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What arrives per recv depends on timing, so memory alone cannot show this reliably: watch the
    # sizes asked of http.client instead. 64 KiB chunks against a 1000-byte limit.
    asked: list[int] = []
    original = http.client.HTTPResponse.read1

    def read1(response: http.client.HTTPResponse, n: int = -1) -> bytes:
        asked.append(n)
        return original(response, n)

    monkeypatch.setattr(http.client.HTTPResponse, "read1", read1)
    error = fails(server.route("/endless", chunked(os.urandom(64 * 1024), count=None)), quick(max_bytes=1000))
    assert str(error) == "larger than the 1000 bytes download limit"
    assert asked and all(0 < n <= 1001 for n in asked)


def test_body_shorter_than_its_content_length_is_an_error(server: WebServer) -> None:
    error = fails(server.route("/cut", lying_length(1000, b"0123456789")))
    assert str(error) == "connection closed after 10 of 1000 bytes"


# ---------------------------------------------------------------------------------------- time


def test_server_that_never_answers_times_out_on_read(server: WebServer) -> None:
    start = time.monotonic()
    error = fails(server.route("/silent", hang()), quick(read_timeout=0.5))
    elapsed = time.monotonic() - start
    assert str(error) == "timed out after 0.5 s (read)"
    assert 0.4 < elapsed < 2.0
    assert error.status is None


def test_slow_but_steady_body_is_not_cut_by_the_read_timeout(server: WebServer) -> None:
    data = b"12345678"  # 0.8 s in all, never 0.4 s without a byte
    assert fetch(server.route("/slow", trickle(data, 0.1)), quick(read_timeout=0.4)) == data


def test_total_timeout_bounds_a_steady_trickle(server: WebServer) -> None:
    start = time.monotonic()
    error = fails(server.route("/slow", trickle(b"x" * 100, 0.05)), quick(read_timeout=1.0, total_timeout=0.6))
    assert str(error) == "timed out after 0.6 s (total)"
    assert time.monotonic() - start < 1.5


def test_connect_timeout() -> None:
    with unresponsive_port() as port:
        if port is None:
            pytest.skip("this kernel does not leave a connect to a full accept queue hanging")
        start = time.monotonic()
        error = fails(f"http://127.0.0.1:{port}/", quick(connect_timeout=0.3))
        assert str(error) == "timed out after 0.3 s (connect)"
        assert time.monotonic() - start < 1.5


def test_connection_refused() -> None:
    error = fails(f"http://127.0.0.1:{refused_port()}/cat.jpg")
    assert str(error) == "connection refused"
    assert error.status is None


def test_unresolvable_host() -> None:
    # .invalid never resolves (RFC 2606); a sandbox resolver may still take its time, hence the timeout.
    error = fails("http://mvit-test.invalid/cat.jpg", quick(connect_timeout=3.0))
    if str(error) == "timed out after 3 s (connect)":
        pytest.skip("DNS lookups time out here instead of failing")
    assert str(error) == "cannot resolve host mvit-test.invalid"


# ---------------------------------------------------------------------------------------- cancellation


def test_cancel_interrupts_a_blocked_read(server: WebServer) -> None:
    url = server.route("/silent", hang())
    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    start = time.monotonic()
    error = fails(url, quick(read_timeout=30.0, total_timeout=None), cancelled)
    assert str(error) == "cancelled"
    assert time.monotonic() - start < 1.3


def test_cancel_interrupts_a_blocked_connect() -> None:
    with unresponsive_port() as port:
        if port is None:
            pytest.skip("this kernel does not leave a connect to a full accept queue hanging")
        cancelled = threading.Event()
        threading.Timer(0.3, cancelled.set).start()
        start = time.monotonic()
        error = fails(f"http://127.0.0.1:{port}/", quick(connect_timeout=30.0, total_timeout=None), cancelled)
        assert str(error) == "cancelled"
        assert time.monotonic() - start < 1.3


def test_fetch_already_cancelled_sends_nothing(server: WebServer) -> None:
    cancelled = threading.Event()
    cancelled.set()
    assert str(fails(server.route("/cat.jpg", body(b"meow")), cancelled=cancelled)) == "cancelled"
    time.sleep(0.1)
    assert server.requests == []


# ---------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "unsupported URL scheme file:"),
        ("ftp://127.0.0.1/cat.jpg", "unsupported URL scheme ftp:"),
        ("data:image/png;base64,iVBORw0KGgo=", "unsupported URL scheme data:"),
        ("javascript:alert(1)", "unsupported URL scheme javascript:"),
        ("cat.jpg", "unsupported URL scheme (none)"),
        ("http://127.0.0.1:99999/", "invalid URL: Port out of range 0-65535"),
        ("http:///cat.jpg", "invalid URL: no host name"),
    ],
)
def test_unfetchable_url_is_refused(url: str, reason: str) -> None:
    error = fails(url)
    assert str(error) == reason
    assert error.url == url


def test_credentials_in_the_url_are_refused_and_nothing_is_sent(server: WebServer) -> None:
    server.route("/cat.jpg", body(b"meow"))
    error = fails(f"http://me:secret@127.0.0.1:{server.port}/cat.jpg")
    assert str(error) == "URL with credentials (user:password@) is not supported"
    assert server.requests == []


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"", "server closed the connection without answering"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "invalid HTTP response: got more than 100 headers"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "invalid HTTP response: 'SSH-2.0-OpenSSH_9.6'"),
    ],
)
def test_malformed_answer_is_a_short_error(server: WebServer, response: bytes, reason: str) -> None:
    assert str(fails(server.route("/odd", raw(response)))) == reason


def test_fetch_error_survives_pickling(server: WebServer) -> None:
    # Errors may travel from a worker process to the one that reports them.
    error = pickle.loads(pickle.dumps(fails(server.route("/gone", status(410)))))
    assert (type(error), str(error), error.url, error.status) == (
        FetchError,
        "HTTP 410 Gone",
        server.url("/gone"),
        410,
    )


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        FetchLimits(read_timeout=0)
    with pytest.raises(ValueError):
        FetchLimits(max_bytes=-1)
    assert (FetchLimits().max_bytes, FetchLimits().connect_timeout, FetchLimits().read_timeout) == (
        DEFAULT_MAX_BYTES,
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_READ_TIMEOUT,
    )


# ---------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory):
    files = make_tls_files(tmp_path_factory.mktemp("tls"))
    if files is None:
        pytest.skip("no openssl tool to make a test certificate")
    return files


def test_https_with_a_trusted_certificate(tls_files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca_cert))
    data = os.urandom(100_000)
    with WebServer(tls=tls_files.server_context()) as secure:
        assert fetch(secure.route("/cat.jpg", body(data)), QUICK) == data


def test_https_with_an_untrusted_certificate_is_refused(tls_files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with WebServer(tls=tls_files.server_context()) as secure:
        error = fails(secure.route("/cat.jpg", body(b"meow")))
        assert str(error).startswith("TLS certificate verification failed: ")
        assert secure.requests == []


def test_https_to_a_server_that_does_not_speak_tls_is_a_tls_error() -> None:
    with tcp_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as port:
        error = fails(f"https://127.0.0.1:{port}/cat.jpg")
    assert str(error).startswith("TLS error: ")


def test_tls_handshake_that_never_completes_times_out_as_connect() -> None:
    with tcp_server(None) as port:
        start = time.monotonic()
        error = fails(f"https://127.0.0.1:{port}/", quick(connect_timeout=0.5))
    assert str(error) == "timed out after 0.5 s (connect)"
    assert time.monotonic() - start < 1.5


# ---------------------------------------------------------------------------------------- is_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://example.com/cat.jpg", True),
        ("https://example.com/cat.jpg", True),
        ("HTTPS://EXAMPLE.COM/CAT.JPG", True),
        ("Http://example.com", True),
        ("cat.jpg", False),
        ("/data/http://weird/cat.jpg", False),
        ("./https/cat.jpg", False),
        ("ftp://example.com/cat.jpg", False),
        ("file:///etc/passwd", False),
        ("http:/example.com", False),
        ("httpx://example.com", False),
        ("", False),
    ],
)
def test_is_url(text: str, expected: bool) -> None:
    assert is_url(text) is expected
