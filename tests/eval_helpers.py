"""Shared by the `mvit eval` tests: a random-weight checkpoint, a small validation set with known answers, and
writers for the three labelled layouts.

The expected answers are the test's own: the logits come from the model run directly here (the test decodes the
image files itself), and the ground truth is chosen per image from those logits, so that some images are top-1
hits, some only top-5 hits and some misses. The classifier bias of the random model is raised for the classes
in KNOWN, so the 8 most likely classes of every image are KNOWN classes, whose devkit facts the test knows
independently of mvit's label tables.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image

from mvit_cli.random_weights import randomize_, structured_images

# (wnid, index in the model output = position in sorted-wnid order, devkit ILSVRC2012_ID), from the devkit's
# map_clsloc.txt: the devkit numbers classes in its own order, so ID - 1 is never the output index here.
KNOWN = (
    ("n02119789", 278, 1),  # kit fox
    ("n02100735", 212, 2),  # English setter
    ("n02110185", 250, 3),  # Siberian husky
    ("n02096294", 193, 4),  # Australian terrier
    ("n02102040", 217, 5),  # English springer
    ("n02066245", 147, 6),  # grey whale
    ("n02509815", 387, 7),  # lesser panda
    ("n02124075", 285, 8),  # Egyptian cat
)
WNID = {index: wnid for wnid, index, _ in KNOWN}
ILSVRC_ID = {index: ilsvrc for _, index, ilsvrc in KNOWN}
# Rank of the true class among each image's predictions, cycled over the images: 0 = top-1 hit,
# 1..4 = top-5 hit only, 5..7 = miss.
RANK_PATTERN = (0, 2, 6, 0, 4, 7, 1, 0, 5, 3)


def make_checkpoint(path: Path, seed: int = 0) -> torch.nn.Module:
    from mvit_cli.model import build_model

    model = randomize_(build_model("xxs"), seed=seed)
    with torch.no_grad():
        # Make the KNOWN classes the 8 most likely ones for every image; their order still depends on the image.
        model.classifier.bias[[index for _, index, _ in KNOWN]] += 100.0
    safetensors.torch.save_file(model.state_dict(), str(path),
                                metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    return model


def make_pictures(n: int, seed: int = 0) -> list[Image.Image]:
    """n RGB pictures of varied sizes (64-100 px) and aspect ratios."""
    rng = np.random.default_rng(seed)
    pictures = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(64, 101, size=2))
        pixels = structured_images(1, max(w, h), seed=seed * 1000 + i)[0, :, :h, :w]
        pictures.append(Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
    return pictures


@torch.no_grad()
def logits_of_files(model: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    """[N, 1000] logits of the files, decoded by Pillow here and preprocessed with the timm protocol."""
    from mvit_cli import manifest
    from mvit_cli.preprocess import preprocess

    protocol = manifest.preprocessing("timm")
    batch = torch.stack([preprocess(Image.open(p).convert("RGB"), protocol) for p in paths])
    return model.eval()(batch)


def choose_targets(logits: torch.Tensor) -> list[int]:
    order = logits.argsort(dim=1, descending=True)
    targets = [int(order[i, RANK_PATTERN[i % len(RANK_PATTERN)]]) for i in range(len(logits))]
    assert all(t in WNID for t in targets), "the bias must make every chosen class a KNOWN one"
    # The answer must not hinge on float rounding: the rank boundaries that decide a hit have clear margins.
    top = logits.gather(1, order[:, :6])
    assert float((top[:, 0] - top[:, 1]).min()) > 1e-3 and float((top[:, 4] - top[:, 5]).min()) > 1e-3
    return targets


def count_hits(logits: torch.Tensor, targets: list[int]) -> tuple[int, int]:
    """(top-1 hits, top-5 hits), counted as: how many classes score strictly higher than the true one."""
    top1 = top5 = 0
    for row, target in zip(logits, targets):
        higher = int((row > row[target]).sum())
        top1 += higher == 0
        top5 += higher < 5
    return top1, top5


@dataclass
class ValSet:
    """N pictures saved as ILSVRC2012_val_<number>.JPEG files in a staging folder, with their true classes."""

    files: list[Path]  # staged JPEGs, in order
    numbers: list[int]  # ILSVRC2012_val number of each file
    targets: list[int]  # true class index of each
    logits: torch.Tensor  # [N, 1000] from the test's own forward pass

    @property
    def expected(self) -> tuple[int, int]:
        return count_hits(self.logits, self.targets)


def make_val_set(model: torch.nn.Module, folder: Path, n: int, seed: int = 0) -> ValSet:
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [7 * i + 3 for i in range(n)]  # sparse, like a subset of the 50,000
    files = []
    for number, picture in zip(numbers, make_pictures(n, seed)):
        files.append(folder / f"ILSVRC2012_val_{number:08d}.JPEG")
        picture.save(files[-1], quality=95)
    logits = logits_of_files(model, files)
    return ValSet(files, numbers, choose_targets(logits), logits)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def write_class_folders(val_set: ValSet, root: Path) -> Path:
    for file, target in zip(val_set.files, val_set.targets):
        _link(file, root / WNID[target] / file.name)
    return root


def write_devkit(val_set: ValSet, root: Path) -> Path:
    """Flat folder root/val plus root/ILSVRC2012_validation_ground_truth.txt (one level above the images)."""
    val = root / "val"
    ids = {number: ILSVRC_ID[t] for number, t in zip(val_set.numbers, val_set.targets)}
    filler = [ilsvrc for _, _, ilsvrc in KNOWN]
    lines = [ids.get(n, filler[n % len(filler)]) for n in range(1, max(ids) + 6)]
    (root / "ILSVRC2012_validation_ground_truth.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in lines))
    for file in val_set.files:
        _link(file, val / file.name)
    return val


def write_kaggle(val_set: ValSet, root: Path) -> Path:
    """Kaggle's tree: root/LOC_val_solution.csv and the images in root/ILSVRC/Data/CLS-LOC/val."""
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        for file, target in reversed(list(zip(val_set.files, val_set.targets))):
            writer.writerow([file.stem, f"{WNID[target]} 12 34 200 180 {WNID[target]} 1 2 50 60"])
    for file in val_set.files:
        _link(file, val / file.name)
    return val


# ------------------------------------------------------------------ the other test sets (ReaL, V2, R, A, ...)

DATA = Path(__file__).resolve().parent.parent / "mvit_cli" / "data"


def subset_classes(name: str) -> dict[int, str]:
    """ImageNet-R's or -A's classes {output index: wnid}, from the published lists (line i of the indices file is
    the class of line i of the synsets file): the test's own facts, not mvit's class table."""
    wnids = (DATA / f"imagenet_{name}_synsets.txt").read_text().split()
    indices = [int(i) for i in (DATA / f"imagenet_{name}_indices.txt").read_text().split()]
    assert len(wnids) == len(indices) == 200
    return dict(zip(indices, wnids))


def choose_targets_among(logits: torch.Tensor, classes: list[int]) -> list[int]:
    """Targets from `classes` only, by RANK_PATTERN over the ranking among those classes (hits, top-5, misses)."""
    among = torch.tensor(sorted(classes))
    order = among[logits[:, among].argsort(dim=1, descending=True)]
    targets = [int(order[i, RANK_PATTERN[i % len(RANK_PATTERN)]]) for i in range(len(logits))]
    # The answer must not hinge on float rounding: each target is clear of its neighbours in the ranking.
    top = logits.gather(1, order[:, :9])
    for i in range(len(logits)):
        rank = RANK_PATTERN[i % len(RANK_PATTERN)]
        neighbours = top[i, max(rank - 1, 0):rank + 2]
        assert float((neighbours[:-1] - neighbours[1:]).min()) > 1e-4, (i, neighbours)
    return targets


def count_hits_among(logits: torch.Tensor, targets: list[int], classes: list[int]) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) with the outputs restricted to `classes`: rivals are only classes among them."""
    mask = torch.zeros(logits.shape[1], dtype=torch.bool)
    mask[classes] = True
    top1 = top5 = 0
    for row, target in zip(logits, targets):
        higher = int(((row > row[target]) & mask).sum())
        top1 += higher == 0
        top5 += higher < 5
    return top1, top5


def count_real_hits(logits: torch.Tensor, label_lists: list[list[int]]) -> tuple[int, int, int]:
    """(images with labels, top-1 hits, top-5 hits): a hit at k when any of the top k is one of the labels."""
    images = top1 = top5 = 0
    for row, accepted in zip(logits, label_lists):
        if not accepted:
            continue
        images += 1
        best = min(int((row > row[c]).sum()) for c in accepted)  # rank of the best-ranked correct class
        top1 += best == 0
        top5 += best < 5
    return images, top1, top5


def write_folders(files: list[Path], targets: list[int], root: Path, folder_of) -> Path:
    """root/<folder_of(target)>/<file name> links, one per image."""
    for file, target in zip(files, targets):
        _link(file, root / folder_of(target) / file.name)
    return root


def write_kaggle_csv(files: list[Path], targets: list[int], root: Path, wnid_of) -> Path:
    """Kaggle's layout for any classes: root/LOC_val_solution.csv and the images in root/ILSVRC/Data/CLS-LOC/val."""
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        for file, target in zip(files, targets):
            writer.writerow([file.stem, f"{wnid_of(target)} 1 2 30 40"])
    for file in files:
        _link(file, val / file.name)
    return val


def real_labels_for(val_set) -> tuple[list[list[int]], list[list[int]]]:
    """The test's own ReaL file (entry per image number 1..max+5) and the lists of the set's images, in order.

    Per image, cycling: no label (left out); the true class plus the model's top-1 (a hit only ReaL sees); the
    true class alone; the true class plus a class far outside the top 5.
    """
    top1 = val_set.logits.argmax(dim=1).tolist()
    per_image = []
    for i, target in enumerate(val_set.targets):
        per_image.append([[], sorted({target, top1[i]}), [target], sorted({target, 0})][i % 4])
    entries = [[(n * 37) % 1000] for n in range(1, max(val_set.numbers) + 6)]  # the images not in the set
    for number, accepted in zip(val_set.numbers, per_image):
        entries[number - 1] = accepted
    return entries, per_image
