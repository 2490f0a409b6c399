"""Test images generated on the fly: smooth photo-like pictures in any size and mode, and the bad-input corpus.

Nothing here is a fixture file: every image is built from a seed, so the tests need no data in the repository.
"""

from __future__ import annotations

import io
import struct
import zlib
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def smooth_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour field with some fine texture (closer to a photo than white noise)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def write_photo(path: Path, seed: int = 0) -> Path:
    """A small photo-like PNG (48x40) at `path`, its folders made: an input that classifies fast."""
    path.parent.mkdir(parents=True, exist_ok=True)
    smooth_rgb(48, 40, seed=seed).save(path)
    return path


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def in_mode(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth image converted to a Pillow mode; alpha modes get a varying alpha channel (some fully clear)."""
    rgb = smooth_rgb(width, height, seed)
    if mode in ("RGBA", "LA"):
        alpha = np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
        image = rgb.convert("RGBA") if mode == "RGBA" else rgb.convert("L").convert("LA")
        image.putalpha(Image.fromarray(alpha, "L"))
        return image
    if mode == "PT":  # palette with a transparent colour (a typical GIF): the top-left pixel's
        image = rgb.convert("P")  # web palette: fast, unlike an adaptive one
        image.info["transparency"] = image.getpixel((0, 0))
        return image
    if mode == "P":
        return rgb.convert("P")
    return rgb.convert(mode)


def png_16bit_gray(width: int, height: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale PNG spanning most of 0..65535, and its 8-bit rendering (value / 257, rounded)."""
    values = np.asarray(smooth_rgb(width, height, seed).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(values), "PNG"), np.rint(values / 257).astype(np.uint8)


def png_16bit_rgb(width: int, height: int, seed: int = 0) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), written by hand: Pillow cannot save one."""
    rgb = np.asarray(smooth_rgb(width, height, seed), dtype=np.uint16) * 257
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)  # filter byte 0, then the row
    return _png(width, height, bit_depth=16, colour_type=2, idat=zlib.compress(raw))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg(upright: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels are `upright` rotated so that EXIF `orientation` puts them upright again.

    Orientation 6 means "rotate 90 degrees clockwise to display": store the upright image turned 90 degrees
    counter-clockwise. Stored losslessly as far as JPEG allows (quality 100) so that decoding returns the
    upright pixels (up to JPEG noise) once the orientation is applied.
    """
    stored = {6: upright.transpose(Image.Transpose.ROTATE_90), 3: upright.transpose(Image.Transpose.ROTATE_180),
              8: upright.transpose(Image.Transpose.ROTATE_270)}[orientation]
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())


def animated_gif(width: int, height: int) -> bytes:
    first = smooth_rgb(width, height, 1)
    frames = [smooth_rgb(width, height, seed) for seed in (2, 3)]
    return encode(first, "GIF", save_all=True, append_images=frames, duration=100, loop=0)


def decompression_bomb_png() -> bytes:
    """A tiny PNG that claims 20000 x 20000 pixels (400 MP, over Pillow's 179 MP hard limit).

    Only the header matters: Pillow refuses the size when opening, before reading any pixel data.
    """
    return _png(20000, 20000, bit_depth=1, colour_type=0, idat=zlib.compress(b"\x00" * 2501))


def write_corpus(folder: Path, upright: Image.Image) -> dict[str, bool]:
    """The bad-input corpus of issue 5. Returns {file name: whether it must be classified (True) or fail}."""
    folder.mkdir(parents=True, exist_ok=True)
    good_jpeg = encode(upright, "JPEG", quality=95)
    files: dict[str, tuple[bytes, bool]] = {
        "zero_bytes.jpg": (b"", False),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], False),
        "text.jpg": (b"this is not an image, just text named like one\n" * 20, False),
        "png_named.jpg": (encode(upright, "PNG"), True),
        "cmyk.jpg": (encode(upright.convert("CMYK"), "JPEG", quality=95), True),
        "gray16.png": (png_16bit_gray(120, 90)[0], True),
        "rgb16.png": (png_16bit_rgb(90, 120), True),
        "rgba.png": (encode(in_mode("RGBA", 100, 80), "PNG"), True),
        "palette.gif": (encode(in_mode("P", 80, 100), "GIF"), True),
        "animated.gif": (animated_gif(64, 48), True),
        "upright.jpg": (encode(upright, "JPEG", quality=100), True),
        "exif_rotated.jpg": (exif_rotated_jpeg(upright), True),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG"), True),
        "wide_4000x10.png": (encode(smooth_rgb(4000, 10), "PNG"), True),
        "bomb.png": (decompression_bomb_png(), False),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: good for name, (_, good) in files.items()}


def corrupt_exif_tiff() -> bytes:
    """A 26-byte TIFF whose one directory entry points past the end of the file: Pillow warns "Corrupt EXIF
    data" (a UserWarning from its TIFF plugin) and then cannot decode it."""
    entry = (270).to_bytes(2, "little") + (2).to_bytes(2, "little") + (100).to_bytes(4, "little") + \
        (4000).to_bytes(4, "little")  # ImageDescription, ASCII, 100 bytes at offset 4000
    return b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little") + entry + (0).to_bytes(4, "little")


def int32_tiff(width: int, height: int, seed: int = 0) -> bytes:
    """A 32-bit signed integer greyscale TIFF (Pillow mode "I") spanning most of its range."""
    grey = np.asarray(smooth_rgb(width, height, seed).convert("L"), dtype=np.int64)
    return encode(Image.fromarray((grey * ((1 << 31) - 1) // 255).astype(np.int32), "I"), "TIFF")


def write_hostile_corpus(folder: Path, devices: bool = False) -> dict[str, object]:
    """The attacks of issue 18 as files in `folder`: FIFOs (bare and behind a symlink), device nodes (with
    `devices`, which needs root for mknod: clones of /dev/zero and /dev/null, never the real ones), names with
    terminal control sequences, a 32-bit TIFF and a TIFF that makes Pillow warn. Returns {file name: True (must
    be classified) or the text its error record must contain}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, object] = {}

    def image(name: str, data: bytes, want: object = True) -> None:
        (folder / name).write_bytes(data)
        expected[name] = want

    image("ok.png", encode(smooth_rgb(40, 30, 1), "PNG"))
    image("clipboard\x1b]52;c;aGk=\x07.png", encode(smooth_rgb(30, 40, 2), "PNG"))
    image("red\x1b[31m\nnewline.jpg", encode(smooth_rgb(30, 30, 3), "JPEG"))
    image("int32.tif", int32_tiff(40, 30))
    image("corrupt_exif.tif", corrupt_exif_tiff(), "")
    os.mkfifo(folder / "fifo.jpg")
    expected["fifo.jpg"] = "FIFO"
    (folder / ".pipes").mkdir()  # hidden: not walked; reached only through the link
    os.mkfifo(folder / ".pipes" / "fifo")
    (folder / "link_to_fifo.png").symlink_to(folder / ".pipes" / "fifo")
    expected["link_to_fifo.png"] = "FIFO"
    if devices:
        for name, minor in (("zero.jpg", 5), ("null.png", 3)):
            os.mknod(folder / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
            expected[name] = "character device"
    return expected
