"""`torchrun --nproc-per-node 2 -m mvit_cli eval DIR` (gloo, CPU, loopback) equals the single-process run.

An odd number of images (so the two shards differ in size) and one corrupt image: the all-reduced counts, the
failure count, the gathered predictions and per-class files must equal those of one process exactly, and the
counts must equal the test's own. A second pair of runs evaluates a suite (ImageNet val, ReaL with multi-label
and empty entries, ImageNet-R and R-clean restricted to 200 classes) in one invocation each.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eval_helpers import (
    choose_targets_among,
    count_hits_among,
    count_real_hits,
    make_checkpoint,
    make_val_set,
    real_labels_for,
    subset_classes,
    write_class_folders,
    write_folders,
)

N_IMAGES = 9  # odd: shards of 5 and 4 (plus the corrupt one)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(HF_HOME=str(tmp_path / "hf"), MVIT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # stay on loopback whatever the host name resolves to
    return env


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    checkpoint = root / "xxs-random.safetensors"
    model = make_checkpoint(checkpoint, seed=3)
    val_set = make_val_set(model, root / "staged", N_IMAGES, seed=3)
    return root, checkpoint, val_set


def launchers() -> dict[str, list[str]]:
    return {"single": [sys.executable],
            "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                         "--master-addr", "127.0.0.1", "--master-port", str(free_port())]}


@pytest.fixture(scope="module")
def runs(material):
    root, checkpoint, val_set = material
    directory = write_class_folders(val_set, root / "val")
    corrupt_class = sorted(directory.iterdir())[-1]
    (corrupt_class / "corrupt.JPEG").write_bytes(val_set.files[0].read_bytes()[:200])

    def run(name: str, launcher: list[str]) -> dict:
        out = root / name
        out.mkdir()
        command = [*launcher, "-m", "mvit_cli", "eval", str(directory), "--weights", str(checkpoint),
                   "--format", "json", "--workers", "0", "--batch-size", "2", "--device", "cpu",
                   "--predictions", str(out / "predictions.csv"), "--per-class", str(out / "per_class.csv"),
                   "--report", str(out / "report.html")]
        done = subprocess.run(command, capture_output=True, text=True, env=environment(root), timeout=240)
        return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "out": out}

    single, torchrun = (run(name, launcher) for name, launcher in launchers().items())
    return val_set, single, torchrun


@pytest.fixture(scope="module")
def suite_runs(material):
    """`eval --suite` over val (imagenet, ReaL, R-clean) and imagenet-r: one invocation per launcher."""
    root, checkpoint, val_set = material
    suite = root / "suite"
    write_class_folders(val_set, suite / "val")
    r_classes = subset_classes("r")
    r_targets = choose_targets_among(val_set.logits, list(r_classes))
    write_folders(val_set.files, r_targets, suite / "imagenet-r", r_classes.__getitem__)
    entries, per_image = real_labels_for(val_set)
    (root / "real.json").write_text(json.dumps(entries))
    expected = {
        "imagenet": (N_IMAGES, *val_set.expected),
        "real": count_real_hits(val_set.logits, per_image),
        "r": (N_IMAGES, *count_hits_among(val_set.logits, r_targets, list(r_classes))),
    }
    clean = [i for i, t in enumerate(val_set.targets) if t in r_classes]
    expected["r-clean"] = (len(clean), *count_hits_among(val_set.logits[clean], [val_set.targets[i] for i in clean],
                                                          list(r_classes)))
    runs_ = {}
    for name, launcher in launchers().items():
        command = [*launcher, "-m", "mvit_cli", "eval", "--suite", str(suite), "--real-labels",
                   str(root / "real.json"), "--weights", str(checkpoint), "--format", "json", "--workers", "0",
                   "--batch-size", "2", "--device", "cpu"]
        runs_[name] = subprocess.run(command, capture_output=True, text=True, env=environment(root), timeout=240)
    return expected, runs_


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.slow
def test_two_processes_equal_one(runs):
    val_set, single, torchrun = runs
    assert single["returncode"] == 3, single["stderr"]
    # torchrun exits 1 whenever a process exits non-zero; its summary names the process's own code, 3.
    assert torchrun["returncode"] == 1 and re.search(r"exitcode\s*:\s*3", torchrun["stderr"]), torchrun["stderr"]
    one, two = json.loads(single["stdout"]), json.loads(torchrun["stdout"])  # rank 1 printed nothing
    top1, top5 = val_set.expected
    for summary in (one, two):
        assert (summary["images"], summary["failed"]) == (N_IMAGES, 1)
        assert summary["top1"] == pytest.approx(100.0 * top1 / N_IMAGES, abs=1e-9)
        assert summary["top5"] == pytest.approx(100.0 * top5 / N_IMAGES, abs=1e-9)
    timing = ("seconds", "images_per_second")
    assert {k: v for k, v in one.items() if k not in timing} == {k: v for k, v in two.items() if k not in timing}


@pytest.mark.slow
def test_gathered_files_are_complete_and_equal(runs):
    val_set, single, torchrun = runs
    one = read_csv(single["out"] / "predictions.csv")
    two = read_csv(torchrun["out"] / "predictions.csv")
    assert len(one) == len(two) == N_IMAGES
    assert len({r["path"] for r in two}) == N_IMAGES  # every image once, none twice
    columns = ["path", "target", "top1", "top2", "top3", "top4", "top5"]
    assert [[r[c] for c in columns] for r in one] == [[r[c] for c in columns] for r in two]
    for a, b in zip(one, two):
        assert [float(a[f"prob{k}"]) for k in range(1, 6)] == pytest.approx(
            [float(b[f"prob{k}"]) for k in range(1, 6)], rel=1e-5)
    assert (single["out"] / "per_class.csv").read_text() == (torchrun["out"] / "per_class.csv").read_text()


@pytest.mark.slow
def test_rank_zero_writes_the_report_of_the_whole_set(runs):
    """The HTML report of two processes shows what one process's shows (the per-image predictions behind its
    calibration and confusions are gathered on rank 0), and says it ran on two."""
    from test_reports import parse_html

    _, single, torchrun = runs
    one, two = (parse_html(run["out"] / "report.html") for run in (single, torchrun))
    for table in ("accuracy-table", "per-class-table", "confusions-table"):
        assert [row.attrs for row in one.find("table", id=table).iter() if row.tag in ("tr", "td")] == \
            [row.attrs for row in two.find("table", id=table).iter() if row.tag in ("tr", "td")], table
    assert [(c.find("img").attrs["src"], c.attrs["title"]) for c in one.find(id="confusions").find_all("figure")] \
        == [(c.find("img").attrs["src"], c.attrs["title"]) for c in two.find(id="confusions").find_all("figure")]
    bins_one, bins_two = (page.find("table", id="bins-table").find_all("tr")[1:] for page in (one, two))
    assert [(b.attrs["data-images"], b.attrs["data-correct"]) for b in bins_one] == \
        [(b.attrs["data-images"], b.attrs["data-correct"]) for b in bins_two]
    assert float(one.find(id="ece").attrs["data-value"]) == pytest.approx(float(two.find(id="ece").attrs["data-value"]),
                                                                          abs=1e-6)
    assert "2 processes" in two.find("table", id="run-table").text()
    assert torchrun["stderr"].count("report written") == 1  # rank 0 only


@pytest.mark.slow
def test_only_rank_zero_reports(runs):
    _, _, torchrun = runs
    assert f"evaluating {N_IMAGES + 1} images on 2 processes (torch.distributed, gloo)" in torchrun["stderr"]
    assert torchrun["stderr"].count("corrupt.JPEG") == 1
    assert "mvit_cli/" not in torchrun["stderr"]  # no traceback from mvit (torchrun prints its own summary)


@pytest.mark.slow
def test_suite_of_real_and_r_on_two_processes_equals_one(suite_runs):
    expected, runs_ = suite_runs
    single, torchrun = runs_["single"], runs_["torchrun"]
    # a-clean cannot be read (no image of ImageNet-A's classes in val): exit 3 on one process, torchrun's 1 on two.
    assert single.returncode == 3, single.stderr
    assert torchrun.returncode == 1 and re.search(r"exitcode\s*:\s*3", torchrun.stderr), torchrun.stderr
    one, two = json.loads(single.stdout), json.loads(torchrun.stdout)
    timing = ("seconds", "images_per_second")
    assert [{k: v for k, v in e.items() if k not in timing} for e in one] == \
        [{k: v for k, v in e.items() if k not in timing} for e in two]
    by_name = {e["dataset"]: e for e in two}
    assert "error" in by_name["a-clean"]
    for name, (images, top1, top5) in expected.items():
        assert images and by_name[name]["images"] == images, name
        assert by_name[name]["top1"] == pytest.approx(100.0 * top1 / images, abs=1e-9), name
        assert by_name[name]["top5"] == pytest.approx(100.0 * top5 / images, abs=1e-9), name
    assert by_name["real"]["images_without_labels"] == N_IMAGES - expected["real"][0]
