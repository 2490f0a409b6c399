"""`mvit bench` (its JSON report) and `mvit export` (files that load back and give the model's logits)."""

from __future__ import annotations

import json

import pytest
import torch

import cli_helpers

from mvit_cli import benchmark
from mvit_cli import export as export_module
from mvit_cli.errors import ExportParityError
from mvit_cli.model import MobileViT
from mvit_cli.random_weights import structured_images

BENCH_KEYS = {"variant", "batch_size", "backend", "latency_ms", "images_per_second", "setup_s", "weights",
              "latency_ms_p10", "latency_ms_p90", "images_per_second_p10", "images_per_second_p90", "device"}


# No cached weights, no network: bench must fall back to random weights without downloading.
pytestmark = pytest.mark.usefixtures("offline_empty_cache")


@pytest.fixture(scope="module")
def model(xxs_checkpoint):
    return xxs_checkpoint.model


@pytest.fixture(scope="module")
def weights(xxs_checkpoint):
    return xxs_checkpoint.path


def invoke(*args: str):
    return cli_helpers.invoke(*args, code=0)


QUICK = ("--input-size", "64", "--warmup", "0", "--repetitions", "3", "--min-seconds", "0")


def test_bench_json_without_weights_uses_random_weights():
    result = invoke("bench", "--variant", "xxs", "--batch-size", "2", "--format", "json", *QUICK)
    report = json.loads(result.stdout)
    assert BENCH_KEYS <= report.keys()
    assert report["variant"] == "xxs" and report["batch_size"] == 2 and report["backend"] == "torch"
    assert report["weights"] == "random" and report["input_size"] == [64, 64]
    assert report["latency_ms"] > 0 and report["setup_s"] > 0
    # images/s is per call: the median lies within its own spread and, with an odd number of calls timed, is
    # exactly the batch over the median latency (the same call's; a rate falls as its latency grows).
    assert report["images_per_second_p10"] <= report["images_per_second"] <= report["images_per_second_p90"]
    assert report["repetitions"] == report["min_repetitions"] == 3  # --min-seconds 0: exactly what was asked
    assert report["images_per_second"] == pytest.approx(2000 / report["latency_ms"], rel=1e-9)


def test_bench_with_weights_reports_the_file(weights):
    result = invoke("bench", "--weights", str(weights), "--batch-size", "1", "--format", "json", *QUICK)
    report = json.loads(result.stdout)
    assert report["weights"] == str(weights) and report["variant"] == "xxs"


def test_bench_table_says_when_weights_are_random():
    result = invoke("bench", "--variant", "xxs", "-b", "1", *QUICK)
    assert "random" in result.stdout and "images/s" in result.stdout


def test_bench_onnxruntime_backend(weights):
    pytest.importorskip("onnxruntime")
    result = invoke("bench", "--weights", str(weights), "-b", "2", "--backend", "onnxruntime", "-f", "json", *QUICK)
    report = json.loads(result.stdout)
    # What ran, not an echo of the option: onnxruntime's own version, in the runner and the versions.
    import onnxruntime

    assert report["runner"].startswith(f"onnxruntime {onnxruntime.__version__}, ") and "torch" not in report["runner"]
    assert report["versions"]["onnxruntime"] == onnxruntime.__version__


def test_bench_describes_how_batch_one_really_runs(weights):
    one = json.loads(invoke("bench", "--weights", str(weights), "-b", "1", "-f", "json", *QUICK).stdout)
    many = json.loads(invoke("bench", "--weights", str(weights), "-b", "8", "-f", "json", *QUICK).stdout)
    assert "per core at a time" not in one["runner"] and "one call on all" in one["runner"]
    assert "per core at a time" in many["runner"]


def test_random_bench_weights_give_image_dependent_finite_logits():
    # Default initialisation would give (near) constant logits and denormal activations; bench's must not.
    m = benchmark.random_model("xxs", seed=1)
    with torch.no_grad():
        logits = m(structured_images(2, 64, seed=3))
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.05 and (logits[0] - logits[1]).abs().max() > 1e-3


def test_export_onnx_round_trip(model, weights, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    result = invoke("export", "--weights", str(weights), "--format", "onnx", "--output", str(out), "--input-size", "96")
    assert out.is_file() and "max |logit difference|" in result.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = structured_images(3, 96, seed=4)  # batch 3: the batch axis is dynamic
    logits = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        assert (logits - model(x)).abs().max() <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_torchscript_round_trip_at_a_size_that_resizes_inside(model, weights, tmp_path):
    out = tmp_path / "m.pt"
    invoke("export", "--weights", str(weights), "--format", "torchscript", "--output", str(out), "--input-size", "97")
    loaded = torch.jit.load(str(out))
    x = structured_images(3, 97, seed=5)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() <= 1e-4


def test_export_default_name_is_in_the_working_directory(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    invoke("export", "--weights", str(weights), "--format", "torchscript", "--input-size", "64", "--no-check")
    assert (tmp_path / "mobilevit_xxs.pt").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_into_a_missing_folder_is_refused_and_creates_nothing(weights, tmp_path, fmt):
    # Like classify's --output: a typo in a folder name must not scatter new folders (issue 18, finding 1).
    target = tmp_path / "new" / "folder" / f"m.{fmt}"
    result = cli_helpers.invoke("export", "--weights", str(weights), "-f", fmt, "-o", str(target),
                                "--input-size", "64")
    assert result.exit_code == 1
    assert "does not exist" in result.output and "internal error" not in result.output
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_to_an_unwritable_place_is_one_clear_line(weights, fmt):
    target = "/proc/mvit-cannot-write-here/m.out"  # /proc refuses new files and folders, even to root
    result = cli_helpers.invoke("export", "--weights", str(weights), "-f", fmt, "-o", target,
                                "--input-size", "64")
    assert result.exit_code == 1
    assert f"--output {target}: the folder" in result.output and "internal error" not in result.output


class _DriftsWhenTraced(MobileViT):
    """A model whose traced (exported) graph computes something else than its eager forward: what a broken
    exporter or an unsupported op would produce."""

    drift = 0.0

    def forward(self, x):
        logits = super().forward(x)
        return logits + self.drift if torch.jit.is_tracing() else logits


def _drifting_model(model, drift):
    drifting = _DriftsWhenTraced(model.cfg).eval()
    drifting.load_state_dict(model.state_dict())
    drifting.drift = drift
    return drifting


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("drift", [1e-3, float("nan")], ids=["off-by-1e-3", "nan"])
def test_an_export_that_disagrees_with_the_model_is_an_error_and_removed(model, tmp_path, fmt, drift):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    target = tmp_path / f"m.{fmt}"
    with pytest.raises(ExportParityError, match=r"disagrees.*was removed") as caught:
        export_module.export(_drifting_model(model, drift), fmt, target, 64, 64)
    assert caught.value.exit_code == 1 and caught.value.path == target
    assert not target.exists()
    # The CLI's words add the flag that writes it anyway (the library names no flags).
    from mvit_cli.cli._errors import describe

    assert describe(caught.value)[0].endswith("; --no-check writes it unchecked")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_difference_within_tolerance_passes_and_unchecked_exports_are_kept(model, tmp_path):
    small = export_module.export(_drifting_model(model, 1e-6), "torchscript", tmp_path / "a.pt", 64, 64)
    assert 0 < small.max_abs_diff <= export_module.PARITY_TOLERANCE and small.path.is_file()
    unchecked = export_module.export(_drifting_model(model, 1.0), "torchscript", tmp_path / "b.pt", 64, 64,
                                     verify=False)
    assert unchecked.max_abs_diff is None and unchecked.path.is_file()
