"""Dataset protocols: for each test set or label set, how its folder is read and how it is scored.

One table, `PROTOCOLS`: which folder names mean which class, whether flat layouts (devkit / Kaggle label files)
belong to the set, where the targets come from (the layout's labels, or ReaL's multi-label lists matched by file
name), which classes the model's outputs are restricted to (ImageNet-R / -A: 200), what happens to images of
other classes (an error for R / A, whose folders must all be theirs; left out for R-clean / A-clean, which are
ImageNet val cut to those classes), and where `--suite` finds the set. The name is also the key of the set's
published figures in the weight manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mvit_cli import labels
from mvit_cli.errors import DatasetError, UsageError
from mvit_cli.evaluation import class_subsets, real_labels
from mvit_cli.evaluation.sets import UNKNOWN_TARGET, EvalItem, EvalSet, balanced_subset, listing, load_eval_set

VAL_FOLDERS = ("imagenet/val", "val")  # where --suite looks for ImageNet val, first match wins


@dataclass(frozen=True)
class Protocol:
    name: str  # --dataset value; key of the published figures in the manifest
    title: str  # for people
    naming: str  # how class folders are named: "wnid" or "index" (sets.FOLDER_NAMINGS)
    flat: bool  # flat images + a devkit / Kaggle label file (or, for ReaL, none) are a layout of this set
    real_labels: bool  # correct classes from ReaL's lists, matched by file name, instead of the layout's labels
    classes: str | None  # class subset the outputs are restricted to (class_subsets.SUBSETS), None: all 1000
    outside_classes: str  # images of classes outside `classes`: "refuse" (not this set) or "leave out"
    suite_folders: tuple[str, ...]  # where `--suite ROOT` finds the set, relative to ROOT; first match wins
    full_size: int | None  # images in the complete set (ReaL: None, the labelled images of its label file)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("imagenet", "ImageNet-1k validation", "wnid", True, False, None, "refuse", VAL_FOLDERS, 50_000),
    Protocol("real", "ImageNet-ReaL (val relabelled)", "wnid", True, True, None, "refuse", VAL_FOLDERS, None),
    Protocol("v2", "ImageNetV2 matched-frequency", "index", False, False, None, "refuse",
             ("imagenetv2-matched-frequency-format-val",), 10_000),
    Protocol("sketch", "ImageNet-Sketch", "wnid", False, False, None, "refuse", ("sketch",), 50_889),
    Protocol("r", "ImageNet-R (200 classes)", "wnid", False, False, "r", "refuse", ("imagenet-r",), 30_000),
    Protocol("r-clean", "ImageNet val on ImageNet-R's 200 classes (R-clean)", "wnid", True, False, "r",
             "leave out", VAL_FOLDERS, 10_000),
    Protocol("a", "ImageNet-A (200 classes)", "wnid", False, False, "a", "refuse", ("imagenet-a",), 7_500),
    Protocol("a-clean", "ImageNet val on ImageNet-A's 200 classes (A-clean)", "wnid", True, False, "a",
             "leave out", VAL_FOLDERS, 10_000),
)}
DATASETS = tuple(PROTOCOLS)  # in the order of timm's results table; also --suite's order

_WNID = re.compile(r"n\d{8}")


def _integer_folders(names: set[str]) -> bool:
    return any(n.isdigit() for n in names) and not any(_WNID.fullmatch(n) for n in names)


def _exactly(subset: str) -> Callable[[set[str]], bool]:
    return lambda names: names == set(class_subsets.subset_wnids(subset))


# What `--dataset auto` recognises, by the names of DIR's sub-folders; anything else is ImageNet val. Only
# unambiguous signs count: a partial ImageNet-R is also a partial ImageNet val, so --dataset must say it.
DETECTION: tuple[tuple[str, Callable[[set[str]], bool]], ...] = (
    ("v2", _integer_folders),
    ("r", _exactly("r")),
    ("a", _exactly("a")),
)


def detect(directory: Path) -> Protocol:
    """The protocol `--dataset auto` picks for `directory`."""
    try:
        names = {p.name for p in Path(directory).iterdir() if p.is_dir() and not p.name.startswith(".")}
    except OSError:
        names = set()  # load_eval_set reports the real problem
    for name, recognises in DETECTION:
        if names and recognises(names):
            return PROTOCOLS[name]
    return PROTOCOLS["imagenet"]


@dataclass(frozen=True)
class PreparedSet:
    """A set on disk read under its protocol: the images to evaluate and how to score them."""

    protocol: Protocol
    eval_set: EvalSet  # the images to evaluate (after class restriction, ReaL's exclusions and --limit)
    inputs: tuple[Path, ...]  # every file the run reads (all images found, label files): never to be written
    among: tuple[int, ...] | None  # output classes scored (ImageNet-R / -A's 200), None: all 1000
    real: real_labels.RealLabels | None  # ReaL's labels, for ReaL
    images_without_labels: int  # ReaL: images found whose ReaL list is empty, left out
    other_classes: int  # R-clean / A-clean: images found of classes outside the 200, left out

    @property
    def classes(self) -> int:
        return len(self.among) if self.among is not None else labels.NUM_CLASSES

    @property
    def labels_file(self) -> Path | None:
        """Where the correct classes come from: ReaL's file, the layout's label file, or None (folder names)."""
        if self.real is not None:
            return self.real.source or real_labels.packaged_path()
        return self.eval_set.labels_file

    @property
    def full_size(self) -> int | None:
        return self.real.labelled if self.real is not None else self.protocol.full_size


def protocol_named(name: str, directory: Path) -> Protocol:
    """The protocol for `--dataset name` ("auto": detected from `directory`)."""
    if name == "auto":
        return detect(directory)
    if name not in PROTOCOLS:
        raise UsageError(f"unknown dataset {name!r}; expected auto or one of {', '.join(DATASETS)}")
    return PROTOCOLS[name]


def prepare(protocol: Protocol, directory: Path, labels_file: Path | None = None,
            real_labels_file: Path | None = None, limit: int | None = None) -> PreparedSet:
    """Read `directory` as a `protocol` set. A folder that contradicts the set is a DatasetError naming why."""
    found = load_eval_set(directory, labels_file, naming=protocol.naming, flat=protocol.flat,
                          labels_required=not protocol.real_labels, what=protocol.title)
    inputs = tuple(item.path for item in found.items) + ((found.labels_file,) if found.labels_file else ())
    items = found.items

    among, other_classes = None, 0
    if protocol.classes is not None:
        among = class_subsets.subset_indices(protocol.classes)
        items, other_classes = _within_classes(protocol, found, among)

    real, without_labels = None, 0
    if protocol.real_labels:
        real = real_labels.load_real_labels(real_labels_file)
        inputs += (real.source or real_labels.packaged_path(),)
        items, without_labels = _with_real_labels(found, items, real)

    if limit is not None:
        items = balanced_subset(items, limit)
    eval_set = EvalSet(found.layout, found.root, items, found.labels_file, found.total)
    return PreparedSet(protocol, eval_set, inputs, among, real, without_labels, other_classes)


def _within_classes(protocol: Protocol, found: EvalSet, among: tuple[int, ...]) -> tuple[list[EvalItem], int]:
    subset, title = set(among), class_subsets.SUBSET_TITLES[protocol.classes]  # type: ignore[index]
    inside = [item for item in found.items if item.target in subset]
    outside = len(found.items) - len(inside)
    if outside and protocol.outside_classes == "refuse":
        strangers = sorted({labels.CLASSES[item.target].wnid for item in found.items if item.target not in subset})
        raise DatasetError(
            f"{len(strangers)} class folder(s) of {found.root} are not among {title}'s 200 classes: "
            f"{listing(strangers)}; is this {title}? (ImageNet val cut to its classes is --dataset "
            f"{protocol.name}-clean)"
        )
    if not inside:
        raise DatasetError(f"none of the {len(found.items):,} images in {found.root} is of one of {title}'s 200 "
                           "classes")
    return inside, outside


def _with_real_labels(found: EvalSet, items: list[EvalItem],
                      real: real_labels.RealLabels) -> tuple[list[EvalItem], int]:
    unplaced = real_labels.unplaceable([item.path.name for item in items], real)
    if unplaced:
        raise DatasetError(
            f"{len(unplaced)} image(s) in {found.root} cannot be placed in ReaL's labels: {listing(unplaced)}; "
            f"ReaL labels the ImageNet validation images by file name, ILSVRC2012_val_00000001 to "
            f"ILSVRC2012_val_{len(real.entries):08d}"
        )
    labelled: list[EvalItem] = []
    for item in items:
        accepted = real.labels_of(item.path.name)
        if accepted:
            target = item.target if item.target != UNKNOWN_TARGET else accepted[0]
            labelled.append(EvalItem(item.path, target, accepted))
    if not labelled:
        raise DatasetError(f"none of the {len(items):,} images in {found.root} has a ReaL label (ReaL leaves "
                           "some validation images unlabelled), so there is nothing to score")
    return labelled, len(items) - len(labelled)


def find_suite(root: Path) -> tuple[list[tuple[Protocol, Path]], list[Protocol]]:
    """The sets under `root` by their usual folder names, in DATASETS order, and the protocols not found."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--suite {root} is not a folder")
    found, missing = [], []
    for protocol in PROTOCOLS.values():
        folder = next((root / f for f in protocol.suite_folders if (root / f).is_dir()), None)
        if folder is None:
            missing.append(protocol)
        else:
            found.append((protocol, folder))
    return found, missing
