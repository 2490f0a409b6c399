"""ImageNet-ReaL: the ImageNet validation images relabelled (Beyer et al. 2020, "Are we done with ImageNet?").

`real.json` (package data `data/real.json`, Apache-2.0, google-research/reassessed-imagenet; its licence is
`data/LICENSE-real.txt`) is a list of 50,000 lists: entry i holds every class (output index, sorted-wnid order)
that is a correct answer for ILSVRC2012_val_{i+1:08d}. An empty list means the raters found no label; such an
image is left out of the ReaL accuracy. A prediction is correct at k when any of its top k classes is in the
list. Images are matched by file name, so any part of the validation set, in any layout, can be scored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from mvit_cli.errors import DatasetError
from mvit_cli.evaluation.sets import read_label_text

PACKAGED = "data/real.json"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


@dataclass(frozen=True)
class RealLabels:
    entries: tuple[tuple[int, ...], ...]  # entry i: the correct classes of validation image i + 1
    source: Path | None  # the file read; None for the packaged copy

    @property
    def labelled(self) -> int:
        """How many images have at least one label (46,837 of 50,000 in the published file)."""
        return sum(1 for entry in self.entries if entry)

    def labels_of(self, file_name: str) -> tuple[int, ...] | None:
        """The correct classes of an image file (possibly none), or None when the name cannot be placed."""
        match = _VAL_NAME.fullmatch(Path(file_name).stem)
        number = int(match.group(1)) if match else 0
        return self.entries[number - 1] if 1 <= number <= len(self.entries) else None


def packaged_path() -> Path:
    """Where the packaged real.json is (for reports; `load_real_labels()` reads it without this)."""
    return Path(str(resources.files("mvit_cli").joinpath(PACKAGED)))


def load_real_labels(path: Path | None = None) -> RealLabels:
    """Read and check a real.json (default: the packaged copy). A malformed file is a DatasetError."""
    where = path or packaged_path()
    try:
        data = json.loads(read_label_text(Path(where)))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{where} is not a ReaL label file (a JSON list of lists of class indices): {exc}") \
            from None
    return RealLabels(_checked(data, where), Path(path) if path else None)


def _checked(data: object, where: Path) -> tuple[tuple[int, ...], ...]:
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{where} is not a ReaL label file: it must be a JSON list of lists of class indices")
    bad: list[str] = []
    for i, entry in enumerate(data):
        if not (isinstance(entry, list)
                and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1000 for c in entry)):
            bad.append(f"entry {i} ({json.dumps(entry)[:40]})")
            if len(bad) == 5:
                break
    if bad:
        raise DatasetError(f"{where}: entries that are not lists of class indices 0..999: {', '.join(bad)}")
    # A class listed twice would count its image twice in that class's per-class row.
    return tuple(tuple(dict.fromkeys(entry)) for entry in data)  # type: ignore[arg-type]


def unplaceable(names: Sequence[str], real: RealLabels) -> list[str]:
    """The file names that match no entry of `real` (not ILSVRC2012_val_<8 digits>, or beyond its end)."""
    return [name for name in names if real.labels_of(name) is None]
