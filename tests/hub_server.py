"""A small Hugging Face hub on 127.0.0.1 for the weight tests: nothing here touches the real internet.

It answers the way huggingface.co answers huggingface_hub (2.x, and the requests-based 0.x alike) for LFS files:

- `HEAD|GET /{org}/{repo}/resolve/{revision}/{filename}` on the *hub* origin -> 302 to a CDN URL, with
  `X-Repo-Commit` (the commit the revision resolves to), `X-Linked-Etag` (the file's sha256, quoted),
  `X-Linked-Size`, `ETag` and `Location`. No Xet headers, so the client takes the plain HTTP path.
  Unknown repo -> 401 `X-Error-Code: RepoNotFound`; unknown revision -> 404 `RevisionNotFound`;
  unknown file -> 404 `EntryNotFound` (with `X-Repo-Commit`), as the real hub does.
- `GET /cdn/{sha256}` on a separate *CDN* origin (another port: huggingface_hub treats it as off-hub, as it
  treats the real CDN) -> the bytes, `Content-Length`, `Content-Disposition`, `Accept-Ranges`, and `206
  Partial Content` for `Range: bytes=N-` (how huggingface_hub resumes an interrupted download).

Faults, switched per test: `tamper` (serve altered bytes under the true headers), `drop` ("once" or
"always": close the connection after half the body), `after_drop_status` (once a connection was dropped,
the CDN answers every request with this status, e.g. 503: the client's retry fails too).

Note: huggingface_hub 2.x reads the body in 10 MB chunks, so a file smaller than that which is cut midway
has written nothing yet; its retry starts over without a `Range` header (served with 200 here).
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class HostedFile:
    data: bytes
    sha256: str  # what the hub announces (X-Linked-Etag): the true sha256 of `data`


@dataclass
class FakeHub:
    # (repo_id, commit) -> {filename: HostedFile}; branches map to commits via `refs`
    repos: dict[tuple[str, str], dict[str, HostedFile]] = field(default_factory=dict)
    refs: dict[tuple[str, str], str] = field(default_factory=dict)
    tamper: bool = False
    drop: str | None = None  # None, "once" or "always"
    after_drop_status: int | None = None
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (method, path, headers)
    _dropped: int = 0
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------------------------ content

    def add_file(self, repo_id: str, commit: str, filename: str, data: bytes,
                 branch: str | None = "main") -> HostedFile:
        hosted = HostedFile(data, hashlib.sha256(data).hexdigest())
        self.repos.setdefault((repo_id, commit), {})[filename] = hosted
        if branch:
            self.refs[(repo_id, branch)] = commit
        return hosted

    def _lookup(self, repo_id: str, revision: str) -> tuple[str | None, dict[str, HostedFile] | None, bool]:
        """(commit, files, repo_exists)."""
        repo_exists = any(r == repo_id for r, _ in self.repos)
        commit = self.refs.get((repo_id, revision), revision)
        return commit, self.repos.get((repo_id, commit)), repo_exists

    def _blob(self, sha256: str) -> HostedFile | None:
        for files in self.repos.values():
            for hosted in files.values():
                if hosted.sha256 == sha256:
                    return hosted
        return None

    def served_bytes(self, hosted: HostedFile) -> bytes:
        if not self.tamper:
            return hosted.data
        altered = bytearray(hosted.data)
        altered[len(altered) // 2] ^= 0xFF  # same size, one byte off: only a hash can tell
        return bytes(altered)

    # ------------------------------------------------------------------------------------ server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        for _ in range(2):  # hub origin, CDN origin
            server = _Server(("127.0.0.1", 0), Handler)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        """Shut both origins down, kept-alive connections included: from now on connections are refused."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
            server.close_connections()

    def reset_faults(self) -> None:
        self.tamper, self.drop, self.after_drop_status, self._dropped = False, None, None, 0

    def requests(self, method: str | None = None, prefix: str = "") -> list[tuple[str, str, dict[str, str]]]:
        with self._lock:
            return [r for r in self.log if (method is None or r[0] == method) and r[1].startswith(prefix)]


class _Server(ThreadingHTTPServer):
    """Remembers its connections so that `stop` can cut kept-alive ones too, as a vanished host would."""

    daemon_threads = True

    def __init__(self, *args, **kwargs) -> None:
        self._connections: set[socket.socket] = set()
        super().__init__(*args, **kwargs)

    def get_request(self):
        connection, address = super().get_request()
        self._connections.add(connection)
        return connection, address

    def close_connections(self) -> None:
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        self._connections.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def do_GET(self) -> None:
        self._handle(send_body=True)

    def _record(self) -> None:
        with self.fake._lock:
            self.fake.log.append((self.command, self.path, dict(self.headers.items())))

    def _handle(self, send_body: bool) -> None:
        self._record()
        path = urlsplit(self.path).path
        if path.startswith("/cdn/"):
            self._serve_blob(path[len("/cdn/"):], send_body)
        elif "/resolve/" in path:
            self._resolve(path)
        else:
            self._reply(404, {"X-Error-Code": "EntryNotFound"}, b"not found")

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"", send_body: bool = True) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and self.command != "HEAD":
            self.wfile.write(body)

    def _resolve(self, path: str) -> None:
        head, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        repo_id, revision, filename = unquote(head), unquote(revision), unquote(filename)
        commit, files, repo_exists = self.fake._lookup(repo_id, revision)
        if not repo_exists:
            self._reply(401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return
        if files is None:
            self._reply(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
            return
        hosted = files.get(filename)
        if hosted is None:
            self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                              "X-Repo-Commit": commit or ""})
            return
        self._reply(302, {
            "Location": f"{self.fake.cdn}/cdn/{hosted.sha256}?response-content-disposition=attachment",
            "X-Repo-Commit": commit or "",
            "X-Linked-Etag": f'"{hosted.sha256}"',
            "X-Linked-Size": str(len(hosted.data)),
            "ETag": f'"{hosted.sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "text/plain; charset=utf-8",
        }, b"Found. Redirecting")

    def _serve_blob(self, sha256: str, send_body: bool) -> None:
        hosted = self.fake._blob(sha256)
        if hosted is None:
            self._reply(404, {}, b"no such blob")
            return
        if self.fake._dropped and self.fake.after_drop_status:
            self._reply(self.fake.after_drop_status, {}, b"service unavailable")
            return
        data = self.fake.served_bytes(hosted)
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged:
            start = int(ranged.split("=", 1)[1].split("-", 1)[0])
        body = data[start:]
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Disposition", 'attachment; filename="weights"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hosted.sha256}"')
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        drop = self.fake.drop == "always" or (self.fake.drop == "once" and self.fake._dropped == 0)
        if drop and len(body) > 1:
            with self.fake._lock:
                self.fake._dropped += 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:  # an abrupt end of the body: the client sees the connection closed mid-file
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)


def closed_endpoint() -> str:
    """An http://127.0.0.1 URL with nothing listening: every connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------ hub files


def timm_checkpoint(variant: str = "xxs", seed: int = 0) -> tuple[object, dict]:
    """A random-weight timm MobileViT and its state dict, as timm/mobilevit_*.cvnets_in1k store it."""
    from mvit_cli.random_weights import randomize_
    from reference_models import build_timm, plain_state_dict

    model = randomize_(build_timm(variant), seed=seed).eval()
    return model, plain_state_dict(model)


def transformers_checkpoint(variant: str = "xxs", seed: int = 0) -> tuple[object, dict]:
    """A random-weight transformers MobileViTForImageClassification and its state dict (apple/mobilevit-*)."""
    from mvit_cli.random_weights import randomize_
    from reference_models import build_transformers, plain_state_dict

    model = randomize_(build_transformers(variant), seed=seed).eval()
    return model, plain_state_dict(model)


def safetensors_bytes(state_dict: dict, metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(state_dict, metadata=metadata or {"format": "pt"})


def torch_bytes(state_dict: dict) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()
