"""Small JPEG thumbnails of decoded images, for reports that show the pictures beside their results.

Made from the image the pipeline has already decoded (upright, RGB), on the decoding thread that decoded it, so a
report never reads, fetches or decodes an input a second time. The bound is on the longer side: a thumbnail
fits a `max_side` x `max_side` square whatever the image's aspect ratio, so its size in bytes is bounded too
(a 128 px photo thumbnail at quality 70 is about 3 KB; see the README, "Reports and heatmaps").
"""

from __future__ import annotations

import io

from PIL import Image

# Longest side of report thumbnails, in pixels, and their JPEG quality. 128 px at quality 70: 2.9 KB on average
# for the 100 ImageNet photos of ../shared/imagenet-sample-100 (160 px: 4.1 KB; quality 80: 3.5 KB): a report of
# 10,000 photos is 54 MB (benchmarks/report_size.py), and a photo is still recognisable in the grid.
THUMBNAIL_MAX_SIDE = 128
THUMBNAIL_QUALITY = 70


def thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down to fit a `max_side` square, aspect ratio kept, never enlarged, at least 1 px."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def jpeg_thumbnail(image: Image.Image, max_side: int = THUMBNAIL_MAX_SIDE,
                   quality: int = THUMBNAIL_QUALITY) -> bytes:
    """`image` (any mode; converted to RGB) scaled to fit a `max_side` square, as JPEG bytes. `image` itself is
    left untouched (it may be the caller's own Pillow image)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    size = thumbnail_size(rgb.width, rgb.height, max_side)
    # reducing_gap: a big photo is first reduced by an integer factor (a cheap box filter), then resampled.
    small = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0) if size != rgb.size else rgb
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
