"""HTML reports (`classify --report [--explain]`, `eval --report`) and the thumbnails they are made of.

1. Thumbnails come out of the pipeline from the decode the classification used (bounded, upright, the model's
   pixels unchanged); a URL is fetched once for both.
2. The reports' numbers equal the JSON output (and the CSV files) of the same run, parsed from the HTML; the
   calibration error is recomputed here from the predictions file, the confused pairs too.
3. Hostile file names are text, never markup.
4. In a real headless chromium (tests/browser.py; skipped where it is absent): no console error, no request
   beyond the file itself, every input's top-1 label visible, a screenshot that is not blank, the filter and
   the sorting work.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from image_corpus import encode, exif_rotated_jpeg, smooth_rgb
from PIL import Image
from typer.testing import CliRunner

from mvit_cli.cli.main import app
from mvit_cli.pipeline.batching import iter_batches
from mvit_cli.preprocess import Preprocessing

from browser import browser  # noqa: F401  (the fixture)

P = Preprocessing(284, "bicubic", 256)

pytestmark = pytest.mark.usefixtures("offline_empty_cache")


# 1. Thumbnails from the pipeline ------------------------------------------------------------------------------


def decoded_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.convert("RGB")


def test_thumbnails_come_from_the_same_decode_and_leave_the_pixels_alone():
    wide = smooth_rgb(200, 90, seed=1)
    upright = smooth_rgb(60, 100, seed=2)  # portrait; stored turned on its side with EXIF orientation 6
    sources = [encode(wide, "PNG"), b"junk", exif_rotated_jpeg(upright), np.asarray(smooth_rgb(20, 10, seed=3))]
    plain = list(iter_batches(sources, P, 4, 2))
    with_thumbnails = list(iter_batches(sources, P, 4, 2, thumbnail_side=32))
    assert len(plain) == len(with_thumbnails) == 1
    (a,), (b,) = plain, with_thumbnails
    assert torch.equal(a.images, b.images) and a.indices == b.indices == [0, 2, 3] and a.failures == b.failures
    assert a.thumbnails == {} and sorted(b.thumbnails) == [0, 2, 3]  # none for the input that failed

    sizes = {position: decoded_jpeg(jpeg).size for position, jpeg in b.thumbnails.items()}
    assert sizes == {0: (32, 14), 2: (19, 32), 3: (20, 10)}  # fits 32 x 32, aspect kept, upright, never enlarged
    # The picture itself: the whole upright image, scaled. Quality-70 JPEG noise on 19 x 32 pixels of a busy
    # picture is ~11 grey levels; the image turned or mirrored is ~70 away.
    thumbnail = np.asarray(decoded_jpeg(b.thumbnails[2]), dtype=np.float64)

    def distance(picture: Image.Image) -> float:
        return float(np.abs(thumbnail - np.asarray(picture.resize((19, 32), Image.Resampling.BICUBIC))).mean())

    assert distance(upright) < 15
    assert distance(upright.transpose(Image.Transpose.ROTATE_180)) > 3 * distance(upright)
    assert distance(upright.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) > 3 * distance(upright)


def test_thumbnail_side_must_be_positive():
    with pytest.raises(ValueError, match="thumbnail_side"):
        next(iter_batches([b"x"], P, 1, 0, thumbnail_side=0))
