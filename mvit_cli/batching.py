"""Decode and preprocess images in parallel worker processes, and hand them out as batches in input order.

Shared by `classify` and `eval`. Decoding runs in torch DataLoader workers, so it overlaps the model running in
the main process. An image that fails to decode becomes a `(position, reason)` failure of its batch; it never
stops the stream.

Memory and start-up: workers send uint8 pixels (a quarter of float32's size through shared memory, which is
small in many containers); the main process converts each batch to float32 just before handing it out. At most
`2 * workers` batches are in flight. This module imports only torch, numpy, Pillow and mvit's decoding and
preprocessing modules, so a worker started with "spawn" (macOS, Windows) imports nothing heavy beyond torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mvit_cli.errors import ImageDecodeError
from mvit_cli.images import Unreadable, decode_image
from mvit_cli.preprocess import Preprocessing, normalize, resize_and_crop, to_uint8_chw

Source = Path | bytes | Unreadable  # a file, the raw bytes of one image (stdin), or a known failure


@dataclass
class Batch:
    indices: list[int]  # positions in the input sequence of the images that decoded OK
    images: torch.Tensor  # [len(indices), 3, H, W] float32, preprocessed
    failures: list[tuple[int, str]]  # (position, reason) of inputs that failed to decode in this chunk


@dataclass
class _RawBatch:
    """What a worker sends back: pixels still uint8."""

    indices: list[int]
    pixels: torch.Tensor  # [len(indices), 3, H, W] uint8
    failures: list[tuple[int, str]]


def load_pixels(source: Source, preprocessing: Preprocessing, exif_transpose: bool = True) -> np.ndarray:
    """Decode one image and resize/crop it: [3, crop, crop] uint8. Raises on any failure."""
    return to_uint8_chw(resize_and_crop(decode_image(source, exif_transpose), preprocessing))


class _Images(Dataset):
    def __init__(self, sources: Sequence[Source], preprocessing: Preprocessing, exif_transpose: bool):
        self.sources = sources
        self.preprocessing = preprocessing
        self.exif_transpose = exif_transpose

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, position: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return position, load_pixels(self.sources[position], self.preprocessing, self.exif_transpose), None
        except ImageDecodeError as exc:
            return position, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure is this image's error record, never the run's
            return position, None, f"cannot process image: {type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, np.ndarray | None, str | None]], crop_size: int) -> _RawBatch:
    ok = [(position, pixels) for position, pixels, _ in items if pixels is not None]
    failures = [(position, reason) for position, pixels, reason in items if pixels is None]
    if ok:
        pixels = torch.from_numpy(np.stack([p for _, p in ok]))
    else:
        pixels = torch.empty((0, 3, crop_size, crop_size), dtype=torch.uint8)
    return _RawBatch([position for position, _ in ok], pixels, failures)


def num_batches(num_sources: int, batch_size: int) -> int:
    return -(-num_sources // batch_size)


def iter_batches(
    sources: Sequence[Source],
    preprocessing: Preprocessing,
    batch_size: int,
    workers: int,
    exif_transpose: bool = True,
) -> Iterator[Batch]:
    """Batches of preprocessed images, in input order, decoded by `workers` processes (0: in this process).

    Every input appears exactly once, either in some batch's `indices` or in its `failures`.
    `exif_transpose=False` ignores EXIF orientation, like the reference evaluation pipelines (see images.py).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    loader = DataLoader(
        _Images(sources, preprocessing, exif_transpose),
        batch_size=batch_size,
        shuffle=False,
        num_workers=max(0, workers),
        collate_fn=partial(_collate, crop_size=preprocessing.crop_size),
        prefetch_factor=2 if workers > 0 else None,
    )
    for raw in loader:
        yield Batch(raw.indices, normalize(raw.pixels, preprocessing), raw.failures)
