"""mvit as a library: `load()` a `Classifier`, then classify, embed or preprocess images with it.

    from mvit_cli import load

    classifier = load("xxs")
    for result in classifier.classify(["cat.jpg", "https://example.com/dog.png", pil_image]):
        print(result.path, result.predictions[0].label if result.ok else result.error)

This is what the `mvit` CLI itself calls (it only parses options and renders), and what a server or a report
builds on. Results are the same, digit for digit, as `mvit classify --format json` for the same inputs.

Images may be given as file paths (str or os.PathLike), http(s) URLs (str), encoded bytes, Pillow images, or uint8
numpy arrays ([H, W, 3] RGB, [H, W, 4] RGBA, [H, W] grey), mixed freely, in any iterable (a generator of millions
streams through in constant memory). An input that cannot be read or decoded becomes a `Result` with `error`
set; it never stops the others.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import numpy as np
import torch
from PIL import Image

from mvit_cli import describe, explain, loading, manifest, runners
from mvit_cli.distributed import Distributed, gather_in_order, shard
from mvit_cli.errors import ImageDecodeError
from mvit_cli.model import PooledFeatures
from mvit_cli.pipeline.batching import iter_batches, run_batches
from mvit_cli.pipeline.fetch import FetchLimits, is_url
from mvit_cli.pipeline.images import decode_image
from mvit_cli.pipeline.inputs import ImageInput, display_name
from mvit_cli.pipeline.records import Prediction, Result, results_of, top_k_predictions
from mvit_cli.pipeline.sources import ReadPolicy, Url
from mvit_cli.pipeline.thumbnails import THUMBNAIL_MAX_SIDE, jpeg_thumbnail
from mvit_cli.preprocess import Preprocessing, preprocess, to_image

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray, ImageInput]
Warn = Callable[[str], None]

__all__ = ["Classifier", "Embedding", "Explained", "ImageLike", "Prediction", "Result", "load"]


@dataclass(frozen=True)
class Embedding:
    """The pooled features of one input (the classifier's input, F = 320 / 384 / 640 for XXS / XS / S), or the
    error that kept it from being computed."""

    path: str
    features: np.ndarray | None  # [F] float32
    error: str | None = None


@dataclass(frozen=True)
class Explained:
    """Where in an image the evidence for a class lies (Grad-CAM), with the image's top-k as classify gives it."""

    result: Result  # the image's top-k, exactly as `classify` gives them
    explained: Prediction  # the class the map is for (top-1 unless asked otherwise), ranked among all 1000
    explanation: explain.Explanation  # the map: `heatmap` in [0, 1], `raw`, `layer`
    image: Image.Image  # the crop the model saw (after resize and crop), which the map covers


@dataclass(frozen=True)
class _LoadSpec:
    """How to load a classifier: everything `load()` was given. This, not the tensors, is what a pickled
    `Classifier` carries to another process."""

    variant: str | None
    source: str | None
    weights: str | None
    device: str
    backend: str
    cache_dir: str | None
    offline: bool
    dtype: str = "float32"


@dataclass
class _State:
    model: loading.LoadedModel  # the first one loaded: its variant, source, preprocessing ... are everyone's
    by_trace: dict[bool, loading.LoadedModel] = field(default_factory=dict)  # see `_model_for`
    features: runners.Runner | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Grad-CAM hooks the plain module: one map at a time, or concurrent calls would capture each other's layers.
    gradcam_lock: threading.Lock = field(default_factory=threading.Lock)


def load(variant: str | None = None, source: str | None = None, weights: str | os.PathLike | None = None,
         device: str = "auto", backend: str = "torch", cache_dir: str | os.PathLike | None = None,
         offline: bool = False, dtype: str = "float32", *, warn: Warn | None = None, progress: bool = False,
         expected_images: int | None = None) -> Classifier:
    """A ready `Classifier`: the weights found (cache or `weights` file; downloaded once if needed, unless
    `offline`), verified, loaded and prepared for `device`.

    variant: "xxs", "xs" or "s" (default "s", or the variant of the `weights` file).
    source: "timm" (default) or "apple": which published weights, and whose preprocessing protocol applies.
    weights: a checkpoint file (timm, transformers, ml-cvnets or mvit format) instead of the cache.
    device: "auto", "cpu", "cuda" or "mps". backend: "torch" or "onnxruntime" (CPU, optional extra).
    cache_dir: the weight cache folder (default: MVIT_CACHE, else the Hugging Face cache).
    dtype: "float32" (default: the published numbers' precision), "bfloat16" or "float16" where the device runs it
    natively (refused elsewhere: DtypeUnsupportedError), or "auto" for the fastest such one. The classifier's
    `dtype` says what it runs in.
    warn: hears of what happens on the way (a download started, a damaged copy deleted); default: the "mvit"
    logger. progress: show huggingface_hub's download bar. expected_images: how many images will be classified,
    when known: a job of fewer than 100 skips the model's one-time tracing (~0.5 s), which only pays off later.

    Raises `mvit_cli.errors.MvitError` subclasses with a message for the user: WeightsUnavailableError,
    IntegrityError, CheckpointError, UsageError.
    """
    classifier = Classifier(variant, source, weights, device, backend, cache_dir, offline, dtype)
    classifier._ensure_loaded(warn=warn, progress=progress, expected_images=expected_images)
    return classifier


class Classifier:
    """MobileViT with its weights and preprocessing, ready to classify and embed images.

    Thread safety: `classify`, `iter_classify`, `embed`, `preprocess` and `logits` may be called from several
    threads at once; they share one model and its cores (each call is answered correctly, concurrent calls just
    take turns on the CPU). Loading happens once, under a lock.

    Pickling: a `Classifier` pickles how to load itself (variant, source, weights path, device, ...), never its
    tensors, and loads lazily on first use in the process that unpickles it (Dask, Ray, Spark, multiprocessing
    workers). A `weights` file must then exist at the same path there; cached weights must be in that
    machine's cache (or downloadable).
    """

    def __init__(self, variant: str | None = None, source: str | None = None,
                 weights: str | os.PathLike | None = None, device: str = "auto", backend: str = "torch",
                 cache_dir: str | os.PathLike | None = None, offline: bool = False, dtype: str = "float32"):
        self._spec = _LoadSpec(variant, source, None if weights is None else os.fspath(weights), device, backend,
                               None if cache_dir is None else os.fspath(cache_dir), offline, dtype)
        self._state: _State | None = None
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ loading

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self._spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._spec = state["spec"]
        self._state = None
        self._load_lock = threading.Lock()

    def __repr__(self) -> str:
        spec = self._spec
        where = f"weights={spec.weights!r}" if spec.weights else f"source={spec.source or manifest.DEFAULT_SOURCE!r}"
        state = "loaded" if self._state is not None else "not loaded yet"
        return f"Classifier(variant={self.variant if self._state else spec.variant!r}, {where}, " \
               f"device={spec.device!r}, backend={spec.backend!r}; {state})"

    def _load(self, expected_images: int | None, warn: Warn | None = None,
              progress: bool = False) -> loading.LoadedModel:
        spec = self._spec
        return loading.load_model(
            spec.variant, spec.source, None if spec.weights is None else Path(spec.weights), spec.device,
            backend=spec.backend, cache_dir=None if spec.cache_dir is None else Path(spec.cache_dir),
            offline=spec.offline, progress=progress, expected_images=expected_images, warn=warn, dtype=spec.dtype,
        )

    def _ensure_loaded(self, warn: Warn | None = None, progress: bool = False,
                       expected_images: int | None = None) -> _State:
        if self._state is None:
            with self._load_lock:
                if self._state is None:
                    model = self._load(expected_images, warn, progress)
                    self._state = _State(model, {runners.worth_tracing(expected_images): model})
        return self._state

    def _model_for(self, total: int | None) -> loading.LoadedModel:
        """The model prepared for a job of `total` images (None: unknown). A job known to be small runs the folded
        model eagerly (tracing costs ~0.5 s and pays off from ~100 images on); any other is traced. The two
        differ in the last bits of the logits, so the choice depends on the job's whole size only, never on how
        it is split: the same inputs give the same records from Python, from the shell, resumed or not, on one
        process or many."""
        state = self._ensure_loaded(expected_images=total)
        trace = runners.worth_tracing(total)
        with state.lock:
            if trace not in state.by_trace:
                state.by_trace[trace] = self._load(total)
            return state.by_trace[trace]

    @property
    def loaded(self) -> bool:
        """Whether the weights are loaded in this process yet (a pickled classifier loads on first use)."""
        return self._state is not None

    @property
    def model(self) -> loading.LoadedModel:
        """The loaded model: its runner, the plain module, variant, source, preprocessing, device ..."""
        return self._ensure_loaded().model

    @property
    def variant(self) -> str:
        return self.model.variant

    @property
    def source(self) -> str:
        """The weight source whose preprocessing protocol applies: "timm" or "apple"."""
        return self.model.source

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.preprocessing

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> str:
        """The precision the model runs in: "float32", "bfloat16" or "float16" ("auto" resolved)."""
        return self.model.dtype

    @property
    def weights_path(self) -> Path:
        return self.model.weights_path

    @property
    def num_features(self) -> int:
        """Width of the pooled feature vector `embed` returns (320 / 384 / 640 for XXS / XS / S)."""
        return self.model.module.cfg.num_features

    def info(self) -> dict[str, Any]:
        """What `mvit info --format json` prints for this variant and source (no network)."""
        cache_dir = None if self._spec.cache_dir is None else Path(self._spec.cache_dir)
        return describe.variant_info(self.variant, self.source, cache_dir=cache_dir)

    # ------------------------------------------------------------------------------------------ classify

    def classify(self, images: Iterable[ImageLike], top_k: int = 5, batch_size: int | None = None,
                 workers: int | None = None, **options: Any) -> list[Result]:
        """One `Result` per input, in input order. See `iter_classify_batches` for the options."""
        return [result for batch in self.iter_classify_batches(images, top_k, batch_size, workers, **options)
                for result in batch]

    def iter_classify(self, images: Iterable[ImageLike], top_k: int = 5, batch_size: int | None = None,
                      workers: int | None = None, **options: Any) -> Iterator[Result]:
        """The results one by one, in input order, as their batches finish (a streaming `classify`)."""
        for batch in self.iter_classify_batches(images, top_k, batch_size, workers, **options):
            yield from batch

    def iter_classify_batches(
        self,
        images: Iterable[ImageLike],
        top_k: int = 5,
        batch_size: int | None = None,
        workers: int | None = None,
        *,
        fast_decode: bool = False,
        max_download_bytes: int | None = None,
        download_timeout: float | None = None,
        forbidden_files: Iterable[tuple[int, int]] = (),
        job: Distributed | None = None,
        total: int | None = None,
        thumbnail_side: int | None = None,
        heatmaps: bool = False,
    ) -> Iterator[list[Result]]:
        """The results of each batch, in input order, as soon as the batch has been through the model.

        top_k: classes per image (1-1000). batch_size: images per model call (default: the device's).
        workers: decoding threads (default: cores - 1, at most 4; 0 decodes between model calls).
        fast_decode: big JPEGs decoded at a reduced scale (faster, pixels within a few grey levels of exact).
        max_download_bytes: size limit for one URL (default 50 MB). download_timeout: seconds a URL's server may
        stay silent before its fetch fails (default 30; connecting has 10).
        forbidden_files: (st_dev, st_ino) of files never to read as inputs (the caller's outputs).
        job: under torchrun, this process's place: each process classifies its strided shard of the inputs,
        and the main process (rank 0) receives every batch's results, in input order (the others receive
        empty lists, one per step). Every process must be given the same inputs.
        total: the job's whole size, when `images` is only part of it (a resumed job, a shard) or has no len()
        (see `_model_for`); default: len(images) where it has one.
        thumbnail_side: give each result a JPEG thumbnail of its decoded image that fits this square
        (`Result.thumbnail`), made on the decoding threads from the same decode (nothing is read twice).
        heatmaps: give each result a JPEG of the Grad-CAM map of its top-1 class over the crop the model saw
        (`Result.heatmap`, fitting `thumbnail_side`, default 128 px); costs a backward pass per image.
        """
        if not 1 <= top_k <= 1000:
            raise ValueError(f"top_k must be between 1 and 1000, not {top_k}")
        model = self._model_for(_size(images, total))
        batch_size, workers = self._batching(batch_size, workers)
        policy = _policy(max_download_bytes, download_timeout, forbidden_files)
        inputs = as_inputs(images)
        if job is not None:
            inputs = shard(inputs, job)
        batches = iter_batches(inputs, model.preprocessing, batch_size, workers, fast_decode=fast_decode,
                               source_of=lambda item: item.source, policy=policy, thumbnail_side=thumbnail_side)
        heatmap_side = thumbnail_side or THUMBNAIL_MAX_SIDE
        try:
            per_batch = (self._with_heatmaps(batch, results_of(batch, logits, top_k), heatmap_side) if heatmaps
                         else results_of(batch, logits, top_k) for batch, logits in run_batches(batches, model.run))
            if job is None:
                yield from per_batch
            else:
                yield from gather_in_order(per_batch, job)
        finally:
            batches.close()  # cancels reads in flight (URL downloads) now, not at garbage collection

    def _with_heatmaps(self, batch, results: list[Result], side: int) -> list[Result]:
        """The batch's results (one per position, in order), each classified one with its top-1's heatmap."""
        rows = {position: row for row, position in enumerate(batch.indices)}
        pictured = []
        for position, result in enumerate(results, start=batch.start):
            if result.ok:
                image = batch.images[rows[position]]
                explanation = self._gradcam(image, result.predictions[0].index)
                crop = to_image(image, self.preprocessing)
                result = replace(result, heatmap=jpeg_thumbnail(explain.overlay(crop, explanation.heatmap), side))
            pictured.append(result)
        return pictured

    def _gradcam(self, image: torch.Tensor, class_index: int | None,
                 layer: str = explain.DEFAULT_LAYER) -> explain.Explanation:
        state = self._ensure_loaded()
        with state.gradcam_lock:
            return explain.gradcam(state.model.module, image, class_index, layer)

    # ------------------------------------------------------------------------------------------ explain

    def explain(self, image: ImageLike, class_index: int | None = None, top_k: int = 5,
                layer: str = explain.DEFAULT_LAYER, *, max_download_bytes: int | None = None,
                download_timeout: float | None = None,
                forbidden_files: Iterable[tuple[int, int]] = ()) -> Explained:
        """Grad-CAM of one image (`mvit_cli.explain`): where the evidence for `class_index` (default: the top-1
        class) lies, at `layer` (default final_conv, the last spatial map). The image is read and decoded as
        `classify` does (EXIF orientation applied), and its top-k are those `classify` gives.

        Raises ImageDecodeError when the image cannot be read or decoded, ValueError for a bad class or layer.
        """
        if not 1 <= top_k <= 1000:
            raise ValueError(f"top_k must be between 1 and 1000, not {top_k}")
        model = self._model_for(1)
        (item,) = list(as_inputs([image]))
        policy = _policy(max_download_bytes, download_timeout, forbidden_files)
        batches = iter_batches([item], model.preprocessing, 1, 0, source_of=lambda i: i.source, policy=policy)
        try:
            batch = next(batches)
        finally:
            batches.close()
        if batch.failures:
            raise ImageDecodeError(f"{item.name}: {batch.failures[0][1]}")
        (ranking,) = top_k_predictions(model.run(batch.images), 1000)  # every class, most probable first
        if class_index is None:
            chosen = ranking[0]
        else:
            wanted = explain.check_class_index(class_index, len(ranking))
            chosen = next(p for p in ranking if p.index == wanted)
        explanation = self._gradcam(batch.images[0], chosen.index, layer)
        return Explained(Result(item.name, ranking[:top_k]), chosen, explanation,
                         to_image(batch.images[0], model.preprocessing))

    def _batching(self, batch_size: int | None, workers: int | None) -> tuple[int, int]:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if workers is not None and workers < 0:
            raise ValueError(f"workers must be 0 or more, not {workers}")
        batch_size = batch_size or runners.default_batch_size(self.device)
        return batch_size, runners.default_workers() if workers is None else workers

    # ------------------------------------------------------------------------------------------ embed

    def embed(self, images: Iterable[ImageLike], batch_size: int | None = None,
              workers: int | None = None) -> np.ndarray:
        """[N, F] float32: the pooled features of each input, in input order (F = `num_features`).

        Raises ImageDecodeError naming the first input that cannot be read or decoded; `iter_embed` reports
        failures per input instead.
        """
        rows = []
        for batch in self.iter_embed(images, batch_size, workers):
            for embedding in batch:
                if embedding.error is not None:
                    raise ImageDecodeError(f"{embedding.path}: {embedding.error}")
                rows.append(embedding.features)
        return np.stack(rows) if rows else np.empty((0, self.num_features), dtype=np.float32)

    def iter_embed(self, images: Iterable[ImageLike], batch_size: int | None = None, workers: int | None = None,
                   *, fast_decode: bool = False, max_download_bytes: int | None = None,
                   download_timeout: float | None = None, forbidden_files: Iterable[tuple[int, int]] = (),
                   job: Distributed | None = None, total: int | None = None) -> Iterator[list[Embedding]]:
        """The embeddings of each batch, in input order, failures included (`Embedding.error`); options as for
        `iter_classify_batches`. The features run on the torch backend whatever `backend` was chosen."""
        model = self._ensure_loaded().model
        run = self._features_runner(_size(images, total))
        batch_size, workers = self._batching(batch_size, workers)
        inputs = as_inputs(images)
        if job is not None:
            inputs = shard(inputs, job)
        batches = iter_batches(inputs, model.preprocessing, batch_size, workers, fast_decode=fast_decode,
                               source_of=lambda item: item.source,
                               policy=_policy(max_download_bytes, download_timeout, forbidden_files))
        try:
            per_batch = (_embeddings_of(batch, features) for batch, features in run_batches(batches, run))
            yield from (per_batch if job is None else gather_in_order(per_batch, job))
        finally:
            batches.close()

    def _features_runner(self, total: int | None) -> runners.Runner:
        state = self._ensure_loaded()
        with state.lock:
            if state.features is None:  # traced or not by the first job's size (embeddings are compared with
                model = state.model     # a tolerance anyway, never digit for digit)
                state.features = runners.prepare(PooledFeatures(model.module), model.device, "torch",
                                                 expected_images=total, dtype=model.dtype)
        return state.features

    # ------------------------------------------------------------------------------------------ tensors

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """One input -> the model's input tensor [3, S, S] float32: decoded upright (EXIF orientation applied),
        then the weights' reference transform (resize the shorter side, centre crop, scale to [0, 1])."""
        item = next(as_inputs([image]))
        return preprocess(decode_image(item.source, policy=_policy(None, None, ())), self.preprocessing)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] float32 preprocessed images -> [B, 1000] float32 logits, on the fast path classify uses."""
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a batch [B, 3, H, W], got {list(batch.shape)}")
        return self.model.run(batch)


def as_inputs(images: Iterable[ImageLike]) -> Iterator[ImageInput]:
    """Each image as an `ImageInput` named for the results: a path as given (non-UTF-8 bytes escaped), a URL as
    given, "<bytes #i>", "<image #i>" or "<array #i>" (i: its position among the inputs)."""
    if isinstance(images, (str, bytes, os.PathLike, Image.Image, np.ndarray, ImageInput)):
        raise TypeError("classify and embed take an iterable of images; wrap a single one in a list")
    for position, image in enumerate(images):
        if isinstance(image, ImageInput):
            yield image
        elif isinstance(image, str) and is_url(image):
            yield ImageInput(image, Url(image))
        elif isinstance(image, (str, os.PathLike)):
            yield ImageInput(display_name(os.fspath(image)), Path(image))
        elif isinstance(image, (bytes, bytearray, memoryview)):
            yield ImageInput(f"<bytes #{position}>", bytes(image))
        elif isinstance(image, Image.Image):
            yield ImageInput(f"<image #{position}>", image)
        elif isinstance(image, np.ndarray):
            yield ImageInput(f"<array #{position}>", image)
        else:
            raise TypeError(f"input #{position} is a {type(image).__name__}; expected a path, URL, bytes, "
                            "PIL.Image or uint8 numpy array")


def _size(images: Iterable[Any], total: int | None) -> int | None:
    if total is not None:
        return total
    return len(images) if hasattr(images, "__len__") else None


def _policy(max_download_bytes: int | None, download_timeout: float | None,
            forbidden_files: Iterable[tuple[int, int]]) -> ReadPolicy:
    limits = FetchLimits()
    if max_download_bytes is not None:
        limits = replace(limits, max_bytes=max_download_bytes)
    if download_timeout is not None:
        limits = replace(limits, read_timeout=download_timeout)
    return ReadPolicy(fetch_limits=limits, forbidden=frozenset(forbidden_files))


def _embeddings_of(batch, features: torch.Tensor | None) -> list[Embedding]:
    found: dict[int, Embedding] = {}
    if features is not None:
        for position, row in zip(batch.indices, features.numpy()):
            found[position] = Embedding(batch.item(position).name, row)
    for position, reason in batch.failures:
        found[position] = Embedding(batch.item(position).name, None, reason)
    return [found[position] for position in sorted(found)]
