"""`mvit eval --dataset ...` and `--suite`: every test and label set gives exactly the counts the test computes.

As in test_eval_cli.py, the logits come from the test's own forward pass over the image files and the correct
classes are the test's own (eval_helpers.py). The labels are chosen so that a wrong protocol gives another
number: for ImageNet-R / -A, the best class among the set's 200 is not the best of the 1000 (the random model's
eight most likely classes are mostly outside them); for ReaL, some images have several correct classes, some
none, and the images are numbered beyond the first ones.
"""

from __future__ import annotations

from dataclasses import dataclass
import csv
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval_helpers import (
    ValSet,
    DATA,
    KNOWN,
    WNID,
    choose_targets_among,
    count_hits,
    count_hits_among,
    count_real_hits,
    make_checkpoint,
    make_val_set,
    real_labels_for,
    subset_classes,
    write_class_folders,
    write_devkit,
    write_folders,
    write_kaggle,
    write_kaggle_csv,
)
from cli_helpers import invoke

N_IMAGES = 10

pytestmark = pytest.mark.usefixtures("offline_empty_cache")


@dataclass(frozen=True)
class ProtocolSetup:
    checkpoint: Path
    val_set: ValSet
    model: torch.nn.Module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    checkpoint = root / "xxs-random.safetensors"
    model = make_checkpoint(checkpoint)
    val_set = make_val_set(model, root / "staged", N_IMAGES)
    return ProtocolSetup(checkpoint, val_set, model)


def run_eval(*args):
    return invoke("eval", *map(str, args))


def run_json(directory, checkpoint: Path, *extra, code: int = 0):
    result = run_eval(*([directory] if directory else []), "--weights", checkpoint, "--format", "json",
                      "--workers", "0", *extra)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout), result


def assert_counts(summary: dict, images: int, top1: int, top5: int) -> None:
    assert summary["images"] == images
    assert summary["top1"] == pytest.approx(100.0 * top1 / images, abs=1e-9)
    assert summary["top5"] == pytest.approx(100.0 * top5 / images, abs=1e-9)


def in_val_order(rows: list[dict[str, str]], val_set) -> list[dict[str, str]]:
    """Prediction rows (in set order: by class folder, then name) in the order of the staged files."""
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(by_name) == len(rows)
    return [by_name[file.name] for file in val_set.files]


def assert_refused(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# ------------------------------------------------------------------ ImageNetV2, ImageNet-Sketch


def test_v2_folders_are_class_indices_and_recognised(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_folders(val_set.files, val_set.targets, tmp_path / "v2", str)
    summary, _ = run_json(directory, checkpoint)
    assert (summary["dataset"], summary["layout"], summary["classes"]) == ("v2", "index-folders", 1000)
    assert_counts(summary, N_IMAGES, *val_set.expected)
    assert summary["published"]["timm"]["top1"] == 57.25


def test_v2_folder_that_is_no_class_index_is_named(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_folders(val_set.files[:2], val_set.targets[:2], tmp_path / "v2", str)
    for name in ("1000", "007"):
        (directory / name).mkdir()
        shutil.copyfile(val_set.files[0], directory / name / "x.jpeg")
    assert_refused(run_eval(directory, "--weights", checkpoint), "1000", "007", "0..999")


def test_v2_folders_read_as_another_set_point_to_v2(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_folders(val_set.files[:2], val_set.targets[:2], tmp_path / "v2", str)
    assert_refused(run_eval(directory, "--weights", checkpoint, "--dataset", "sketch"), "--dataset v2")


def test_sketch_is_read_like_val_class_folders(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "sketch")
    summary, _ = run_json(directory, checkpoint, "--dataset", "sketch")
    assert (summary["dataset"], summary["layout"]) == ("sketch", "folders")
    assert_counts(summary, N_IMAGES, *val_set.expected)
    timm = summary["published"]["timm"]
    assert (timm["top1"], timm["top5"], timm["reference"]) == (14.565, 28.725, "timm results/results-sketch.csv")


def test_sketch_is_not_a_flat_folder(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_devkit(val_set, tmp_path / "data")  # flat images with a label file: a val layout only
    assert_refused(run_eval(directory, "--weights", checkpoint, "--dataset", "sketch"),
                   "flat folder", "one folder per class")


# ------------------------------------------------------------------ ImageNet-ReaL


@pytest.fixture
def real_json(setup, tmp_path):
    val_set = setup.val_set
    entries, per_image = real_labels_for(val_set)
    path = tmp_path / "my-real.json"
    path.write_text(json.dumps(entries))
    return path, per_image


def flat_folder(files: list[Path], directory: Path) -> Path:
    directory.mkdir(parents=True)
    for file in files:
        (directory / file.name).symlink_to(file)
    return directory


@pytest.mark.parametrize("layout", ["folders", "devkit", "kaggle", "flat"])
def test_real_counts_any_of_the_labels_in_every_val_layout(setup, tmp_path, real_json, layout):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    labels_path, per_image = real_json
    writer = {"folders": write_class_folders, "devkit": write_devkit, "kaggle": write_kaggle,
              "flat": lambda v, root: flat_folder(v.files, root / "val")}[layout]
    directory = writer(val_set, tmp_path / "data")
    images, top1, top5 = count_real_hits(val_set.logits, per_image)
    assert (images, top1, top5) != (N_IMAGES, *val_set.expected)  # the single labels would give another answer
    assert (top1, top5) != count_hits(val_set.logits, [c[0] if c else 0 for c in per_image])  # and the first one

    summary, _ = run_json(directory, checkpoint, "--dataset", "real", "--real-labels", labels_path)
    assert (summary["dataset"], summary["layout"], summary["classes"]) == ("real", layout, 1000)
    assert_counts(summary, images, top1, top5)
    assert summary["images_without_labels"] == N_IMAGES - images
    assert summary["labels"] == str(labels_path)
    assert summary["published"]["timm"]["top1"] == 76.604


def test_real_predictions_list_every_correct_class_and_per_class_counts_each(setup, tmp_path, real_json):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    labels_path, per_image = real_json
    directory = flat_folder(val_set.files, tmp_path / "val")
    predictions, per_class = tmp_path / "p.csv", tmp_path / "c.csv"
    run_json(directory, checkpoint, "--dataset", "real", "--real-labels", labels_path,
             "--predictions", predictions, "--per-class", per_class)
    labelled = [(file, accepted, row) for file, accepted, row in zip(val_set.files, per_image, val_set.logits)
                if accepted]
    rows = read_csv(predictions)
    assert [(Path(r["path"]).name, r["target"]) for r in rows] == [
        (file.name, " ".join(map(str, accepted))) for file, accepted, _ in labelled]
    expected: dict[int, list[int]] = {}
    for _, accepted, logits in labelled:
        _, hit1, hit5 = count_real_hits(logits[None], [accepted])
        for c in accepted:
            counts = expected.setdefault(c, [0, 0, 0])
            counts[0] += 1
            counts[1] += hit1
            counts[2] += hit5
    got = {int(r["index"]): [int(r["images"]), int(r["top1_correct"]), int(r["top5_correct"])]
           for r in read_csv(per_class)}
    assert got == expected


def test_real_default_labels_are_the_packaged_file(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = tmp_path / "val"
    directory.mkdir()
    for number, file in zip((1, 2, 3), val_set.files):
        shutil.copyfile(file, directory / f"ILSVRC2012_val_{number:08d}.JPEG")
    published = json.loads((DATA / "real.json").read_text())
    assert published[0] == [] and published[1] and published[2]  # the first image has no label
    summary, _ = run_json(directory, checkpoint, "--dataset", "real")
    images, top1, top5 = count_real_hits(val_set.logits[:3], published[:3])
    assert_counts(summary, images, top1, top5)
    assert summary["images_without_labels"] == 1
    assert Path(summary["labels"]).resolve() == (DATA / "real.json").resolve()


def test_real_names_the_images_it_cannot_place(setup, tmp_path, real_json):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = flat_folder(val_set.files[:2], tmp_path / "val")
    shutil.copyfile(val_set.files[0], directory / "holiday.JPEG")
    shutil.copyfile(val_set.files[0], directory / "ILSVRC2012_val_00099999.JPEG")
    assert_refused(run_eval(directory, "--weights", checkpoint, "--dataset", "real", "--real-labels", real_json[0]),
                   "holiday.JPEG", "ILSVRC2012_val_00099999.JPEG", "cannot be placed")


def test_real_labels_only_go_with_real(setup, tmp_path, real_json):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "val")
    assert_refused(run_eval(directory, "--weights", checkpoint, "--real-labels", real_json[0]), "--dataset real")


# ------------------------------------------------------------------ ImageNet-R / -A and their clean val subsets


@pytest.mark.parametrize("name", ["r", "a"])
def test_r_and_a_score_among_their_200_classes(setup, tmp_path, name):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    classes = subset_classes(name)
    targets = choose_targets_among(val_set.logits, list(classes))
    expected = count_hits_among(val_set.logits, targets, list(classes))
    assert expected != count_hits(val_set.logits, targets)  # scoring all 1000 outputs gives another answer
    directory = write_folders(val_set.files, targets, tmp_path / name, classes.__getitem__)
    for wnid in classes.values():  # the complete set of 200 folders, as in the download: recognised by auto
        (directory / wnid).mkdir(exist_ok=True)
    predictions = tmp_path / "p.csv"
    summary, _ = run_json(directory, checkpoint, "--predictions", predictions)
    assert (summary["dataset"], summary["classes"]) == (name, 200)
    assert_counts(summary, N_IMAGES, *expected)
    assert summary["published"]["timm"]["top1"] == {"r": 26.403, "a": 3.8}[name]

    # Predictions: output indices in the model's 1000-class numbering, probabilities a softmax over the 200.
    among = torch.tensor(sorted(classes))
    top6 = val_set.logits[:, among].topk(6, dim=1).values
    # No near-tie decides the top 5 (mvit's logits differ from the eager model's by ~1e-5 at most).
    assert float((top6[:, :-1] - top6[:, 1:]).min()) > 5e-5
    restricted = val_set.logits[:, among].double().softmax(dim=1).topk(5, dim=1)
    rows = in_val_order(read_csv(predictions), val_set)
    assert [[int(r[f"top{k}"]) for k in range(1, 6)] for r in rows] == among[restricted.indices].tolist()
    got = [float(r[f"prob{k}"]) for r in rows for k in range(1, 6)]
    assert got == pytest.approx(restricted.values.flatten().tolist(), rel=1e-4)
    assert [int(r["target"]) for r in rows] == targets


@pytest.mark.parametrize("name", ["r", "a"])
def test_r_and_a_refuse_a_class_folder_outside_their_200(setup, tmp_path, name):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    classes = subset_classes(name)
    targets = choose_targets_among(val_set.logits[:2], list(classes))
    directory = write_folders(val_set.files[:2], targets, tmp_path / name, classes.__getitem__)
    (directory / "n02119789").mkdir()  # kit fox: an ImageNet-1k class, not one of the 200
    shutil.copyfile(val_set.files[0], directory / "n02119789" / "fox.jpg")
    assert_refused(run_eval(directory, "--weights", checkpoint, "--dataset", name),
                   "n02119789", "200 classes", f"--dataset {name}-clean")


@pytest.mark.parametrize("name", ["r", "a"])
def test_clean_subsets_keep_val_images_of_the_200_and_restrict_outputs(setup, tmp_path, name):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    classes = subset_classes(name)
    inside = choose_targets_among(val_set.logits[:6], list(classes))
    outside = [index for _, index, _ in KNOWN if index not in classes][:4]
    targets = inside + outside
    wnid_of = {**classes, **WNID}.__getitem__
    directory = write_kaggle_csv(val_set.files, targets, tmp_path / "kaggle", wnid_of)
    expected = count_hits_among(val_set.logits[:6], inside, list(classes))
    assert expected != count_hits(val_set.logits[:6], inside)
    summary, _ = run_json(directory, checkpoint, "--dataset", f"{name}-clean")
    assert (summary["dataset"], summary["layout"], summary["classes"]) == (f"{name}-clean", "kaggle", 200)
    assert_counts(summary, 6, *expected)
    assert summary["images_other_classes"] == 4


# ------------------------------------------------------------------ resolution studies


def test_resolution_override_follows_timms_rule(setup, tmp_path):
    checkpoint, val_set, model = setup.checkpoint, setup.val_set, setup.model
    directory = write_class_folders(val_set, tmp_path / "val")
    predictions = tmp_path / "p.csv"
    summary, _ = run_json(directory, checkpoint, "--input-size", "160", "--crop-pct", "0.875",
                          "--interpolation", "bilinear", "--predictions", predictions)
    assert (summary["input_size"], summary["crop_pct"], summary["interpolation"]) == (160, 0.875, "bilinear")
    assert summary["protocol_is_published"] is False and summary["published"] is None

    # The test's own pipeline: shorter side floor(160 / 0.875) = 182 (bilinear), centre crop 160, [0, 1].
    batch = []
    for file in val_set.files:
        image = Image.open(file).convert("RGB")
        w, h = image.size
        size = (182, int(182 * h / w)) if w <= h else (int(182 * w / h), 182)
        image = image.resize(size, Image.Resampling.BILINEAR)
        left, top = int(round((size[0] - 160) / 2.0)), int(round((size[1] - 160) / 2.0))
        pixels = np.asarray(image.crop((left, top, left + 160, top + 160)), dtype=np.float32) / 255.0
        batch.append(torch.from_numpy(pixels).permute(2, 0, 1))
    with torch.no_grad():
        logits = model.eval()(torch.stack(batch))
    assert (logits.topk(5).indices != val_set.logits.topk(5).indices).any()  # the protocol changes the answer
    rows = in_val_order(read_csv(predictions), val_set)
    assert [[int(r[f"top{k}"]) for k in range(1, 6)] for r in rows] == logits.topk(5, dim=1).indices.tolist()
    got = [float(r[f"prob{k}"]) for r in rows for k in range(1, 6)]
    assert got == pytest.approx(logits.softmax(dim=1).topk(5, dim=1).values.flatten().tolist(), rel=1e-4)

    table = run_eval(directory, "--weights", checkpoint, "--workers", "0", "--input-size", "160", "--crop-pct",
                     "0.875", "--interpolation", "bilinear")
    text = " ".join(table.stdout.split())
    assert "differs from the published" in text and "(published:" not in text and "shorter side 182" in text


def test_the_published_protocol_spelled_out_is_still_the_published_one(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "val")
    summary, _ = run_json(directory, checkpoint, "--input-size", "256", "--crop-pct", "0.9",
                          "--interpolation", "bicubic", "--limit", "2")
    assert summary["protocol_is_published"] is True and summary["published"]["timm"]["top1"] == 68.936


@pytest.mark.parametrize("option", [("--crop-pct", "0"), ("--crop-pct", "1.5"), ("--input-size", "8")])
def test_impossible_protocols_are_refused(setup, tmp_path, option):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    assert_refused(run_eval(write_class_folders(val_set, tmp_path / "val"), "--weights", checkpoint, *option),
                   option[0])


# ------------------------------------------------------------------ --suite


def test_suite_runs_every_set_found_and_reports_the_unreadable_one(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    root = tmp_path / "sets"
    val = write_class_folders(val_set, root / "imagenet" / "val")
    broken = val / WNID[val_set.targets[0]] / "ILSVRC2012_val_00000002.JPEG"  # labelled in ReaL too
    broken.write_bytes(val_set.files[0].read_bytes()[:300])
    write_folders(val_set.files, val_set.targets, root / "imagenetv2-matched-frequency-format-val", str)
    r_classes = subset_classes("r")
    r_targets = choose_targets_among(val_set.logits, list(r_classes))
    write_folders(val_set.files, r_targets, root / "imagenet-r", r_classes.__getitem__)
    a_classes = subset_classes("a")
    a_folder = write_folders(val_set.files[:1], [next(iter(a_classes))], root / "imagenet-a", a_classes.__getitem__)
    (a_folder / "n02119789").mkdir()  # not one of A's classes: this set cannot be read
    shutil.copyfile(val_set.files[0], a_folder / "n02119789" / "fox.jpg")

    entries, result = run_json(None, checkpoint, "--suite", root, code=3)
    by_name = {entry["dataset"]: entry for entry in entries}
    # In table order; sketch is missing (not an entry), a and a-clean could not be read (val has no A class).
    assert [e["dataset"] for e in entries] == ["imagenet", "real", "v2", "r", "r-clean", "a", "a-clean"]
    assert "error" in by_name["a"] and "n02119789" in by_name["a"]["error"]
    assert "error" in by_name["a-clean"] and "sketch: not found" in result.stderr
    assert_counts(by_name["imagenet"], N_IMAGES, *val_set.expected)
    # One pass over val: the broken image fails once, is reported once, and counts as failed in both sets.
    assert by_name["imagenet"]["failed"] == 1 and by_name["real"]["failed"] == 1
    assert result.stderr.count("ILSVRC2012_val_00000002.JPEG") == 1
    assert_counts(by_name["v2"], N_IMAGES, *val_set.expected)
    assert_counts(by_name["r"], N_IMAGES, *count_hits_among(val_set.logits, r_targets, list(r_classes)))
    published = json.loads((DATA / "real.json").read_text())
    images, top1, top5 = count_real_hits(val_set.logits, [published[n - 1] for n in val_set.numbers])
    assert_counts(by_name["real"], images, top1, top5)
    clean = [i for i, t in enumerate(val_set.targets) if t in r_classes]
    assert clean and len(clean) < N_IMAGES
    assert_counts(by_name["r-clean"], len(clean), *count_hits_among(
        val_set.logits[clean], [val_set.targets[i] for i in clean], list(r_classes)))

    table = run_eval("--suite", root, "--weights", checkpoint, "--workers", "0")
    assert table.exit_code == 3
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    r = by_name["r"]
    assert f"{r['top1']:.2f}" in lines["r"] and "26.40 / 43.14" in lines["r"]
    assert f"{r['top1'] - 26.403:+.2f} / {r['top5'] - 43.137:+.2f}" in lines["r"]
    assert "not evaluated" in lines["a"]


@pytest.mark.parametrize("extra", [("DIR",), ("--predictions", "p.csv"), ("--dataset", "r")])
def test_suite_usage_mistakes_are_refused(setup, tmp_path, extra):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    root = tmp_path / "sets"
    write_class_folders(val_set, root / "val")
    args = [root / "val"] if extra == ("DIR",) else [*extra]
    assert_refused(run_eval(*args, "--suite", root, "--weights", checkpoint), "--suite")


def test_suite_without_any_set_says_where_it_looked(setup, tmp_path):
    checkpoint = setup.checkpoint
    assert_refused(run_eval("--suite", tmp_path, "--weights", checkpoint), "imagenet-r", "sketch")


# ------------------------------------------------------------------ facts the protocols rest on

# Issue 13's table: timm's results CSVs, 256 px, crop 0.9, bicubic; (top-1, top-5) per variant xxs, xs, s.
PUBLISHED = {
    "imagenet": ((68.936, 88.942), (74.618, 92.350), (78.298, 94.168)),
    "real": ((76.604, 92.677), (81.542, 95.042), (84.265, 96.283)),
    "v2": ((57.250, 79.730), (62.850, 84.690), (66.790, 86.920)),
    "sketch": ((14.565, 28.725), (18.340, 33.235), (22.606, 38.863)),
    "r": ((26.403, 43.137), (29.693, 46.090), (33.790, 49.480)),
    "r-clean": ((87.970, 97.200), (91.270, 98.220), (93.180, 98.800)),
    "a": ((3.800, 22.133), (7.693, 32.547), (13.013, 40.827)),
    "a-clean": ((87.150, 96.100), (90.850, 97.940), (93.210, 98.470)),
}
RESULTS_CSV = {"imagenet": "results-imagenet.csv", "real": "results-imagenet-real.csv",
               "v2": "results-imagenetv2-matched-frequency.csv", "sketch": "results-sketch.csv",
               "r": "results-imagenet-r.csv", "r-clean": "results-imagenet-r-clean.csv",
               "a": "results-imagenet-a.csv", "a-clean": "results-imagenet-a-clean.csv"}


def test_every_published_figure_matches_issue_13():
    from mvit_cli import manifest
    from mvit_cli.evaluation.protocols import DATASETS

    assert set(DATASETS) == set(PUBLISHED)
    for dataset, figures in PUBLISHED.items():
        for variant, (top1, top5) in zip(("xxs", "xs", "s"), figures):
            timm = manifest.published_on(dataset, variant)["timm"]
            assert (timm["top1"], timm["top5"]) == (top1, top5), (dataset, variant)
            assert timm["reference"] == f"timm results/{RESULTS_CSV[dataset]}"
            assert timm["protocol"] == "256 px, crop 0.9, bicubic"


def test_class_lists_agree_with_the_class_table_and_with_timms_copies():
    from mvit_cli import labels
    from mvit_cli.evaluation import class_subsets

    for name in ("r", "a"):
        classes = subset_classes(name)
        assert all(labels.CLASSES[index].wnid == wnid for index, wnid in classes.items())
        assert class_subsets.subset_indices(name) == tuple(sorted(classes))
    spec = importlib.util.find_spec("timm")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed: its copies of the lists are not compared")
    timm_info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    for ours, theirs in (("real.json", "imagenet_real_labels.json"), *(
            (f"imagenet_{n}_{kind}.txt",) * 2 for n in "ra" for kind in ("synsets", "indices"))):
        assert (DATA / ours).read_bytes() == (timm_info / theirs).read_bytes(), ours


def test_the_dataset_option_offers_exactly_the_protocols():
    from mvit_cli.cli.evaluate import Dataset
    from mvit_cli.evaluation.protocols import DATASETS

    assert [d.value for d in Dataset] == ["auto", *DATASETS]


def test_tally_counts_an_image_once_and_in_the_row_of_each_of_its_classes():
    from mvit_cli.metrics import Tally

    tally = Tally()
    predicted = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 0], [9, 8, 7, 6, 5]])
    targets = torch.tensor([[6, 5], [4, -1], [0, 1]])  # top-1 hit; top-5 only; miss (0 and 1 not predicted)
    hit1, hit5 = tally.add(targets, predicted)
    assert hit1.tolist() == [True, False, False] and hit5.tolist() == [True, True, False]
    assert (tally.images, tally.top1, tally.top5) == (3, 1, 2)
    rows = {c.index: (c.images, c.top1, c.top5) for c in tally.classes()}
    assert rows == {0: (1, 0, 0), 1: (1, 0, 0), 4: (1, 0, 1), 5: (1, 1, 1), 6: (1, 1, 1)}


@pytest.mark.parametrize("option", ["--labels", "--real-labels"])
def test_a_fifo_as_label_file_is_refused_not_waited_on(setup, tmp_path, option):
    # Opening a FIFO for reading blocks until a writer comes: eval hung for ever, Ctrl-C aside.
    import os
    import subprocess
    import sys

    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = flat_folder(val_set.files[:2], tmp_path / "val")
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "mvit_cli", "eval", str(directory), "--weights", str(checkpoint),
               "--dataset", "real", option, str(fifo)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{option} FIFO: eval still waiting after 60 s")
    assert done.returncode == 1 and "not a regular file" in done.stderr and "Traceback" not in done.stderr
