"""Decoding any image file (or bytes) into an upright 8-bit RGB Pillow image, or a clear reason why not.

The format is taken from the content, never from the file name. Real photos need more than `convert("RGB")`:
EXIF orientation, transparency (composited on white, as a viewer shows it), and 16-bit or float pixels
(which Pillow's own conversion clips instead of scaling). Every failure becomes an `ImageDecodeError` whose
message is the reason shown in the error record; nothing here is fatal for a run.

Pillow's decompression-bomb guard stays on: images above `2 * Image.MAX_IMAGE_PIXELS` (~179 MP) are refused
with an error record. Images between 1x and 2x that limit (~89-179 MP, e.g. 108 MP phone photos) are decoded;
Pillow's warning about them is silenced because the run reports per image anyway.
"""

from __future__ import annotations

import io
import math
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mvit_cli.errors import ImageDecodeError

WHITE = (255, 255, 255)
_UNSAFE_FORMATS = frozenset({"EPS"})

# Modes with an alpha channel, and the mode to expand them to before compositing on white.
_ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "La": "LA", "RGBa": "RGBA", "PA": "RGBA"}
# Integer modes wider than 8 bits, and the largest value of their range (mapped to 255).
_WIDE_INT_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


@dataclass(frozen=True)
class Unreadable:
    """An input found unreadable before decoding (e.g. a folder mvit may not list): it becomes an error record
    like any undecodable image, at its place in the input order."""

    reason: str


def decode_image(source: Path | str | bytes | Unreadable, exif_transpose: bool = True,
                 draft_shorter: int | None = None) -> Image.Image:
    """Decode a file path or raw bytes into an upright RGB image (mode "RGB", 8 bits per channel).

    `exif_transpose=False` keeps the stored pixel orientation, as the published evaluation pipelines (timm,
    transformers) do: `eval` uses it so that its numbers are comparable with theirs.
    `draft_shorter` lets a JPEG decode at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, Pillow's draft
    mode) as long as its shorter side stays at least that long: several times faster for big photos, but the
    pixels are not those of a full decode (an opt-in, never the default).

    Raises ImageDecodeError with a one-line reason for empty, truncated, corrupt, non-image, unreadable and
    oversized (decompression-bomb) inputs.
    """
    if isinstance(source, Unreadable):
        raise ImageDecodeError(source.reason)
    data = source if isinstance(source, bytes) else _read(Path(source))
    if not data:
        raise ImageDecodeError("empty file")
    try:
        _ignore_size_warning()
        # No `with`: closing would invalidate an image returned as is; the buffer is in memory anyway.
        image = Image.open(io.BytesIO(data), formats=_formats())
        if draft_shorter is not None and image.format == "JPEG":
            scale = draft_shorter / min(image.size)
            image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image.load()  # decode now: truncation and corruption surface here, inside our try
        return to_rgb(_upright(image) if exif_transpose else image)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_bomb_reason(str(exc))) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image, or an image format Pillow cannot read") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error) as exc:
        # Pillow's plugins signal damaged data with any of these (e.g. "image file is truncated").
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


# How `warnings.filterwarnings("ignore", category=...)` records its filter.
_SIZE_WARNING_FILTER = ("ignore", None, Image.DecompressionBombWarning, None, 0)
_filters_lock = threading.Lock()


def _ignore_size_warning() -> None:
    """Silence Pillow's warning for images between 1x and 2x its pixel limit: mvit decodes them and reports per
    image. A process-wide filter, put (back) in front whenever it is not there. `warnings.catch_warnings` would
    scope it, but it is not thread-safe and decoding runs on threads: its exit restores the filter list it saved
    on entry, undoing whatever another thread set meanwhile. The lock keeps concurrent decoders from adding it
    twice."""
    if warnings.filters[:1] != [_SIZE_WARNING_FILTER]:
        with _filters_lock:
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _formats() -> list[str]:
    """Every format Pillow reads except EPS, which Pillow hands to Ghostscript: running an external
    interpreter on files from anywhere is not worth it for a classifier."""
    Image.init()
    return [name for name in Image.ID if name not in _UNSAFE_FORMATS]


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels themselves are fine, keep them as stored
        return image


def _bomb_reason(message: str) -> str:
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", message)
    if found is None:  # another Pillow wording: keep its own
        return f"image too large (decompression-bomb guard): {message}"
    pixels, limit = (int(n) for n in found.groups())
    return f"image too large: {pixels:,} pixels, over the decompression-bomb limit of {limit:,} (Pillow)"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise ImageDecodeError("is a directory") from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha composited on white, wide integers and floats scaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert(_ALPHA_MODES[mode]).convert("RGBA")  # premultiplied modes un-premultiply first
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _WIDE_INT_MAX:
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(values, 0, _WIDE_INT_MAX[mode]) * (255 / _WIDE_INT_MAX[mode])
        return Image.fromarray(np.rint(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "F":  # floating-point pixels: taken as intensities in [0, 1] (the convention of float TIFFs)
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return Image.fromarray(np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8), "L").convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, ...
    except ValueError:
        raise ImageDecodeError(f"unsupported colour mode {mode!r}") from None
