"""Decoding any image input (file, URL, bytes, Pillow image, array) into an upright 8-bit RGB Pillow image, or a
clear reason why not.

The format is taken from the content, never from the file name. Real photos need more than `convert("RGB")`:
EXIF orientation, transparency (composited on white, as a viewer shows it), and 16-bit or float pixels
(which Pillow's own conversion clips instead of scaling). Every failure becomes an `ImageDecodeError` whose
message is the reason shown in the error record; nothing here is fatal for a run.

Pillow's decompression-bomb guard stays on: images above `2 * Image.MAX_IMAGE_PIXELS` (~179 MP) are refused
with an error record. Images between 1x and 2x that limit (~89-179 MP, e.g. 108 MP phone photos) are decoded;
Pillow's warning about them is silenced because the run reports per image anyway, and so are its other warnings
about a file it can still decode (e.g. "Corrupt EXIF data"): the pixels are what matters, and stderr is mvit's.
Reading the bytes, with its bounds on what is read at all, is `sources.py`'s job.
"""

from __future__ import annotations

import io
import math
import re
import struct
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mvit_cli.errors import ImageDecodeError
from mvit_cli.pipeline.sources import ImageSource, ReadPolicy, read_source

WHITE = (255, 255, 255)
_UNSAFE_FORMATS = frozenset({"EPS"})

# Modes with an alpha channel, and the mode to expand them to before compositing on white.
_ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "La": "LA", "RGBa": "RGBA", "PA": "RGBA"}
# Integer modes wider than 8 bits, and the largest value of their range (mapped to 255). Mode "I" (32-bit
# integers) holds 16-bit data from PPM/PGM files, and whatever the file's BitsPerSample says from TIFF files
# (`_wide_int_max`).
_WIDE_INT_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT, _TIFF_SIGNED = 258, 339, 2
# Arrays taken as pixels, by their channels: uint8 [H, W] (grey), [H, W, 3] (RGB), [H, W, 4] (RGBA).
_ARRAY_CHANNELS = {None: "L", 3: "RGB", 4: "RGBA"}


def decode_image(source: ImageSource, exif_transpose: bool = True, draft_shorter: int | None = None,
                 policy: ReadPolicy = ReadPolicy()) -> Image.Image:
    """Decode an input (file path, URL, bytes, Pillow image, uint8 array) into an upright RGB image (mode "RGB",
    8 bits per channel). Files and URLs are read within `policy`'s bounds (`sources.read_source`).

    `exif_transpose=False` keeps the stored pixel orientation, as the published evaluation pipelines (timm,
    transformers) do: `eval` uses it so that its numbers are comparable with theirs.
    `draft_shorter` lets a JPEG decode at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, Pillow's draft
    mode) as long as its shorter side stays at least that long: several times faster for big photos, but the
    pixels are not those of a full decode (an opt-in, never the default).

    Raises ImageDecodeError with a one-line reason for empty, truncated, corrupt, non-image, unreadable and
    oversized (decompression-bomb) inputs.
    """
    data = read_source(source, policy)
    if isinstance(data, np.ndarray):
        return to_rgb(_from_array(data))
    if isinstance(data, Image.Image):
        return _decoded(lambda: data, exif_transpose, None)
    if not data:
        raise ImageDecodeError("empty file")
    return _decoded(lambda: Image.open(io.BytesIO(data), formats=_formats()), exif_transpose, draft_shorter)


def _decoded(open_image, exif_transpose: bool, draft_shorter: int | None) -> Image.Image:
    try:
        _quiet_pillow()
        # No `with`: closing would invalidate an image returned as is; the buffer is in memory anyway.
        image = open_image()
        if draft_shorter is not None and image.format == "JPEG":
            scale = draft_shorter / min(image.size)
            image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image.load()  # decode now: truncation and corruption surface here, inside our try
        white = _wide_int_max(image) if image.mode in _WIDE_INT_MAX else None  # from the file's tags, before
        return to_rgb(_upright(image) if exif_transpose else image, white)      # a transpose copies them away
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_bomb_reason(str(exc))) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image, or an image format Pillow cannot read") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error) as exc:
        # Pillow's plugins signal damaged data with any of these (e.g. "image file is truncated").
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


# How `warnings.filterwarnings("ignore", ...)` records mvit's two filters (module docstring).
_PILLOW_FILTERS = [
    ("ignore", None, Image.DecompressionBombWarning, None, 0),
    ("ignore", None, UserWarning, re.compile(r"PIL(\.|$)"), 0),
]
_filters_lock = threading.Lock()


def _quiet_pillow() -> None:
    """Silence Pillow's warnings about images it decodes anyway (module docstring). Process-wide filters, put
    (back) in front whenever they are not there. `warnings.catch_warnings` would scope them, but it is not
    thread-safe and decoding runs on threads: its exit restores the filter list it saved on entry, undoing
    whatever another thread set meanwhile. The lock keeps concurrent decoders from adding them twice."""
    if warnings.filters[:2] != _PILLOW_FILTERS:
        with _filters_lock:
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
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


def _from_array(pixels: np.ndarray) -> Image.Image:
    """uint8 pixels [H, W], [H, W, 3] or [H, W, 4] as a Pillow image (the layout Pillow and numpy share)."""
    channels = {2: None, 3: pixels.shape[-1]}.get(pixels.ndim, 0)
    if pixels.dtype != np.uint8 or channels not in _ARRAY_CHANNELS or min(pixels.shape[:2], default=0) < 1:
        raise ImageDecodeError(f"unsupported array: {pixels.dtype} {list(pixels.shape)}; expected uint8 pixels "
                               "[H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] (grey)")
    return Image.fromarray(np.ascontiguousarray(pixels))  # L, RGB or RGBA: the shape of uint8 pixels says which


def _wide_int_max(image: Image.Image) -> int:
    """The value that is white in a wide-integer image: 2^bits - 1 for a TIFF's BitsPerSample (2^(bits-1) - 1
    if its SampleFormat is signed), 65535 otherwise (Pillow's "I" from PPM/PGM files holds 16-bit data)."""
    tags = getattr(image, "tag_v2", None)
    if image.mode == "I" and tags is not None and tags.get(_TIFF_BITS_PER_SAMPLE):
        bits = int(tags[_TIFF_BITS_PER_SAMPLE][0] if isinstance(tags[_TIFF_BITS_PER_SAMPLE], tuple)
                   else tags[_TIFF_BITS_PER_SAMPLE])
        fmt = tags.get(_TIFF_SAMPLE_FORMAT)
        signed = (fmt[0] if isinstance(fmt, tuple) else fmt) == _TIFF_SIGNED
        return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return _WIDE_INT_MAX[image.mode]


def to_rgb(image: Image.Image, white: int | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha composited on white, wide integers and floats scaled, not clipped.
    `white`: the value that is white for a wide-integer image (default: `_wide_int_max`)."""
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
        white = white or _wide_int_max(image)
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(values, 0, white) * (255 / white)
        return Image.fromarray(np.rint(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "F":  # floating-point pixels: taken as intensities in [0, 1] (the convention of float TIFFs)
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return Image.fromarray(np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8), "L").convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, ...
    except ValueError:
        raise ImageDecodeError(f"unsupported colour mode {mode!r}") from None
