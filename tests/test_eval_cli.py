"""`mvit eval` end to end: every layout gives exactly the counts the test computes itself.

See eval_helpers.py for how the expected answers are made independent of mvit: the test runs the model on the
image files itself and picks each image's true class from those logits (some hits, some top-5-only, some misses).
"""

from __future__ import annotations

from dataclasses import dataclass
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eval_helpers import (
    ValSet,
    ILSVRC_ID,
    KNOWN,
    count_hits,
    make_checkpoint,
    make_val_set,
    write_class_folders,
    write_devkit,
    write_kaggle,
)
from cli_helpers import invoke

N_IMAGES = 10
JSON_KEYS = {"dataset", "layout", "variant", "source", "classes", "input_size", "crop_pct", "interpolation", "images",
             "failed", "images_without_labels", "images_other_classes", "top1", "top5", "seconds",
             "images_per_second", "published", "protocol_is_published", "partial", "limit", "labels", "checkpoint",
             "dtype"}


pytestmark = pytest.mark.usefixtures("offline_empty_cache")


@dataclass(frozen=True)
class EvalSetup:
    checkpoint: Path
    val_set: ValSet
    model: torch.nn.Module
    root: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    checkpoint = root / "xxs-random.safetensors"
    model = make_checkpoint(checkpoint)
    val_set = make_val_set(model, root / "staged", N_IMAGES)
    return EvalSetup(checkpoint, val_set, model, root)


def run_eval(*args: str):
    return invoke("eval", *map(str, args))


def run_json(directory: Path, checkpoint: Path, *extra: str) -> tuple[dict, object]:
    result = run_eval(directory, "--weights", checkpoint, "--format", "json", "--workers", "0", *extra)
    assert result.exit_code in (0, 3, 130), result.output
    return json.loads(result.stdout), result


def assert_counts(summary: dict, images: int, top1: int, top5: int) -> None:
    assert summary["images"] == images
    assert summary["top1"] == pytest.approx(100.0 * top1 / images, abs=1e-9)
    assert summary["top5"] == pytest.approx(100.0 * top5 / images, abs=1e-9)


def test_expected_answers_have_teeth(setup):
    val_set = setup.val_set
    top1, top5 = val_set.expected
    assert 0 < top1 < top5 < N_IMAGES
    # An image/label misalignment (labels shifted by one) would change the counts.
    shifted = val_set.targets[1:] + val_set.targets[:1]
    assert count_hits(val_set.logits, shifted) != (top1, top5)


@pytest.mark.parametrize("layout", ["folders", "devkit", "kaggle"])
def test_each_layout_gives_the_exact_counts(setup, layout, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    writer = {"folders": write_class_folders, "devkit": write_devkit, "kaggle": write_kaggle}[layout]
    directory = writer(val_set, tmp_path / "data")
    summary, result = run_json(directory, checkpoint)
    assert result.exit_code == 0, result.output
    top1, top5 = val_set.expected
    assert_counts(summary, N_IMAGES, top1, top5)
    assert set(summary) == JSON_KEYS
    assert (summary["layout"], summary["variant"], summary["source"], summary["failed"]) == (layout, "xxs", "timm", 0)
    assert (summary["dataset"], summary["classes"], summary["input_size"], summary["crop_pct"],
            summary["interpolation"], summary["protocol_is_published"]) == ("imagenet", 1000, 256, 0.9, "bicubic", True)
    assert summary["images_without_labels"] is None and summary["images_other_classes"] is None
    assert summary["partial"] is False and summary["limit"] is None
    assert summary["published"]["timm"]["top1"] == 68.936 and summary["published"]["timm"]["top5"] == 88.942
    assert summary["seconds"] > 0 and summary["images_per_second"] > 0


def test_devkit_numbers_are_read_in_devkit_class_order(setup, tmp_path):
    """ILSVRC2012_ID k is not output index k - 1: reading it so would give no hit at all here."""
    checkpoint, val_set = setup.checkpoint, setup.val_set
    assert all(ilsvrc - 1 != index for _, index, ilsvrc in KNOWN)
    wrong = [ILSVRC_ID[t] - 1 for t in val_set.targets]
    assert count_hits(val_set.logits, wrong) == (0, 0)
    directory = write_devkit(val_set, tmp_path / "data")
    labels = directory.parent / "ILSVRC2012_validation_ground_truth.txt"
    moved = tmp_path / "elsewhere" / "gt.txt"
    moved.parent.mkdir()
    labels.rename(moved)
    summary, result = run_json(directory, checkpoint, "--labels", moved)
    assert result.exit_code == 0, result.output
    assert_counts(summary, N_IMAGES, *val_set.expected)
    assert summary["labels"] == str(moved)


def test_flat_folder_without_labels_is_refused(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_devkit(val_set, tmp_path / "data")
    (directory.parent / "ILSVRC2012_validation_ground_truth.txt").unlink()
    result = run_eval(directory, "--weights", checkpoint, "--format", "json")
    assert result.exit_code == 1
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("mvit: error:") and "\n" not in message and "Traceback" not in message
    for needle in ("WordNet id", "ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv", "--labels"):
        assert needle in message


def test_corrupt_images_are_counted_as_failed_and_exit_3(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "data")
    good = val_set.files[0].read_bytes()
    first_class = directory / sorted(p.name for p in directory.iterdir())[0]
    (first_class / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    (first_class / "text.JPEG").write_text("this is not a picture")
    summary, result = run_json(directory, checkpoint, "--workers", "2", "--batch-size", "3")
    assert result.exit_code == 3, result.output
    assert summary["failed"] == 2
    assert_counts(summary, N_IMAGES, *val_set.expected)  # the failed images are left out of the accuracy
    assert "truncated.JPEG" in result.stderr and "text.JPEG" in result.stderr
    assert "left out of the accuracy" in result.stderr


def test_table_output(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_kaggle(val_set, tmp_path / "data")
    result = run_eval(directory, "--weights", checkpoint, "--workers", "0")
    assert result.exit_code == 0, result.output
    top1, top5 = val_set.expected
    text = " ".join(result.stdout.split())
    for needle in ("Kaggle", "xxs", "timm", f"{100 * top1 / N_IMAGES:.2f} %", f"{100 * top5 / N_IMAGES:.2f} %",
                   "68.94", "88.94", "images/s"):
        assert needle in text, needle


def test_predictions_and_per_class_files(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_devkit(val_set, tmp_path / "data")
    predictions, per_class = tmp_path / "predictions.csv", tmp_path / "per_class.csv"
    summary, result = run_json(directory, checkpoint, "--predictions", predictions, "--per-class", per_class)
    assert result.exit_code == 0, result.output

    rows = list(csv.DictReader(io.StringIO(predictions.read_text())))
    assert [Path(r["path"]).name for r in rows] == [f.name for f in val_set.files]
    assert [int(r["target"]) for r in rows] == val_set.targets
    expected_top5 = val_set.logits.topk(5, dim=1).indices.tolist()
    assert [[int(r[f"top{k}"]) for k in range(1, 6)] for r in rows] == expected_top5
    probabilities = val_set.logits.softmax(dim=1).topk(5, dim=1).values
    got = [float(r[f"prob{k}"]) for r in rows for k in range(1, 6)]
    assert got == pytest.approx(probabilities.flatten().tolist(), rel=1e-4)
    # Written as classify writes them: rounded down to 8 decimals (they had 6 significant digits).
    texts = [r[f"prob{k}"] for r in rows for k in range(1, 6)]
    assert all(len(t.split("e")[0].partition(".")[2]) <= 8 and float(t) == round(float(t), 8) for t in texts)
    assert max(len(t) for t in texts) > 8  # more than 6 significant digits survive

    classes = {int(r["index"]): r for r in csv.DictReader(io.StringIO(per_class.read_text()))}
    assert set(classes) == set(val_set.targets)
    for index, row in classes.items():
        mine = [i for i, t in enumerate(val_set.targets) if t == index]
        top1, top5 = count_hits(val_set.logits[mine], [index] * len(mine))
        assert (int(row["images"]), int(row["top1_correct"]), int(row["top5_correct"])) == (len(mine), top1, top5)
        assert row["wnid"] == dict((i, w) for w, i, _ in KNOWN)[index]
        assert row["top1"] == f"{100 * top1 / len(mine):.2f}"


def test_limit_takes_a_class_balanced_subset(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "data")
    predictions = tmp_path / "p.csv"
    summary, result = run_json(directory, checkpoint, "--limit", "4", "--predictions", predictions)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(predictions.read_text())))
    assert summary["images"] == 4 and summary["limit"] == 4 and len(rows) == 4
    targets = [int(r["target"]) for r in rows]
    assert len(set(targets)) == min(4, len(set(val_set.targets)))
    chosen = [[f.name for f in val_set.files].index(Path(r["path"]).name) for r in rows]
    assert_counts(summary, 4, *count_hits(val_set.logits[chosen], [val_set.targets[i] for i in chosen]))


def test_unknown_class_folder_is_named(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "data")
    (directory / "n99999999").mkdir()
    result = run_eval(directory, "--weights", checkpoint)
    assert result.exit_code == 1 and "n99999999" in result.stderr and "Traceback" not in result.stderr


def test_help_has_examples():
    result = run_eval("--help")
    assert result.exit_code == 0 and "Examples" in result.stdout and "torchrun" in result.stdout


@pytest.mark.slow
def test_ctrl_c_prints_a_partial_result(setup, tmp_path):
    """A real Ctrl-C (SIGINT to the whole process group, decoding workers included) mid-run."""
    checkpoint, model = setup.checkpoint, setup.model
    val_set = make_val_set(model, tmp_path / "staged", 40, seed=1)
    directory = write_class_folders(val_set, tmp_path / "data")
    predictions = tmp_path / "p.csv"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mvit_cli", "eval", str(directory), "--weights", str(checkpoint), "--format", "json",
         "--batch-size", "1", "--workers", "1", "--predictions", str(predictions)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if predictions.exists() and len(predictions.read_text().splitlines()) >= 3:  # header + 2 rows
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    summary = json.loads(stdout)
    rows = list(csv.DictReader(io.StringIO(predictions.read_text())))
    assert summary["partial"] is True and "partial" in stderr and "Traceback" not in stderr
    assert 2 <= summary["images"] == len(rows) < 40
    done = [[f.name for f in val_set.files].index(Path(r["path"]).name) for r in rows]
    assert_counts(summary, len(rows), *count_hits(val_set.logits[done], [val_set.targets[i] for i in done]))


def test_exif_orientation_is_ignored_like_the_reference_pipelines(setup, tmp_path):
    # timm's evaluation (which produced the published numbers) decodes with Image.open(...).convert("RGB") and
    # never applies EXIF orientation; eval must see the stored pixels too, or tagged photos are scored rotated.
    from PIL import Image, ImageOps

    from eval_helpers import logits_of_files, make_pictures

    checkpoint, model = setup.checkpoint, setup.model
    stored = make_pictures(1, seed=7)[0].resize((96, 64))  # not square: a 90-degree turn changes the crop
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "val" / "n02124075" / "ILSVRC2012_val_00000001.JPEG"
    path.parent.mkdir(parents=True)
    stored.save(path, quality=95, exif=exif)
    upright = tmp_path / "upright.png"
    ImageOps.exif_transpose(Image.open(path)).save(upright)  # the same decoded pixels, turned for display

    as_stored, as_displayed = logits_of_files(model, [path, upright]).softmax(dim=1)
    assert (as_stored - as_displayed).abs().max() > 1e-2  # the two readings are told apart below

    predictions = tmp_path / "predictions.csv"
    _, result = run_json(tmp_path / "val", checkpoint, "--predictions", predictions)
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(io.StringIO(predictions.read_text()))
    top5 = [int(row[f"top{k}"]) for k in range(1, 6)]
    assert [float(row[f"prob{k}"]) for k in range(1, 6)] == pytest.approx(as_stored[top5].tolist(), abs=1e-5)


def test_onnxruntime_backend_gives_the_exact_counts(setup, tmp_path):
    pytest.importorskip("onnxruntime")
    checkpoint, val_set = setup.checkpoint, setup.val_set
    weights = tmp_path / "weights" / checkpoint.name  # its own folder: the ONNX export is cached beside it
    weights.parent.mkdir()
    weights.write_bytes(checkpoint.read_bytes())
    directory = write_class_folders(val_set, tmp_path / "data")
    summary, result = run_json(directory, weights, "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert_counts(summary, N_IMAGES, *val_set.expected)


def test_unwritable_per_class_file_fails_before_the_evaluation(setup, tmp_path):
    # It was opened only after the whole set had been evaluated: an hour of ImageNet lost to a typo.
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "data")
    predictions = tmp_path / "predictions.csv"
    result = run_eval(directory, "--weights", checkpoint, "--workers", "0", "--predictions", predictions,
                      "--per-class", tmp_path / "missing" / "per_class.csv")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "per_class.csv" in result.output
    assert not predictions.exists()  # refused before anything was opened, let alone evaluated


# ------------------------------------------------------------------ outputs that must not destroy inputs (issue 18)


def copied_class_folders(val_set, root: Path) -> Path:
    """Class folders of real copies (not links to the shared staged files): these tests aim outputs at them."""
    import shutil

    from eval_helpers import WNID

    for file, target in zip(val_set.files, val_set.targets):
        (root / WNID[target]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, root / WNID[target] / file.name)
    return root


@pytest.mark.parametrize("aim", ["the image", "a hard link", "a symlink"])
def test_predictions_aimed_at_an_image_is_refused(setup, tmp_path, aim):
    # Issue 18, finding 4: eval truncated the image (classify had the check, eval did not); the check must
    # compare files, not paths: a hard link has a path of its own.
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = copied_class_folders(val_set, tmp_path / "data")
    chosen = tmp_path / "chosen.csv"
    _, result = run_json(directory, checkpoint, "--limit", "2", "--predictions", chosen)
    # An image outside the --limit subset is still an input file of the folder.
    image = next(p for p in sorted(directory.glob("*/*.JPEG")) if str(p) not in chosen.read_text())
    before = image.read_bytes()
    target = {"the image": image, "a hard link": tmp_path / "link.csv", "a symlink": tmp_path / "sym.csv"}[aim]
    if aim == "a hard link":
        os.link(image, target)
    elif aim == "a symlink":
        target.symlink_to(image)
    result = run_eval(directory, "--weights", checkpoint, "--workers", "0", "--limit", "2", "--predictions", target)
    assert result.exit_code == 1, result.output
    assert "--predictions" in result.stderr and "overwritten" in result.stderr and "Traceback" not in result.stderr
    assert image.read_bytes() == before


def test_per_class_aimed_at_the_label_file_is_refused(setup, tmp_path):
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_devkit(val_set, tmp_path / "data")
    labels = directory.parent / "ILSVRC2012_validation_ground_truth.txt"
    before = labels.read_text()
    result = run_eval(directory, "--weights", checkpoint, "--workers", "0", "--per-class", labels)
    assert result.exit_code == 1 and "--per-class" in result.stderr, result.output
    assert labels.read_text() == before


@pytest.mark.parametrize("packaged", [False, True])
def test_predictions_aimed_at_the_real_labels_are_refused(setup, tmp_path, packaged):
    from eval_helpers import DATA

    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_devkit(val_set, tmp_path / "data")
    labels = DATA / "real.json"
    if not packaged:
        labels = tmp_path / "mine.json"
        labels.write_text(json.dumps([[0]] * 100))
    before = labels.read_bytes()
    link = tmp_path / "link.csv"
    link.symlink_to(labels)
    extra = [] if packaged else ["--real-labels", labels]
    result = run_eval(directory, "--weights", checkpoint, "--dataset", "real", *extra, "--predictions", link)
    assert result.exit_code == 1 and "overwritten" in result.stderr, result.output
    assert labels.read_bytes() == before


@pytest.mark.parametrize("how", ["one path", "a hard link", "a symlink", "a symlink to a new file"])
def test_predictions_and_per_class_in_one_file_are_refused(setup, tmp_path, how):
    # Issue 18, finding 6: both writers shared one file, which ended as one corrupt CSV, and eval exited 0.
    checkpoint, val_set = setup.checkpoint, setup.val_set
    directory = write_class_folders(val_set, tmp_path / "data")
    first, second = tmp_path / "out.csv", tmp_path / "other.csv"
    if how == "one path":
        second = tmp_path / "." / "out.csv"
    elif how == "a hard link":
        first.write_text("kept\n")
        os.link(first, second)
    else:
        if how == "a symlink":
            first.write_text("kept\n")
        second.symlink_to(first)  # dangling for "a new file": both would create out.csv
    result = run_eval(directory, "--weights", checkpoint, "--workers", "0", "--predictions", first,
                      "--per-class", second)
    assert result.exit_code == 1, result.output
    assert "same file" in result.stderr and "Traceback" not in result.stderr
    assert (first.read_text() if first.exists() else "kept\n") == "kept\n"


def test_every_image_failing_gives_no_accuracy(setup, tmp_path):
    # Issue 18, finding 13: "top1": 0.0 with "images": 0 read as a model that is always wrong.
    checkpoint = setup.checkpoint
    folder = tmp_path / "data" / KNOWN[0][0]
    folder.mkdir(parents=True)
    for name in ("a.JPEG", "b.JPEG"):
        (folder / name).write_text("not a picture")
    summary, result = run_json(tmp_path / "data", checkpoint)
    assert result.exit_code == 3, result.output
    assert (summary["images"], summary["failed"], summary["top1"], summary["top5"]) == (0, 2, None, None)
    assert "every image failed" in result.stderr
    table = run_eval(tmp_path / "data", "--weights", checkpoint, "--workers", "0")
    assert table.exit_code == 3
    text = " ".join(table.stdout.split())
    assert "no accuracy: every image failed" in text and "0.00 %" not in text
