"""The classification pipeline: images in, one result record per image out, streamed batch by batch.

A record is a plain dict, the schema every output format shares (README, "Output schema"):
    {"path": "cat.jpg", "predictions": [{"rank": 1, "index": 285, "wnid": "n02124075",
                                         "label": "Egyptian cat", "probability": 0.87}, ...]}
or, for an input that could not be decoded:
    {"path": "broken.jpg", "error": "corrupt or truncated image: ..."}
Records come out in input order, a whole batch at a time, as soon as that batch has been through the model.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch

from mvit_cli.pipeline.batching import iter_batches, run_batches
from mvit_cli.pipeline.inputs import ImageInput
from mvit_cli.labels import CLASSES
from mvit_cli.metrics import top_k
from mvit_cli.preprocess import Preprocessing

Record = dict[str, Any]

PROBABILITY_DECIMALS = 8


def top_k_predictions(logits: torch.Tensor, k: int) -> list[list[dict[str, Any]]]:
    """[B, 1000] logits -> per image the k most probable classes, most probable first.

    Softmax in float64, then each probability rounded *down* to PROBABILITY_DECIMALS decimals: float32 logits
    carry no more precision than that, the numbers stay short, and the top-k of an image never sums to more
    than 1 (with k = 1000 it sums to 1 within 1000 * 1e-8).
    """
    indices, values = top_k(logits, min(k, logits.shape[1]))  # ranked by the unrounded probabilities
    scale = 10.0**PROBABILITY_DECIMALS
    values = torch.floor(values * scale) / scale  # monotone: the order stays descending
    return [
        [
            {
                "rank": rank,
                "index": index,
                "wnid": CLASSES[index].wnid,
                "label": CLASSES[index].name,
                "probability": probability,
            }
            for rank, (index, probability) in enumerate(zip(row_indices, row_values), start=1)
        ]
        for row_indices, row_values in zip(indices.tolist(), values.tolist())
    ]


def classify_batches(
    inputs: Sequence[ImageInput],
    run: Callable[[torch.Tensor], torch.Tensor],
    preprocessing: Preprocessing,
    top_k: int = 5,
    batch_size: int = 8,
    workers: int = 0,
    fast_decode: bool = False,
) -> Iterator[list[Record]]:
    """The records of each batch, in input order, as soon as the batch has been through the model.

    `run` maps a [B, 3, H, W] float32 batch to [B, 1000] logits (`LoadedModel.run`). `fast_decode`: see
    `batching.load_pixels`.
    """
    sources = [item.source for item in inputs]
    batches = iter_batches(sources, preprocessing, batch_size, workers, fast_decode=fast_decode)
    for batch, logits in run_batches(batches, run):
        records: dict[int, Record] = {}
        if logits is not None:
            for position, predictions in zip(batch.indices, top_k_predictions(logits, top_k)):
                records[position] = {"path": inputs[position].name, "predictions": predictions}
        for position, reason in batch.failures:
            records[position] = {"path": inputs[position].name, "error": reason}
        yield [records[position] for position in sorted(records)]  # a batch is a contiguous run of positions


def classify(
    inputs: Sequence[ImageInput],
    run: Callable[[torch.Tensor], torch.Tensor],
    preprocessing: Preprocessing,
    top_k: int = 5,
    batch_size: int = 8,
    workers: int = 0,
    fast_decode: bool = False,
) -> Iterator[Record]:
    """One record per input, in input order (see `classify_batches`)."""
    for records in classify_batches(inputs, run, preprocessing, top_k, batch_size, workers, fast_decode):
        yield from records
