"""Parallel decoding into batches: input order, every input exactly once, failures never stop the stream."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from image_corpus import encode, smooth_rgb

from mvit_cli.batching import iter_batches
from mvit_cli.images import decode_image
from mvit_cli.preprocess import Preprocessing, preprocess

P = Preprocessing(284, "bicubic", 256)


@pytest.fixture(scope="module")
def sources():
    good = [encode(smooth_rgb(40 + 7 * i, 30 + 5 * i, seed=i), "PNG") for i in range(6)]
    # positions: 0 ok, 1 bad, 2 ok, 3 ok, 4 bad, 5 bad, 6 bad, 7 ok, 8 ok, 9 ok
    return [good[0], b"", good[1], good[2], b"junk", b"", b"\xff\xd8\xff", good[3], good[4], good[5]]


def collect(sources, batch_size, workers):
    return list(iter_batches(sources, P, batch_size, workers))


@pytest.mark.parametrize("workers", [0, 2])
def test_order_coverage_and_failures(sources, workers):
    batches = collect(sources, 3, workers)
    assert len(batches) == 4
    seen = []
    for number, batch in enumerate(batches):
        positions = sorted(batch.indices + [position for position, _ in batch.failures])
        assert positions == list(range(3 * number, min(3 * number + 3, len(sources))))  # one chunk per batch
        assert batch.indices == sorted(batch.indices)
        assert batch.images.shape == (len(batch.indices), 3, 256, 256) and batch.images.dtype == torch.float32
        seen += positions
    assert seen == list(range(len(sources)))
    failures = dict(f for batch in batches for f in batch.failures)
    assert sorted(failures) == [1, 4, 5, 6]
    assert failures[1] == failures[5] == "empty file"
    assert "not an image" in failures[4]
    # positions 3..5 -> one good image; a batch of nothing but failures still comes out, empty
    only_failures = list(iter_batches([b"", b"x"], P, 4, workers))
    assert len(only_failures) == 1 and only_failures[0].images.shape == (0, 3, 256, 256)
    assert [p for p, _ in only_failures[0].failures] == [0, 1]


def test_pixels_are_the_preprocessed_images_whatever_the_workers(sources):
    inline, parallel = collect(sources, 4, 0), collect(sources, 4, 2)
    for a, b in zip(inline, parallel):
        assert a.indices == b.indices and torch.equal(a.images, b.images)
    for batch in inline:
        for row, position in enumerate(batch.indices):
            assert torch.equal(batch.images[row], preprocess(decode_image(sources[position]), P))


def test_worker_imports_stay_light():
    """Workers started with "spawn" import this module: it must not pull in the model or the references."""
    code = ("import sys, mvit_cli.batching; heavy = [m for m in ('mvit_cli.model', 'mvit_cli.inference', "
            "'transformers', 'timm', 'safetensors', 'huggingface_hub', 'rich') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
