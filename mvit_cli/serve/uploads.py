"""From an HTTP request to the uploaded images' bytes, within the server's limits.

A request body is the image itself (any image/* Content-Type, application/octet-stream, or none given) or a
multipart/form-data form whose file fields are the images. Only uploaded bytes come out of here, never a path or
a URL: nothing a client sends can make the server read a local file or fetch anything (the pipeline decodes
bytes as bytes).

Limits, each failing with the status a client can act on (`RequestError`):
- the body is at most `limit` bytes: a Content-Length above it is refused before any of the body is read
  (413), and a body without one (chunked) is counted as it streams and refused as soon as it passes the limit;
- a body that stops arriving for `idle_timeout` seconds is dropped (408): a client trickling bytes holds only
  its own connection, never a batch;
- a form holds at most `MAX_FILES` files (413) and nothing but files (400: a text field is most likely a path
  typed where a file was meant, `-F file=cat.jpg` for `-F file=@cat.jpg`);
- an empty body is a 400, a body of another media type a 415.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

MAX_FILES = 1000
RAW_NAME = "-"  # the record's path for an image sent as the whole body (as for stdin in classify)

_RAW_TYPES = frozenset({"", "application/octet-stream"})
_FORM_TYPE = "multipart/form-data"
_HOW = ("send the image as the body (Content-Type image/... or application/octet-stream), or as files of a "
        "multipart/form-data form (curl -F file=@photo.jpg)")


class RequestError(Exception):
    """A request the server refuses: the HTTP status and the message of its {"error": ...} body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """One uploaded image: the name its record carries, and its bytes."""

    name: str
    data: bytes


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters ("" when it sends none)."""
    return parse_options_header(request.headers.get("content-type", ""))[0].decode("latin-1")


def check_media_type(kind: str) -> bool:
    """Whether a body of media type `kind` is a form (True) or a raw image (False); 415 for anything else."""
    if kind == _FORM_TYPE:
        return True
    if kind in _RAW_TYPES or kind.startswith("image/"):
        return False
    raise RequestError(415, f"unsupported Content-Type {kind!r}; {_HOW}")


def too_large(limit: int) -> str:
    return f"request body too large: over the {limit / 1e6:g} MB limit (--max-body-mb)"


async def read_body(request: Request, limit: int, idle_timeout: float) -> bytes:
    """The whole body, at most `limit` bytes (module docstring); raises RequestError."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise RequestError(413, too_large(limit))  # answered before reading any of it
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in _with_idle_timeout(request.stream(), idle_timeout):
            total += len(chunk)
            if total > limit:
                raise RequestError(413, too_large(limit))
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before sending the whole body") from None
    return b"".join(chunks)


async def _with_idle_timeout(stream: AsyncIterator[bytes], seconds: float) -> AsyncIterator[bytes]:
    iterator = stream.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), seconds)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestError(408, f"no part of the body arrived for {seconds:g} s") from None
        yield chunk


def uploads_of(kind_is_form: bool, content_type: str, body: bytes) -> list[Upload]:
    """The uploaded images of a body already read (`read_body`), in upload order; raises RequestError."""
    if not body:
        raise RequestError(400, f"empty body: no image; {_HOW}")
    if not kind_is_form:
        return [Upload(RAW_NAME, body)]
    uploads = parse_form(content_type, body)
    if not uploads:
        raise RequestError(400, f"the form holds no file; {_HOW}")
    return uploads


@dataclass
class _Part:
    headers: dict[str, bytes]
    data: bytearray


def parse_form(content_type: str, body: bytes) -> list[Upload]:
    """The file fields of a multipart/form-data body, in order (module docstring for what is refused)."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary parameter in its Content-Type")
    parts: list[_Part] = []
    ended = False
    name, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        parts.append(_Part({}, bytearray()))
        if len(parts) > MAX_FILES:
            raise RequestError(413, f"too many files in one request: the limit is {MAX_FILES}")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[name.decode("latin-1").lower()] = bytes(value)
        name.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    def on_end() -> None:
        nonlocal ended
        ended = True

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_end": on_end}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise RequestError(400, f"malformed multipart/form-data body: {exc}") from None
    if not ended:
        raise RequestError(400, "malformed multipart/form-data body: it ends before its closing boundary")
    return [_upload(part) for part in parts]


def _upload(part: _Part) -> Upload:
    disposition, options = parse_options_header(part.headers.get("content-disposition", b"").decode("latin-1"))
    field = options.get(b"name", b"").decode("utf-8", "backslashreplace")
    if disposition != b"form-data":
        raise RequestError(400, "malformed multipart/form-data body: a part without Content-Disposition: form-data")
    if b"filename" not in options:
        raise RequestError(400, f"form field {field!r} is not a file: only image files are classified, never a "
                                "path or URL given as text (curl: -F 'file=@photo.jpg', with the @)")
    # A browser sends the file's name as UTF-8; bytes that are not are kept visible as \xNN escapes.
    name = options[b"filename"].decode("utf-8", "backslashreplace")
    return Upload(name or RAW_NAME, bytes(part.data))
