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
`PREFETCH_BATCHES` batches are decoded ahead of the one being handed out.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from mvit_cli.errors import ImageDecodeError
from mvit_cli.pipeline.images import Unreadable, decode_image
from mvit_cli.preprocess import Preprocessing, normalize, resize_and_crop, to_uint8_hwc

Source = Path | bytes | Unreadable  # a file, the raw bytes of one image (stdin), or a known failure

# Size of the first batch; the next ones double up to the batch size. The model starts once the first few images
# are decoded instead of a whole batch (32 images: ~0.1 s of one core), and the first results show sooner.
# Four keeps two cores busy with two images each from the start (runners.torch_cpu.CPU_MICRO_BATCH).
FIRST_BATCH = 4

# Batches being decoded beyond the one handed out (the decoders' look-ahead; bounds the memory held).
PREFETCH_BATCHES = 2


@dataclass
class Batch:
    indices: list[int]  # positions in the input sequence of the images that decoded OK
    images: torch.Tensor  # [len(indices), 3, H, W] float32, preprocessed; channels_last in memory
    failures: list[tuple[int, str]]  # (position, reason) of inputs that failed to decode in this batch


def load_pixels(source: Source, preprocessing: Preprocessing, exif_transpose: bool = True,
                fast: bool = False) -> np.ndarray:
    """Decode one image and resize/crop it: [crop, crop, 3] uint8. Raises on any failure.

    `fast`: JPEGs decoded at a reduced scale and only the crop resampled (see `decode_image`, `resize_and_crop`);
    not the reference protocol's pixels.
    """
    draft_shorter = preprocessing.resize_shorter if fast else None
    image = decode_image(source, exif_transpose, draft_shorter)
    return to_uint8_hwc(resize_and_crop(image, preprocessing, fast))


def _decode(source: Source, preprocessing: Preprocessing, exif_transpose: bool, fast: bool) -> np.ndarray | str:
    """The image's pixels, or the reason it has none."""
    try:
        return load_pixels(source, preprocessing, exif_transpose, fast)
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure is this image's error record, never the run's
        return f"cannot process image: {type(exc).__name__}: {exc}"


def _batch(span: range, decoded: list[np.ndarray | str], preprocessing: Preprocessing) -> Batch:
    ok = [(position, pixels) for position, pixels in zip(span, decoded) if not isinstance(pixels, str)]
    failures = [(position, reason) for position, reason in zip(span, decoded) if isinstance(reason, str)]
    if ok:
        pixels = torch.from_numpy(np.stack([p for _, p in ok]))
    else:
        size = preprocessing.crop_size
        pixels = torch.empty((0, size, size, 3), dtype=torch.uint8)
    return Batch([position for position, _ in ok], normalize(pixels.permute(0, 3, 1, 2), preprocessing), failures)


def batch_spans(num_sources: int, batch_size: int) -> Iterator[range]:
    """Consecutive position ranges covering every input: FIRST_BATCH, doubling, then `batch_size` each."""
    start, size = 0, min(FIRST_BATCH, batch_size)
    while start < num_sources:
        yield range(start, min(start + size, num_sources))
        start += size
        size = min(2 * size, batch_size)


def num_batches(num_sources: int, batch_size: int) -> int:
    return sum(1 for _ in batch_spans(num_sources, batch_size))


def iter_batches(
    sources: Sequence[Source],
    preprocessing: Preprocessing,
    batch_size: int,
    workers: int,
    exif_transpose: bool = True,
    fast_decode: bool = False,
) -> Iterator[Batch]:
    """Batches of preprocessed images, in input order, decoded by `workers` threads (0: on the calling thread).

    Every input appears exactly once, either in some batch's `indices` or in its `failures`. Batches hold
    `batch_size` consecutive inputs, except the first few, which grow to it (`batch_spans`).
    `exif_transpose=False` ignores EXIF orientation, like the reference evaluation pipelines (see images.py).
    `fast_decode` trades exact reference pixels for speed (`load_pixels`).
    Closing the iterator early drops the decoding not yet started and waits for the rest (milliseconds).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")

    def decode(position: int) -> np.ndarray | str:
        return _decode(sources[position], preprocessing, exif_transpose, fast_decode)

    spans = batch_spans(len(sources), batch_size)
    if workers <= 0:
        for span in spans:
            yield _batch(span, [decode(position) for position in span], preprocessing)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mvit-decode")
    queued: deque[tuple[range, list[Future]]] = deque()
    try:
        for span in spans:
            queued.append((span, [pool.submit(decode, position) for position in span]))
            if len(queued) > PREFETCH_BATCHES:
                yield _finish(queued.popleft(), preprocessing)
        while queued:
            yield _finish(queued.popleft(), preprocessing)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(queued: tuple[range, list[Future]], preprocessing: Preprocessing) -> Batch:
    span, futures = queued
    return _batch(span, [future.result() for future in futures], preprocessing)


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
