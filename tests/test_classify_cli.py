"""`mvit classify` end to end, with a random-weight XXS checkpoint passed by --weights.

The expected predictions are the test's own: it decodes the image, preprocesses it with the reference timm
protocol written out in test_preprocess_parity.py and runs the plain model on it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
import csv
import io
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from image_corpus import smooth_rgb, write_corpus
from PIL import Image
import cli_helpers
from mvit_cli.random_weights import randomize_
from test_preprocess_parity import timm_eval_reference

from mvit_cli.labels import CLASSES
from mvit_cli.model import build_model

MVIT = Path(sys.executable).parent / "mvit"


pytestmark = pytest.mark.usefixtures("offline_empty_cache")


@dataclass(frozen=True)
class ClassifySetup:
    root: Path  # the module's folder: corpus/, refs/
    checkpoint: Path
    model: torch.nn.Module
    expected: dict[str, bool]  # corpus file name -> whether it must be classified (else an error record)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    model = randomize_(build_model("xxs"), seed=1)
    checkpoint = root / "xxs-random.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(checkpoint),
                                metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    upright = smooth_rgb(160, 120, seed=7)
    expected = write_corpus(root / "corpus", upright)
    # The EXIF-rotated JPEG's pixels as stored, and turned upright by hand, saved losslessly.
    stored = Image.open(root / "corpus" / "exif_rotated.jpg")
    stored = stored.convert("RGB")  # convert() drops EXIF handling: these are the raw stored pixels
    refs = root / "refs"
    refs.mkdir()
    stored.save(refs / "stored.png")
    stored.transpose(Image.Transpose.ROTATE_270).save(refs / "upright.png")  # orientation 6 undone
    return ClassifySetup(root, checkpoint, model, expected)


@pytest.fixture(scope="module")
def corpus_json(setup):
    """The whole corpus classified once (JSON, top-5); the other tests use small subsets of it."""
    root, checkpoint = setup.root, setup.checkpoint
    result = cli_helpers.invoke("classify", str(root / "corpus"), "--weights", str(checkpoint),
                                "--format", "json", "--workers", "0", "--batch-size", "4",
                                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf"),
                                     "MVIT_CACHE": str(root / "cache")})
    return result


# A few corpus files: two good images (one of them a PNG named .jpg) and a bad one.
SUBSET = ["upright.jpg", "zero_bytes.jpg", "png_named.jpg"]


def invoke(*args) -> "object":
    return cli_helpers.invoke("classify", *map(str, args))


def run_json(setup, *args, fmt: str = "json"):
    result = invoke(*args, "--weights", setup.checkpoint, "--format", fmt, "--workers", "0")
    assert "Traceback" not in result.output
    return result


def records_by_path(records) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in records}


def reference_probabilities(model, path: Path) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    x = timm_eval_reference(image, 256, 0.9, "bicubic", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with torch.no_grad():
        return torch.softmax(model(x[None]).double(), dim=1)[0]


def test_corpus_good_images_classified_bad_ones_error_records(setup, corpus_json):
    expected = setup.expected
    result = corpus_json
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    records = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in records] == sorted(expected)  # folder order: sorted
    for name, good in expected.items():
        record = records_by_path(records)[name]
        if good:
            assert "error" not in record, record
            assert len(record["predictions"]) == 5
        else:
            assert set(record) == {"path", "error"} and record["error"], record
    assert records_by_path(records)["zero_bytes.jpg"]["error"] == "empty file"
    assert "truncated" in records_by_path(records)["truncated.jpg"]["error"]
    assert "not an image" in records_by_path(records)["text.jpg"]["error"]
    assert "decompression-bomb" in records_by_path(records)["bomb.png"]["error"]
    failed = sum(not good for good in expected.values())
    assert f"{failed} of {len(expected)} inputs could not be classified" in result.stderr


def test_predictions_are_those_of_the_model(setup):
    root, model = setup.root, setup.model
    names = ["upright.jpg", "png_named.jpg", "cmyk.jpg"]
    result = run_json(setup, *(root / "corpus" / n for n in names), "--top-k", "7")
    assert result.exit_code == 0, result.output
    for name, record in zip(names, json.loads(result.stdout)):
        probabilities = reference_probabilities(model, root / "corpus" / name)
        values, indices = probabilities.topk(7)
        assert [p["index"] for p in record["predictions"]] == indices.tolist()
        assert [p["probability"] for p in record["predictions"]] == pytest.approx(values.tolist(), abs=1e-6)
        for p in record["predictions"]:
            assert (p["wnid"], p["label"]) == (CLASSES[p["index"]].wnid, CLASSES[p["index"]].name)


def test_exif_rotated_jpeg_is_classified_upright(setup):
    root = setup.root
    result = run_json(setup, root / "corpus" / "exif_rotated.jpg", root / "refs" / "upright.png",
                      root / "refs" / "stored.png", "--top-k", "1000")
    rotated, upright, stored = (
        np.array([p["probability"] for p in sorted(r["predictions"], key=lambda p: p["index"])])
        for r in json.loads(result.stdout)
    )
    assert np.abs(rotated - upright).max() < 1e-6
    assert np.abs(rotated - stored).max() > 1e-4  # ignoring the EXIF orientation would be caught


def test_top_k_sorted_and_summing_to_at_most_one(setup, corpus_json):
    root = setup.root
    subset = [root / "corpus" / name for name in SUBSET]
    runs = {5: json.loads(corpus_json.stdout)}
    runs.update({k: json.loads(run_json(setup, *subset, "--top-k", str(k)).stdout) for k in (1, 1000)})
    for k, records in runs.items():
        assert sum("error" not in record for record in records) >= 2
        for record in records:
            if "error" in record:
                continue
            probabilities = [p["probability"] for p in record["predictions"]]
            assert [p["rank"] for p in record["predictions"]] == list(range(1, k + 1))
            assert probabilities == sorted(probabilities, reverse=True)
            assert all(0 <= p <= 1 for p in probabilities)
            assert sum(probabilities) <= 1 + 1e-12
            assert len({p["index"] for p in record["predictions"]}) == k
            assert all(p == round(p, 8) for p in probabilities)  # 8 decimals at most
            if k == 1000:
                assert sum(probabilities) == pytest.approx(1, abs=1000 * 1e-8)


def test_json_jsonl_csv_agree(setup):
    root = setup.root
    subset = [root / "corpus" / name for name in SUBSET]
    as_json = json.loads(run_json(setup, *subset, fmt="json").stdout)
    as_jsonl = [json.loads(line) for line in run_json(setup, *subset, fmt="jsonl").stdout.splitlines()]
    rows = list(csv.DictReader(io.StringIO(run_json(setup, *subset, fmt="csv").stdout)))
    assert as_jsonl == as_json
    assert len(rows) == 5 + 1 + 5  # one row per image and rank; one row for the failed image

    from_csv: list[dict] = []
    for row in rows:
        if row["error"]:
            assert not any(row[c] for c in ("rank", "index", "wnid", "label", "probability"))
            from_csv.append({"path": row["path"], "error": row["error"]})
            continue
        if row["rank"] == "1":
            from_csv.append({"path": row["path"], "predictions": []})
        assert from_csv[-1]["path"] == row["path"]
        from_csv[-1]["predictions"].append({"rank": int(row["rank"]), "index": int(row["index"]),
                                            "wnid": row["wnid"], "label": row["label"],
                                            "probability": float(row["probability"])})
    assert from_csv == as_json  # probabilities included, to the last digit


def test_batch_size_and_workers_do_not_change_results(setup):
    root, checkpoint = setup.root, setup.checkpoint
    subset = [root / "corpus" / name for name in ("text.jpg", "cmyk.jpg", "rgba.png", "bomb.png", "one_pixel.png",
                                                   "wide_4000x10.png")]
    one = json.loads(run_json(setup, *subset, "--batch-size", "1").stdout)
    result = invoke(*subset, "--weights", checkpoint, "--format", "json", "--batch-size", "4", "--workers", "2")
    many = json.loads(result.stdout)
    assert [r["path"] for r in one] == [r["path"] for r in many] == list(map(str, subset))
    assert ["error" in r for r in one] == ["error" in r for r in many] == [True, False, False, True, False, False]
    for a, b in zip(one, many):
        if "error" not in a:
            assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
            assert [p["probability"] for p in a["predictions"]] == pytest.approx(
                [p["probability"] for p in b["predictions"]], abs=1e-6)


def test_output_file_and_clean_stdout(setup, tmp_path):
    root, checkpoint = setup.root, setup.checkpoint
    out = tmp_path / "results.jsonl"
    result = invoke(root / "corpus" / "upright.jpg", "--weights", checkpoint, "--format", "jsonl", "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["path"].endswith("upright.jpg") and len(record["predictions"]) == 5


def test_table_one_table_per_image_for_a_few(setup, corpus_json, monkeypatch):
    root, checkpoint = setup.root, setup.checkpoint
    monkeypatch.chdir(root)
    result = invoke("corpus/upright.jpg", "corpus/zero_bytes.jpg", "--weights", checkpoint)
    assert result.exit_code == 3
    record = records_by_path(json.loads(corpus_json.stdout))["upright.jpg"]
    lines = result.stdout.splitlines()
    assert "corpus/upright.jpg" in [line.strip() for line in lines]  # the table's title
    for p in record["predictions"]:
        assert any(p["label"] in line and p["wnid"] in line and f"{100 * p['probability']:.1f}%" in line
                   for line in lines)
    assert "corpus/zero_bytes.jpg: error: empty file" in result.stdout


def test_table_one_row_per_image_for_many(setup, corpus_json, monkeypatch):
    root, checkpoint = setup.root, setup.checkpoint
    monkeypatch.chdir(root)
    names = ["upright.jpg", "zero_bytes.jpg", "png_named.jpg", "rgba.png", "bomb.png"]
    result = cli_helpers.invoke("classify", *(f"corpus/{n}" for n in names), "--weights", str(checkpoint),
                                env={"COLUMNS": "160"})
    assert result.exit_code == 3
    records = records_by_path(json.loads(corpus_json.stdout))
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["image", "top-1", "prob", "next"]
    assert len(lines) == 1 + len(names)  # one line per image, nothing wraps at this width
    for name, line in zip(names, lines[1:]):
        assert line.startswith(f"corpus/{name} ")
        record = records[name]
        if "error" in record:
            assert "error" in line
        else:
            top = record["predictions"][0]
            assert top["label"] in line and f"{100 * top['probability']:.1f}%" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["nope/does-not-exist.jpg"], "no such file or folder"),
        (["EMPTY"], "no images found"),
        (["EMPTY", "--top-k", "0"], "--top-k"),
        (["EMPTY", "--format", "xml"], "--format"),
        (["EMPTY", "--device", "tpu"], "--device"),
        (["EMPTY", "--variant", "m"], "--variant"),
    ],
)
def test_usage_errors_exit_1_with_one_clear_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_installed_mvit_streams_jsonl_with_progress_on_a_terminal(setup):
    """The real console script: stdin as '-', stdout a pipe (clean JSONL), stderr a terminal (progress bar)."""
    root, checkpoint = setup.root, setup.checkpoint
    corpus = root / "corpus"
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(root / "hf"), "MVIT_CACHE": str(root / "cache")}
    process = subprocess.Popen(
        [str(MVIT), "classify", "-", corpus / "upright.jpg", corpus / "zero_bytes.jpg", corpus / "rgba.png",
         "--weights", checkpoint, "--format", "jsonl", "--batch-size", "1", "--workers", "1"],
        stdin=open(corpus / "upright.jpg", "rb"), stdout=subprocess.PIPE, stderr=slave, env=env,
    )
    os.close(slave)
    terminal: list[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: the process is done
                return
            if not chunk:
                return
            terminal.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    stderr = b"".join(terminal).decode(errors="replace")

    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr
    records = [json.loads(line) for line in stdout.decode().splitlines()]  # clean: every line is JSON
    assert [r["path"] for r in records] == ["-", str(corpus / "upright.jpg"), str(corpus / "zero_bytes.jpg"),
                                           str(corpus / "rgba.png")]
    assert records[0]["predictions"] == records[1]["predictions"]
    assert records[2] == {"path": str(corpus / "zero_bytes.jpg"), "error": "empty file"}
    assert "classifying" in stderr  # the progress bar, on the terminal only
    assert "1 of 4 inputs could not be classified" in stderr


def test_a_folder_run_writes_nothing_but_its_summary_to_stderr(setup, tmp_path):
    """Several batches, decoding threads and per-core model threads at once: stderr carries the failure summary
    only. Tracer warnings once leaked there: decoding threads reset the warning filters while the model was
    being traced (photo-sized images keep the decoders busy during the trace)."""
    root, checkpoint = setup.root, setup.checkpoint
    for i in range(24):
        smooth_rgb(1600, 1200, seed=i).save(tmp_path / f"photo_{i:02d}.jpg", quality=90)
    (tmp_path / "zz_broken.jpg").write_bytes(b"not a jpeg")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf"), "MVIT_CACHE": str(root / "cache")}
    result = subprocess.run(
        [str(MVIT), "classify", tmp_path, "--weights", checkpoint, "--format", "csv", "--batch-size", "8",
         "--workers", "2"], capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 3
    assert result.stderr.splitlines() == ["mvit: 1 of 25 inputs could not be classified; see their error records"]
    assert len(result.stdout.splitlines()) == 1 + 24 * 5 + 1  # a header, top-5 rows per image, 1 for the error


def test_table_shows_paths_verbatim_even_with_brackets(setup, tmp_path, monkeypatch):
    """rich reads "[...]" as markup; a file called "[bold]cat.jpg" must still be shown as it is named."""
    root, checkpoint = setup.root, setup.checkpoint
    monkeypatch.chdir(tmp_path)
    data = (root / "corpus" / "upright.jpg").read_bytes()
    names = ["[bold]cat.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(data)
    few = invoke(names[0], "--weights", checkpoint, "-k", "1")
    many = cli_helpers.invoke("classify", *names, "--weights", str(checkpoint), "-k", "1",
                              env={"COLUMNS": "120"})
    assert few.exit_code == many.exit_code == 0
    assert "[bold]cat.jpg" in few.stdout
    assert "[bold]cat.jpg" in many.stdout


def test_onnxruntime_backend_gives_the_models_probabilities(setup, tmp_path):
    pytest.importorskip("onnxruntime")
    root, model = setup.root, setup.model
    # A copy of the checkpoint in its own folder: the backend caches its ONNX export next to the weights.
    checkpoint = tmp_path / "weights" / "xxs.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(setup.checkpoint.read_bytes())
    images = [root / "corpus" / "upright.jpg", root / "corpus" / "png_named.jpg"]
    result = invoke(*images, "--weights", checkpoint, "--format", "json", "--workers", "0",
                    "--backend", "onnxruntime", "--top-k", "3")
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "weights").rglob("*.onnx")), "the ONNX export is cached beside the weights"
    for record, path in zip(json.loads(result.stdout), images):
        expected = reference_probabilities(model, path)
        top = expected.topk(3)
        assert [p["index"] for p in record["predictions"]] == top.indices.tolist()
        assert [p["probability"] for p in record["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_compact_table_keeps_one_line_per_image_and_shows_file_names():
    # Long paths used to wrap inside the file name ("n01440764_tench.J" / "PEG"), two lines per image.
    from rich.console import Console

    from mvit_cli.cli.render import TableRenderer

    names = [f"/data/some/rather/deep/folder/of/photos/n0144{i:04d}_tench.JPEG" for i in range(6)]
    prediction = {"rank": 1, "index": 0, "wnid": "n01440764", "label": "tench", "probability": 0.5}
    records = [{"path": name, "predictions": [prediction, {**prediction, "rank": 2}]} for name in names]
    stream = io.StringIO()
    terminal = Console(file=stream, width=100, color_system=None, force_terminal=True)  # a 100-column terminal
    renderer = TableRenderer(terminal, len(names), max(map(len, names)))
    renderer.write(records)
    lines = stream.getvalue().rstrip("\n").splitlines()
    assert len(lines) == 1 + len(names)  # header, then one line per image
    for line, name in zip(lines[1:], names):
        assert Path(name).name in line


def test_redirected_tables_keep_every_character(setup, tmp_path):
    """Not a terminal (a file, a pipe): no width guess of 80, nothing cut; the same run on an 80-column terminal
    cuts the paths at the front."""
    checkpoint = setup.checkpoint
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "and-another-level-of-folders"
    names = [deep / f"photograph-with-a-long-descriptive-name-{i:02d}.png" for i in range(6)]
    for i, name in enumerate(names):
        name.parent.mkdir(parents=True, exist_ok=True)
        smooth_rgb(40, 30, seed=i).save(name)
    done = subprocess.run([str(MVIT), "classify", str(deep), "--weights", str(checkpoint), "--top-k", "5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 + len(names)
    for line, name in zip(lines[1:], names):
        assert line.startswith(str(name)) and "…" not in line
        assert line.count("%") == 5  # top-1 and the next four, none cut
