"""The 1000 ImageNet-1k classes, in the order of the model's output (sorted WordNet ids).

Package data `data/imagenet_classes.tsv` was generated once from public facts: the sorted ILSVRC2012 synset
list, the devkit's `map_clsloc.txt` (which numbers the classes 1..1000 in its own, *unsorted* order: the
`ilsvrc_id` used by the devkit's validation ground truth), and the WordNet lemmas of each synset (the
readable name is the first lemma, as in the devkit). tests/test_labels.py re-checks it against a devkit copy.

Two names occur twice, because WordNet has two synsets for them: "crane" (the bird, n02012849, and the
machine, n03126707) and "maillot" (n03710637, n03710721 "maillot, tank suit"). `lemmas` tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

NUM_CLASSES = 1000


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # position in the model's logits, 0..999 (sorted wnid order)
    wnid: str  # WordNet id, e.g. "n02124075"
    name: str  # readable name: the first WordNet lemma, e.g. "Egyptian cat"
    ilsvrc_id: int  # the devkit's ILSVRC2012_ID, 1..1000 (map_clsloc.txt order, NOT the index + 1)
    lemmas: str  # all lemmas of the synset, comma separated, e.g. "crane" vs "crane" -> see module doc


def _load() -> list[ImageNetClass]:
    text = resources.files("mvit_cli").joinpath("data/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    header, body = rows[0], rows[1:]
    assert header == ["index", "wnid", "ilsvrc_id", "name", "lemmas"], header
    return [ImageNetClass(int(i), wnid, name, int(ilsvrc), lemmas) for i, wnid, ilsvrc, name, lemmas in body]


CLASSES: list[ImageNetClass] = _load()

_BY_WNID = {c.wnid: c.index for c in CLASSES}
_BY_ILSVRC_ID = {c.ilsvrc_id: c.index for c in CLASSES}


def index_of_wnid(wnid: str) -> int | None:
    """Model output index of a WordNet id, or None when it is not one of the 1000 classes (never raises)."""
    return _BY_WNID.get(wnid)


def index_of_ilsvrc_id(ilsvrc_id: int) -> int | None:
    """Model output index of a devkit ILSVRC2012_ID (1..1000), or None when out of range (never raises)."""
    return _BY_ILSVRC_ID.get(ilsvrc_id)
