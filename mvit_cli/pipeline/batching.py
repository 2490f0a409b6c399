"""Decode and preprocess images on worker threads, hand them out as batches in input order, and keep the model
busy with them.

Shared by `classify` and `eval`. Decoding runs on a small thread pool while the model runs on the cores' own
threads: Pillow releases the GIL while it decodes and resamples, and so does the model. An image that fails to
decode becomes a `(position, reason)` failure of its batch; it never stops the stream.

Why threads, not worker processes (mvit used torch DataLoader processes before): with processes,
every batch crossed a process boundary (pickling, shared memory, a second process competing for the same cores),
and every run paid for starting them. Measured end to end (`classify`, 300 ImageNet JPEGs, batch 32, one
decoder, 2 cores): XXS 117 -> 131-140 images/s, XS 73-76 -> 80-83, S 48.6 -> 52-54. Nothing is pickled, nothing
needs /dev/shm (small in many containers), and nothing is imported again under "spawn" (macOS, Windows).

Decoded pixels stay uint8 and channels-last ([H, W, 3], as Pillow lays them out) until the calling thread turns
a whole batch into float32 in one pass, still channels-last: the layout the CPU model runs in. At most
`PREFETCH_BATCHES` batches are decoded ahead of the one being handed out, and the inputs are taken from their
iterable only that far ahead: a list of millions of inputs streams through in constant memory.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np
import torch

from mvit_cli.errors import ImageDecodeError
from mvit_cli.pipeline.images import decode_image
from mvit_cli.pipeline.sources import ImageSource, ReadPolicy
from mvit_cli.pipeline.thumbnails import jpeg_thumbnail
from mvit_cli.preprocess import Preprocessing, normalize, resize_and_crop, to_uint8_hwc

Item = TypeVar("Item")

# Size of the first batch; the next ones double up to the batch size. The model starts once the first few images
# are decoded instead of a whole batch (32 images: ~0.1 s of one core), and the first results show sooner.
# Four keeps two cores busy from the start (runners.torch_cpu.CPU_MICRO_BATCH images per core at a time).
FIRST_BATCH = 4

# Batches being decoded beyond the one handed out (the decoders' look-ahead; bounds the memory held).
PREFETCH_BATCHES = 2


@dataclass
class Batch(Generic[Item]):
    start: int  # position in the input sequence of the batch's first input
    items: list[Item]  # the batch's inputs, in order: positions start .. start + len(items) - 1
    indices: list[int]  # positions of the inputs that decoded OK
    images: torch.Tensor  # [len(indices), 3, H, W] float32, preprocessed; channels_last in memory
    failures: list[tuple[int, str]]  # (position, reason) of inputs that failed to decode in this batch
    # position -> JPEG thumbnail of the decoded image, for the inputs that decoded OK (iter_batches'
    # `thumbnail_side`; empty without it)
    thumbnails: dict[int, bytes] = field(default_factory=dict)

    def item(self, position: int) -> Item:
        return self.items[position - self.start]


def load_pixels(source: ImageSource, preprocessing: Preprocessing, exif_transpose: bool = True,
                fast: bool = False, policy: ReadPolicy = ReadPolicy()) -> np.ndarray:
    """Decode one image and resize/crop it: [crop, crop, 3] uint8. Raises on any failure.

    `fast`: JPEGs decoded at a reduced scale and only the crop resampled (see `decode_image`, `resize_and_crop`);
    not the reference protocol's pixels.
    """
    draft_shorter = preprocessing.resize_shorter if fast else None
    image = decode_image(source, exif_transpose, draft_shorter, policy)
    return to_uint8_hwc(resize_and_crop(image, preprocessing, fast))


def load_pixels_and_thumbnail(source: ImageSource, preprocessing: Preprocessing, exif_transpose: bool, fast: bool,
                              policy: ReadPolicy, max_side: int) -> tuple[np.ndarray, bytes]:
    """`load_pixels`, plus a JPEG thumbnail of the whole decoded image (upright, before the resize and crop) that
    fits a `max_side` square: made from the same decode, so nothing is read or decoded twice."""
    draft_shorter = preprocessing.resize_shorter if fast else None
    image = decode_image(source, exif_transpose, draft_shorter, policy)
    return to_uint8_hwc(resize_and_crop(image, preprocessing, fast)), jpeg_thumbnail(image, max_side)


def pixels_or_reason(source: ImageSource, preprocessing: Preprocessing, exif_transpose: bool = True, fast: bool = False,
                     policy: ReadPolicy = ReadPolicy(),
                     thumbnail_side: int | None = None) -> np.ndarray | tuple[np.ndarray, bytes] | str:
    """The image's pixels (with its thumbnail when `thumbnail_side` is given), or the reason it has none: the
    text of its error record. Never raises for a bad image (a server decodes uploads with this, so its records
    match classify's)."""
    try:
        if thumbnail_side is not None:
            return load_pixels_and_thumbnail(source, preprocessing, exif_transpose, fast, policy, thumbnail_side)
        return load_pixels(source, preprocessing, exif_transpose, fast, policy)
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure is this image's error record, never the run's
        return f"cannot process image: {type(exc).__name__}: {exc}"


def _batch(start: int, items: list, decoded: list, preprocessing: Preprocessing) -> Batch:
    span = range(start, start + len(items))
    thumbnails = {position: entry[1] for position, entry in zip(span, decoded) if isinstance(entry, tuple)}
    if thumbnails:
        decoded = [entry[0] if isinstance(entry, tuple) else entry for entry in decoded]
    ok = [(position, pixels) for position, pixels in zip(span, decoded) if not isinstance(pixels, str)]
    failures = [(position, reason) for position, reason in zip(span, decoded) if isinstance(reason, str)]
    images = batch_tensor([p for _, p in ok], preprocessing)
    return Batch(start, items, [position for position, _ in ok], images, failures, thumbnails)


def batch_tensor(pixels: list[np.ndarray], preprocessing: Preprocessing) -> torch.Tensor:
    """Decoded images ([crop, crop, 3] uint8 each) -> the model's input batch [B, 3, crop, crop] float32,
    channels_last in memory: the one conversion every batch of every caller goes through."""
    if pixels:
        stacked = torch.from_numpy(np.stack(pixels))
    else:
        size = preprocessing.crop_size
        stacked = torch.empty((0, size, size, 3), dtype=torch.uint8)
    return normalize(stacked.permute(0, 3, 1, 2), preprocessing)


def batch_sizes(batch_size: int) -> Iterator[int]:
    """Sizes of consecutive batches: FIRST_BATCH, doubling, then `batch_size` for ever."""
    size = min(FIRST_BATCH, batch_size)
    while True:
        yield size
        size = min(2 * size, batch_size)


def batch_spans(num_sources: int, batch_size: int) -> Iterator[range]:
    """Consecutive position ranges covering `num_sources` inputs (`batch_sizes`)."""
    start = 0
    for size in batch_sizes(batch_size):
        if start >= num_sources:
            return
        yield range(start, min(start + size, num_sources))
        start += size


def num_batches(num_sources: int, batch_size: int) -> int:
    return sum(1 for _ in batch_spans(num_sources, batch_size))


def _chunks(items: Iterable[Item], batch_size: int) -> Iterator[tuple[int, list[Item]]]:
    """(start position, items) of each batch, taken from `items` only as they are asked for."""
    iterator, start = iter(items), 0
    for size in batch_sizes(batch_size):
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield start, chunk
        start += len(chunk)


def iter_batches(
    items: Iterable[Item],
    preprocessing: Preprocessing,
    batch_size: int,
    workers: int,
    exif_transpose: bool = True,
    fast_decode: bool = False,
    source_of: Callable[[Item], ImageSource] | None = None,
    policy: ReadPolicy | None = None,
    thumbnail_side: int | None = None,
) -> Iterator[Batch[Item]]:
    """Batches of preprocessed images, in input order, decoded by `workers` threads (0: on the calling thread).

    `items` may be any iterable, of any length: it is consumed only a few batches ahead. Each item is an input
    (`sources.ImageSource`), or anything `source_of` turns into one. Every input appears exactly once, either in
    some batch's `indices` or in its `failures`. Batches hold `batch_size` consecutive inputs, except the first
    few, which grow to it (`batch_sizes`). `exif_transpose=False` ignores EXIF orientation, like the reference
    evaluation pipelines (see images.py). `fast_decode` trades exact reference pixels for speed (`load_pixels`).
    `policy` bounds every read (`sources.ReadPolicy`). `thumbnail_side`: also make a JPEG thumbnail of each
    decoded image that fits that square (`Batch.thumbnails`), on the decoding threads, from the same decode.

    Closing the iterator early (or Ctrl-C) cancels the reads in flight (URL downloads stop within a fraction of
    a second) and drops the decoding not yet started.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if thumbnail_side is not None and thumbnail_side < 1:
        raise ValueError("thumbnail_side must be at least 1")
    cancelled = threading.Event()
    policy = replace(policy or ReadPolicy(), cancelled=cancelled)
    source_of = source_of or (lambda item: item)

    def decode(item: Item) -> np.ndarray | tuple[np.ndarray, bytes] | str:
        return pixels_or_reason(source_of(item), preprocessing, exif_transpose, fast_decode, policy, thumbnail_side)

    chunks = _chunks(items, batch_size)
    if workers <= 0:
        for start, chunk in chunks:
            yield _batch(start, chunk, [decode(item) for item in chunk], preprocessing)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mvit-decode")
    queued: deque[tuple[int, list, list[Future]]] = deque()
    try:
        for start, chunk in chunks:
            queued.append((start, chunk, [pool.submit(decode, item) for item in chunk]))
            if len(queued) > PREFETCH_BATCHES:
                yield _finish(queued.popleft(), preprocessing)
        while queued:
            yield _finish(queued.popleft(), preprocessing)
    finally:
        cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(queued: tuple[int, list, list[Future]], preprocessing: Preprocessing) -> Batch:
    start, chunk, futures = queued
    return _batch(start, chunk, [future.result() for future in futures], preprocessing)


def run_batches(batches: Iterable[Batch], run: Callable[[torch.Tensor], torch.Tensor]
                ) -> Iterator[tuple[Batch, torch.Tensor | None]]:
    """Each batch with its logits (None for a batch of failures only), in order.

    `run` maps images to logits (`LoadedModel.run`). A runner that can compute in the background (`submit`, the
    per-core CPU runners) is handed the next batch before the caller gets this one, so the cores keep working
    while the caller counts or prints a batch and while the next one is fetched and converted, instead of
    idling at every batch boundary. At most two batches are in the model at a time.
    """
    submit: Callable[[torch.Tensor], Any] | None = getattr(run, "submit", None)
    if submit is None:
        for batch in batches:
            yield batch, run(batch.images) if batch.indices else None
        return
    # (batch, pending logits): the one whose logits are awaited, and the one handed to the model after it
    waiting: tuple[Batch, Any] | None = None
    ahead: tuple[Batch, Any] | None = None
    try:
        for batch in batches:
            waiting, ahead = ahead, (batch, submit(batch.images) if batch.indices else None)
            if waiting is not None:
                yield _logits_of(waiting)
                waiting = None
        if ahead is not None:
            waiting, ahead = ahead, None
            yield _logits_of(waiting)
            waiting = None
    finally:
        for entry in (waiting, ahead):  # the caller stopped early (or Ctrl-C while waiting): drop chunks not started
            if entry is not None and entry[1] is not None:
                entry[1].cancel()


def _logits_of(entry: tuple[Batch, Any]) -> tuple[Batch, torch.Tensor | None]:
    batch, pending = entry
    return batch, pending.result() if pending is not None else None
