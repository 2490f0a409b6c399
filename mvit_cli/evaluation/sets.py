"""Validation sets on disk: which layout a folder is in, and the true class of every image in it.

The layouts ImageNet's validation set is found in:

1. `folders`: one folder per class named by its WordNet id (what the valprep.sh script makes);
2. `devkit`: one flat folder of ILSVRC2012_val_*.JPEG plus the devkit's ILSVRC2012_validation_ground_truth.txt,
   whose line i is the ILSVRC2012_ID of image ILSVRC2012_val_{i:08d}. Those IDs number the classes in the
   devkit's own order (1 = n02119789 kit fox), not in the sorted-wnid order of the model's output: reading them
   as output indices is the classic silent 0.1% mistake, so every ID goes through `labels.index_of_ilsvrc_id`;
3. `kaggle`: flat images plus Kaggle's LOC_val_solution.csv (ImageId, PredictionString whose first token is the
   wnid).

A flat folder without a label file is refused instead of being read as one class. Label files are taken from
`--labels` or looked for beside and above the folder, since both datasets unpack them a few levels up.

Other test sets add two layouts (which set accepts which is decided in `protocols.py`):

4. `index-folders`: one folder per class named by its output index 0..999 (ImageNetV2);
5. `flat`: flat ILSVRC2012_val_* images without any label file, for ImageNet-ReaL, which places them by name.
"""

from __future__ import annotations

import csv
import os
import random
import re
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mvit_cli import labels
from mvit_cli.errors import DatasetError, NoImagesError, UsageError
from mvit_cli.pipeline.inputs import IMAGE_SUFFIXES

DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
# Where label files sit relative to a folder at or above the images: beside them, or inside the unpacked devkit.
LABEL_FILE_CANDIDATES = (
    DEVKIT_GROUND_TRUTH,
    f"ILSVRC2012_devkit_t12/data/{DEVKIT_GROUND_TRUTH}",
    f"data/{DEVKIT_GROUND_TRUTH}",
    KAGGLE_SOLUTION,
)
# Kaggle's val images are in <root>/ILSVRC/Data/CLS-LOC/val with the CSV in <root>: four levels up.
SEARCH_LEVELS_ABOVE = 4

LAYOUT_TITLES = {
    "folders": "class folders named by WordNet id",
    "index-folders": "class folders named by class index 0..999",
    "devkit": "flat folder + devkit ground truth",
    "kaggle": "flat folder + Kaggle LOC_val_solution.csv",
    "flat": "flat folder of ILSVRC2012_val_* images (no label file needed)",
}

HOW_TO_GET_A_LAYOUT = (
    "mvit understands three layouts: (1) one folder per class named by WordNet id (e.g. n01440764/, as made by "
    "valprep.sh); (2) flat ILSVRC2012_val_*.JPEG images with the devkit's "
    f"{DEVKIT_GROUND_TRUTH} (from ILSVRC2012_devkit_t12.tar.gz, data/ folder); (3) Kaggle's flat images with "
    f"{KAGGLE_SOLUTION}; pass the label file with --labels FILE or put it beside or above the folder"
)

_WNID = re.compile(r"n\d{8}")
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")
_SHOWN = 5  # names listed in an error before "... and N more"

# The target of an image in a flat folder read without a label file (ReaL places its images by file name).
UNKNOWN_TARGET = -1


@dataclass(frozen=True)
class EvalItem:
    path: Path
    target: int  # model output index (sorted-wnid order): the class the image is filed under
    # Every class that counts as a correct answer (ReaL's multi-label lists); empty: just `target`.
    accepted: tuple[int, ...] = ()

    @property
    def correct(self) -> tuple[int, ...]:
        """The classes a prediction may name to be right."""
        return self.accepted or (self.target,)


def _index_of_number(name: str) -> int | None:
    """0..999 for a folder named by a class index written plainly ("7", not "007"), else None."""
    return int(name) if name.isdigit() and str(int(name)) == name and int(name) < 1000 else None


@dataclass(frozen=True)
class FolderNaming:
    """How the class folders of a layout are named and read."""

    layout: str  # the layout's name in LAYOUT_TITLES
    describe: str  # what the names must be, for error messages
    looks_like: re.Pattern[str]  # a folder name meant as a class (possibly an unknown one)
    index_of: Callable[[str], int | None]  # folder name -> model output index, None when not a class


FOLDER_NAMINGS = {
    "wnid": FolderNaming("folders", "ImageNet-1k WordNet ids", _WNID, labels.index_of_wnid),
    "index": FolderNaming("index-folders", "class indices 0..999", re.compile(r"\d+"), _index_of_number),
}


@dataclass(frozen=True)
class EvalSet:
    layout: str  # "folders", "devkit" or "kaggle"
    root: Path
    items: list[EvalItem]  # sorted by path
    labels_file: Path | None  # None for class folders: the folder names are the labels
    total: int  # images found before --limit

    @property
    def title(self) -> str:
        return LAYOUT_TITLES[self.layout]


def listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and _visible(path) and path.is_file()


def load_eval_set(directory: Path, labels_file: Path | None = None, limit: int | None = None, *,
                  naming: str = "wnid", flat: bool = True, labels_required: bool = True,
                  what: str = "the validation set") -> EvalSet:
    """Detect the layout of `directory`, read the true class of every image, optionally take a balanced subset.

    `naming`: how class folders are named (a key of FOLDER_NAMINGS). `flat`: whether a flat folder with a label
    file is a layout of this set at all (`what` names the set in that error). `labels_required=False` accepts a
    flat folder without a label file (layout "flat", targets UNKNOWN_TARGET): for sets placed by file name.
    """
    directory = Path(directory)
    folder_naming = FOLDER_NAMINGS[naming]
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a folder; give the folder of validation images")
    entries = sorted(p for p in directory.iterdir() if _visible(p))
    folders = [p for p in entries if p.is_dir()]
    images = [p for p in entries if _is_image(p)]

    class_folders = [f.name for f in folders if folder_naming.looks_like.fullmatch(f.name)]
    if folders and not images:
        if labels_file is not None:
            raise UsageError(
                f"--labels is for a flat folder of images, but {directory} has one folder per class "
                "(their names are the labels); leave --labels out"
            )
        eval_set = _from_class_folders(directory, folders, folder_naming)
    elif images and class_folders:  # e.g. a valprep.sh run that stopped half way
        raise DatasetError(
            f"{directory} holds both {len(images)} loose images and {len(class_folders)} class folders "
            f"({listing(class_folders)}), so its layout is ambiguous; {HOW_TO_GET_A_LAYOUT}"
        )
    elif images and not flat:
        raise DatasetError(
            f"{directory} is a flat folder of {len(images):,} images, but {what} is read from one folder per "
            f"class named by {folder_naming.describe}"
        )
    elif images:  # other sub-folders beside flat images (an unpacked devkit, say) are not part of the set
        eval_set = _from_flat_folder(directory, images, labels_file, labels_required)
    else:
        raise NoImagesError(f"no images in {directory} ({', '.join(sorted(IMAGE_SUFFIXES))}); {HOW_TO_GET_A_LAYOUT}")

    return with_limit(eval_set, limit)


def with_limit(eval_set: EvalSet, limit: int | None) -> EvalSet:
    """`eval_set` cut to a class-balanced subset of `limit` images (unchanged for None)."""
    if limit is None:
        return eval_set
    return EvalSet(eval_set.layout, eval_set.root, balanced_subset(eval_set.items, limit),
                   eval_set.labels_file, eval_set.total)


def _from_class_folders(directory: Path, folders: list[Path], naming: FolderNaming) -> EvalSet:
    unknown = [f.name for f in folders if naming.index_of(f.name) is None]
    if unknown and naming is not FOLDER_NAMINGS["wnid"]:
        raise DatasetError(
            f"{len(unknown)} sub-folder(s) of {directory} are not {naming.describe}: {listing(unknown)}"
        )
    if unknown:
        if any(_WNID.fullmatch(n) for n in unknown):
            hint = ""
        elif any(_WNID.fullmatch(n.lower()) for n in unknown):
            hint = "; WordNet ids are written in lower case (n01440764)"
        elif all(n.isdigit() for n in unknown):  # ImageNetV2's folders, read as another set
            hint = "; folders named by class index are ImageNetV2's layout (--dataset v2)"
        elif len(folders) == 1:  # pointed one level too high, e.g. at the parent of val/
            hint = f"; did you mean {folders[0]}?"
        else:
            hint = f"; {HOW_TO_GET_A_LAYOUT}"
        raise DatasetError(
            f"{len(unknown)} sub-folder(s) of {directory} are not ImageNet-1k WordNet ids: {listing(unknown)}{hint}"
        )
    items = [
        EvalItem(path, naming.index_of(folder.name))  # type: ignore[arg-type]
        for folder in folders
        for path in sorted(p for p in folder.iterdir() if _is_image(p))
    ]
    if not items:
        raise NoImagesError(f"the {len(folders)} class folders in {directory} contain no images")
    return EvalSet(naming.layout, directory, items, None, len(items))


def _from_flat_folder(directory: Path, images: list[Path], labels_file: Path | None,
                      labels_required: bool = True) -> EvalSet:
    if labels_file is None:
        labels_file = find_labels_file(directory)
        if labels_file is None and not labels_required:
            return EvalSet("flat", directory, [EvalItem(path, UNKNOWN_TARGET) for path in images], None, len(images))
        if labels_file is None:
            raise DatasetError(
                f"{directory} is a flat folder of {len(images):,} image{'s' * (len(images) != 1)} and no label file "
                f"was found beside or above it, so the true classes are unknown; {HOW_TO_GET_A_LAYOUT}"
            )
    layout, target_of = read_labels_file(Path(labels_file))
    items, unlabelled = [], []
    for path in images:
        target = target_of(path.stem)
        if target is None:
            unlabelled.append(path.name)
        else:
            items.append(EvalItem(path, target))
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} image(s) in {directory} have no label in {labels_file}: {listing(unlabelled)}; "
            "is it the label file of this folder?"
        )
    return EvalSet(layout, directory, items, Path(labels_file), len(items))


def find_labels_file(directory: Path) -> Path | None:
    """The nearest known label file in `directory` or up to SEARCH_LEVELS_ABOVE folders above it."""
    place = directory.resolve()
    for _ in range(SEARCH_LEVELS_ABOVE + 1):
        for candidate in LABEL_FILE_CANDIDATES:
            if (place / candidate).is_file():
                return place / candidate
        if place.parent == place:
            break
        place = place.parent
    return None


# Far above any label file (Kaggle's LOC_val_solution.csv: 10 MB, ReaL's real.json: 0.4 MB).
MAX_LABEL_FILE_BYTES = 64 * 1024 * 1024


def read_label_text(path: Path) -> str:
    """The text of a label file (UTF-8, BOM dropped). Only a regular file of sensible size is read: a FIFO would
    block forever and /dev/zero never end. Raises DatasetError for those, UnicodeDecodeError for binary files."""
    try:
        status = os.stat(path)
    except OSError as exc:
        raise DatasetError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(status.st_mode):
        raise DatasetError(f"{path} is not a regular file (a pipe or a device?); give the label file itself")
    with open(path, "rb") as file:
        data = file.read(MAX_LABEL_FILE_BYTES + 1)
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise DatasetError(f"{path} is larger than {MAX_LABEL_FILE_BYTES // 2**20} MB, far more than any label file")
    return data.decode("utf-8-sig")


def read_labels_file(path: Path) -> tuple[str, Callable[[str], int | None]]:
    """The layout a label file belongs to, and a lookup from image stem to model output index (None: no label).

    The kind is told by the content, not the name: Kaggle's CSV starts with an `ImageId` header, the devkit's
    ground truth is one integer per line.
    """
    try:
        text = read_label_text(path)
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not a text label file; {HOW_TO_GET_A_LAYOUT}") from None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    header = next(csv.reader([first]), [""])  # Kaggle's header may be quoted: "ImageId","PredictionString"
    if header and header[0].strip().lower() == "imageid":
        return "kaggle", _kaggle_lookup(path, text)
    if first.isdigit():
        return "devkit", _devkit_lookup(path, text)
    raise DatasetError(
        f"{path} is neither the devkit's {DEVKIT_GROUND_TRUTH} (one class number per line) nor Kaggle's "
        f"{KAGGLE_SOLUTION} (ImageId,PredictionString); give one of those with --labels"
    )


def _devkit_lookup(path: Path, text: str) -> Callable[[str], int | None]:
    # Line i is image i: a blank line inside the file would shift every later label, so only trailing blank
    # lines are dropped and any other blank line is an error.
    lines = [line.strip() for line in text.rstrip().splitlines()]
    bad = [f"line {n}: {line!r}" for n, line in enumerate(lines, 1)
           if not line.isdigit() or labels.index_of_ilsvrc_id(int(line)) is None]
    if bad:
        raise DatasetError(f"{path} has entries that are not ILSVRC2012_IDs 1..1000: {listing(bad)}")
    # Line i (1-based) is the devkit class number of ILSVRC2012_val_{i:08d}; convert to the model's order.
    targets = [labels.index_of_ilsvrc_id(int(line)) for line in lines]

    def target_of(stem: str) -> int | None:
        match = _VAL_NUMBER.fullmatch(stem)
        number = int(match.group(1)) if match else 0
        return targets[number - 1] if 1 <= number <= len(targets) else None

    return target_of


def _kaggle_lookup(path: Path, text: str) -> Callable[[str], int | None]:
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows)]
    if "ImageId" not in header or "PredictionString" not in header:
        raise DatasetError(f"{path} needs the columns ImageId and PredictionString, found: {', '.join(header)}")
    id_col, labels_col = header.index("ImageId"), header.index("PredictionString")
    targets: dict[str, int] = {}
    unknown: dict[str, None] = {}  # insertion-ordered set
    for row in rows:
        if len(row) <= max(id_col, labels_col):
            continue
        tokens = row[labels_col].split()
        wnid = tokens[0] if tokens else ""
        index = labels.index_of_wnid(wnid)
        if index is None:
            unknown[wnid or "(empty)"] = None
        else:
            targets[row[id_col].strip()] = index
    if unknown:
        raise DatasetError(f"{path} names classes outside the 1000 ImageNet-1k WordNet ids: {listing(list(unknown))}")
    return targets.get


def balanced_subset(items: Sequence[EvalItem], limit: int) -> list[EvalItem]:
    """`limit` items spread evenly over the classes (counts differ by at most one), the same on every run.

    Classes are visited in a fixed pseudo-random order (so a small limit is not just the first classes, which
    in ImageNet are all animals), taking one image per class per round; images within a class are also in a
    fixed pseudo-random order. The subset is returned in the original order.
    """
    if limit >= len(items):
        return list(items)
    rng = random.Random(0)  # fixed seed: the subset is part of the result's definition
    by_class: dict[int, list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        by_class[item.target].append(position)
    classes = sorted(by_class)
    rng.shuffle(classes)
    for positions in by_class.values():
        rng.shuffle(positions)
    chosen: list[int] = []
    for round_ in range(max(len(p) for p in by_class.values())):
        for cls in classes:
            if round_ < len(by_class[cls]):
                chosen.append(by_class[cls][round_])
                if len(chosen) == limit:
                    return [items[p] for p in sorted(chosen)]
    return [items[p] for p in sorted(chosen)]
