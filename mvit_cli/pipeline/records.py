"""The classification pipeline: images in, one `Result` per image out, streamed batch by batch.

A result's `to_dict()` is the record every output format shares (README, "Output schema"):
    {"path": "cat.jpg", "predictions": [{"rank": 1, "index": 285, "wnid": "n02124075",
                                         "label": "Egyptian cat", "probability": 0.87}, ...]}
or, for an input that could not be decoded:
    {"path": "broken.jpg", "error": "corrupt or truncated image: ..."}
Results come out in input order, a whole batch at a time, as soon as that batch has been through the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from mvit_cli.labels import CLASSES
from mvit_cli.metrics import top_k_probabilities
from mvit_cli.pipeline.batching import Batch, iter_batches, run_batches
from mvit_cli.pipeline.inputs import ImageInput
from mvit_cli.pipeline.sources import ReadPolicy
from mvit_cli.preprocess import Preprocessing

PROBABILITY_DECIMALS = 8


@dataclass(frozen=True)
class Prediction:
    """One of an image's k most probable classes."""

    rank: int  # 1 = most probable
    index: int  # the model's output index, 0-999 (classes sorted by WordNet id)
    wnid: str  # WordNet id, e.g. "n02124075"
    label: str  # the class's first WordNet lemma, e.g. "Egyptian cat"
    probability: float  # softmax probability, rounded down to PROBABILITY_DECIMALS decimals

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "index": self.index, "wnid": self.wnid, "label": self.label,
                "probability": self.probability}


@dataclass(frozen=True)
class Result:
    """What became of one input: its top-k predictions, or the error that kept it from being classified."""

    path: str  # the input as named in the output: the path as given, the URL, "-" for stdin, "<image #i>" ...
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None
    # Pictures for reports, only when asked for (never part of the record, nor of equality): a JPEG thumbnail of
    # the decoded image, and a JPEG of its Grad-CAM heatmap over the crop the model saw.
    thumbnail: bytes | None = field(default=None, repr=False, compare=False)
    heatmap: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """Exactly the record `mvit classify --format json` prints for this input."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [p.to_dict() for p in self.predictions]}


def round_down(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities rounded *down* to PROBABILITY_DECIMALS decimals (monotone: a ranking keeps its order)."""
    scale = 10.0**PROBABILITY_DECIMALS
    return torch.floor(probabilities * scale) / scale


def top_k_predictions(logits: torch.Tensor, k: int) -> list[tuple[Prediction, ...]]:
    """[B, 1000] logits -> per image the k most probable classes, most probable first.

    Softmax in float64, then each probability rounded *down* to PROBABILITY_DECIMALS decimals: float32 logits
    carry no more precision than that, the numbers stay short, and the top-k of an image never sums to more
    than 1 (with k = 1000 it sums to 1 within 1000 * 1e-8).
    """
    values, indices = top_k_probabilities(logits, min(k, logits.shape[1]))  # ranked by the unrounded probabilities
    values = round_down(values)
    return [
        tuple(
            Prediction(rank, index, CLASSES[index].wnid, CLASSES[index].name, probability)
            for rank, (index, probability) in enumerate(zip(row_indices, row_values), start=1)
        )
        for row_indices, row_values in zip(indices.tolist(), values.tolist())
    ]


def results_of(batch: Batch[ImageInput], logits: torch.Tensor | None, k: int) -> list[Result]:
    """The results of one batch, in input order."""
    results: dict[int, Result] = {}
    if logits is not None:
        for position, predictions in zip(batch.indices, top_k_predictions(logits, k)):
            results[position] = Result(batch.item(position).name, predictions,
                                       thumbnail=batch.thumbnails.get(position))
    for position, reason in batch.failures:
        results[position] = Result(batch.item(position).name, error=reason)
    return [results[position] for position in sorted(results)]  # a batch is a contiguous run of positions


def classify_batches(
    inputs: Iterable[ImageInput],
    run: Callable[[torch.Tensor], torch.Tensor],
    preprocessing: Preprocessing,
    top_k: int = 5,
    batch_size: int = 8,
    workers: int = 0,
    fast_decode: bool = False,
    policy: ReadPolicy | None = None,
) -> Iterator[list[Result]]:
    """The results of each batch, in input order, as soon as the batch has been through the model.

    `inputs` may be any iterable (a list of millions streams through). `run` maps a [B, 3, H, W] float32 batch
    to [B, 1000] logits (`LoadedModel.run`). `fast_decode`: see `batching.load_pixels`; `policy`: the bounds on
    reading each input (`sources.ReadPolicy`).
    """
    batches = iter_batches(inputs, preprocessing, batch_size, workers, fast_decode=fast_decode,
                           source_of=lambda item: item.source, policy=policy)
    try:
        for batch, logits in run_batches(batches, run):
            yield results_of(batch, logits, top_k)
    finally:
        batches.close()  # cancels the reads in flight now, not at garbage collection
