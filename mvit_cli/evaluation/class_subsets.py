"""The 200-class subsets of ImageNet-1k that ImageNet-R and ImageNet-A are made of.

A model trained on the 1000 classes is scored on these sets with its outputs restricted to the set's 200
classes: top-1 / top-5 are taken among those 200 only (Hendrycks et al., and timm's results). The class lists
are package data (`data/imagenet_{r,a}_synsets.txt`, the WordNet ids as the sets' authors and timm publish
them); `data/imagenet_{r,a}_indices.txt` holds the same classes as output indices, and the tests check that
both agree with mvit's class table.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import torch

from mvit_cli import labels

SUBSETS = ("r", "a")  # names used by the dataset protocols
SUBSET_TITLES = {"r": "ImageNet-R", "a": "ImageNet-A"}


@lru_cache(maxsize=None)
def subset_wnids(name: str) -> tuple[str, ...]:
    """The WordNet ids of subset `name` ("r" or "a"), sorted (so also in model output order)."""
    text = resources.files("mvit_cli").joinpath(f"data/imagenet_{name}_synsets.txt").read_text(encoding="utf-8")
    return tuple(sorted(line.strip() for line in text.splitlines() if line.strip()))


@lru_cache(maxsize=None)
def subset_indices(name: str) -> tuple[int, ...]:
    """Model output indices (0..999) of subset `name`, ascending."""
    indices = [labels.index_of_wnid(wnid) for wnid in subset_wnids(name)]
    if None in indices:  # package data that does not fit the class table: a bug in mvit, not a user mistake
        raise ValueError(f"imagenet_{name}_synsets.txt names classes outside ImageNet-1k")
    return tuple(sorted(indices))  # type: ignore[arg-type]


def restricted_top_k(logits: torch.Tensor, among: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, classes) of the top k among the classes `among` (ascending output indices), in torch.topk's
    order: [B, 1000] -> 2 x [B, k].

    Classes are output indices in the model's 1000-class numbering, probabilities a softmax over `among` only,
    so they sum to 1 over the subset: what a 200-way classifier made of the model would say.
    """
    probabilities = torch.softmax(logits.index_select(1, among).double(), dim=1)
    values, positions = probabilities.topk(k, dim=1)
    return values, among[positions]
