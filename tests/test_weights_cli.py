"""`mvit download`, `mvit import`, `mvit cache` and the weight cache as the model-running commands see it, end
to end: the installed `mvit` in subprocesses, whose environment is set before huggingface_hub starts (HF_HOME
in tmp, HF_ENDPOINT on the loopback hub of hub_server.py; never the internet).

The loopback hub serves random-weight checkpoints in the real hub layout: timm's `model.safetensors` (built
with timm itself) at timm/mobilevit_xxs.cvnets_in1k's pinned commit. Imports use a timm-format and a
transformers-format (apple) `pytorch_model.bin`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from hub_server import (FakeHub, closed_endpoint, safetensors_bytes, timm_checkpoint, torch_bytes,
                        transformers_checkpoint)
from mvit_cli.random_weights import structured_images
from mvit_cli import manifest

TIMM_XXS = manifest.entry("xxs", "timm")
APPLE_XXS = manifest.entry("xxs", "apple")


@lru_cache(maxsize=None)
def timm_files():
    model, state = timm_checkpoint("xxs", seed=1)
    return model, safetensors_bytes(state), torch_bytes(state)


@lru_cache(maxsize=None)
def apple_files():
    model, state = transformers_checkpoint("xxs", seed=2)
    return model, torch_bytes(state)


@pytest.fixture
def fake_hub():
    served = FakeHub().start()
    served.add_file(TIMM_XXS.repo_id, TIMM_XXS.revision, TIMM_XXS.filename, timm_files()[1])
    yield served
    served.stop()


def mvit(*args: str, home: Path, endpoint: str, offline: bool = False, **env_vars: str) -> subprocess.CompletedProcess:
    """Run the `mvit` command in a fresh process with only loopback hubs and a cache under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MVIT_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", COLUMNS="200",
               PYTHONWARNINGS="ignore", **env_vars)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "mvit_cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 1, one error line on stderr naming what to do, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mvit: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


def weight_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ("blobs" in p.parts or "snapshots" in p.parts or p.suffix == ".incomplete")
            and (p.is_file() or p.is_symlink())]


def image_file(path: Path) -> torch.Tensor:
    """A 256x256 PNG; returns the [1, 3, 256, 256] tensor mvit's timm protocol makes of it."""
    from PIL import Image

    from mvit_cli.preprocess import preprocess

    pixels = (structured_images(1, 256, seed=3)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    with Image.open(path) as image:
        return preprocess(image.convert("RGB"), manifest.preprocessing("timm")).unsqueeze(0)


def classify_json(image: Path, home: Path, endpoint: str, *extra: str) -> subprocess.CompletedProcess:
    return mvit("classify", str(image), "--variant", "xxs", "--format", "json", "--top-k", "5", "--workers", "0",
                "--device", "cpu", *extra, home=home, endpoint=endpoint, offline=True)


@pytest.mark.slow
def test_download_then_classify_then_offline_with_the_hub_gone(fake_hub, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    result = mvit("download", "--variant", "xxs", home=home, endpoint=fake_hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert "timm xxs: downloaded, verified" in result.stdout
    blobs = list((home / "hub" / "models--timm--mobilevit_xxs.cvnets_in1k" / "blobs").iterdir())
    assert len(blobs) == 1 and blobs[0].read_bytes() == timm_files()[1]

    fake_hub.stop()  # from now on the hub is gone; offline mode on as well

    again = mvit("download", "--variant", "xxs", home=home, endpoint=fake_hub.endpoint, offline=True)
    assert again.returncode == 0 and "already cached" in again.stdout, again.stderr
    listing = json.loads(mvit("cache", "list", "--format", "json", "--verify", home=home,
                              endpoint=fake_hub.endpoint, offline=True).stdout)
    assert listing["cache_dir"] == str(home / "hub")
    assert [(f["variant"], f["source"], f["kind"], f["state"]) for f in listing["files"]] == [
        ("xxs", "timm", "download", "verified")]

    # The cached file loads into mvit's model and computes what timm computes with the served weights.
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("MVIT_CACHE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    from mvit_cli import loading, store

    # (cache_dir given: load_model memoises per cache_dir, and other tests of this process use other caches)
    loaded = loading.load_model("xxs", "timm", device="cpu", cache_dir=home / "hub", offline=True, progress=False)
    assert loaded.weights_path == store.cached_file("xxs", "timm")
    reference = timm_files()[0]
    batch = structured_images(2, 256, seed=5)
    with torch.no_grad():
        ours, theirs = loaded.run(batch), reference(batch)
    assert (ours - theirs).abs().max() <= 1e-3 * theirs.abs().max()

    # And `mvit classify` runs offline on it, ranking classes as timm does.
    image = tmp_path / "photo.png"
    pixels = image_file(image)
    result = classify_json(image, home, fake_hub.endpoint)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)[0]["predictions"]
    with torch.no_grad():
        expected = reference(pixels)[0].topk(5).indices.tolist()
    assert [p["index"] for p in predictions] == expected


@pytest.mark.slow
def test_cache_copied_without_symlinks_is_kept_and_a_tampered_copy_refused(fake_hub, tmp_path):
    # The route the "no weights" error recommends: download on one machine, copy the cache. Copied with
    # `cp -rL` (or a zip, Windows, rsync without -l) the snapshot is a plain file; XXS timm has no sha256 in
    # the manifest, so only the cache itself can vouch for it.
    import shutil

    home = tmp_path / "hf"
    assert mvit("download", "--variant", "xxs", home=home, endpoint=fake_hub.endpoint).returncode == 0
    fake_hub.stop()
    for name in ("intact", "tampered"):
        shutil.copytree(home, tmp_path / name, symlinks=False, copy_function=shutil.copyfile)
    snapshot = (Path("hub") / "models--timm--mobilevit_xxs.cvnets_in1k" / "snapshots" / TIMM_XXS.revision
                / TIMM_XXS.filename)

    result = mvit("download", "-m", "xxs", home=tmp_path / "intact", endpoint=fake_hub.endpoint, offline=True)
    assert result.returncode == 0 and "already cached" in result.stdout, result.stderr
    assert "deleted" not in result.stderr
    assert (tmp_path / "intact" / snapshot).read_bytes() == timm_files()[1]

    tampered = tmp_path / "tampered" / snapshot
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    image = tmp_path / "photo.png"
    image_file(image)
    result = classify_json(image, tmp_path / "tampered", fake_hub.endpoint)
    assert_clean_failure(result, "cannot verify", "cp -a", "mvit download --variant xxs --source timm")
    assert result.stdout == ""


def test_no_network_and_no_cache_says_how_to_get_weights(tmp_path):
    home = tmp_path / "hf"
    image = tmp_path / "photo.png"
    image_file(image)
    result = mvit("classify", str(image), "--variant", "xxs", "--workers", "0", home=home, endpoint=closed_endpoint())
    assert_clean_failure(result, "mvit download --variant xxs --source timm", "mvit import FILE --variant xxs",
                         str(home / "hub"))
    result = mvit("download", "--variant", "s", "--source", "apple", home=home, endpoint=closed_endpoint())
    assert_clean_failure(result, "mvit download --variant s --source apple", "cannot be reached")
    assert weight_files(home) == []


def test_offline_never_asks_the_hub(fake_hub, tmp_path):
    home = tmp_path / "hf"
    image = tmp_path / "photo.png"
    image_file(image)
    result = classify_json(image, home, fake_hub.endpoint)
    assert_clean_failure(result, "offline mode is on", "mvit download --variant xxs --source timm")
    assert fake_hub.log == []


def test_tampered_download_is_refused_and_not_kept(fake_hub, tmp_path):
    home = tmp_path / "hf"
    fake_hub.tamper = True
    result = mvit("download", "--variant", "xxs", home=home, endpoint=fake_hub.endpoint)
    assert_clean_failure(result, "sha256", "deleted")
    assert weight_files(home) == []
    fake_hub.reset_faults()
    assert mvit("download", "--variant", "xxs", home=home, endpoint=fake_hub.endpoint).returncode == 0


@pytest.mark.slow
def test_download_cut_midway_keeps_nothing_and_a_retry_succeeds(fake_hub, tmp_path):
    home = tmp_path / "hf"
    fake_hub.drop, fake_hub.after_drop_status = "once", 503
    result = mvit("download", "--variant", "xxs", home=home, endpoint=fake_hub.endpoint)
    assert_clean_failure(result, "run the command again to retry")
    assert weight_files(home) == []
    fake_hub.reset_faults()
    result = mvit("download", "--variant", "xxs", home=home, endpoint=fake_hub.endpoint)
    assert result.returncode == 0 and "downloaded, verified" in result.stdout, result.stderr


def test_download_all_reports_partial_failure(fake_hub, tmp_path):
    # The loopback hub holds only XXS: XS and S are missing there, XXS succeeds -> exit code 3.
    home = tmp_path / "hf"
    result = mvit("download", "--variant", "all", home=home, endpoint=fake_hub.endpoint)
    assert result.returncode == 3, result.stderr
    assert "timm xxs: downloaded, verified" in result.stdout
    assert "timm xs:" in result.stderr and "timm s:" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "apple"])
def test_import_bin_then_use_offline(kind, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    if kind == "timm":
        reference, _, data = timm_files()
    else:
        reference, data = apple_files()
    original = tmp_path / "pytorch_model.bin"
    original.write_bytes(data)

    variant = ["--variant", "xxs"] if kind == "timm" else []  # without: read from the file
    result = mvit("import", str(original), *variant, home=home, endpoint=closed_endpoint())
    assert result.returncode == 0, result.stderr
    assert "MobileViT-XXS" in result.stdout
    assert f"source {kind}" in result.stdout
    assert "published file: no" in result.stdout if kind == "apple" else "published file: unknown" in result.stdout

    listing = json.loads(mvit("cache", "list", "--format", "json", home=home, endpoint=closed_endpoint(),
                              offline=True).stdout)
    assert [(f["variant"], f["source"], f["kind"], f["state"]) for f in listing["files"]] == [
        ("xxs", kind, "import", "verified")]
    stored = Path(listing["files"][0]["path"])
    assert stored.suffix == ".safetensors" and stored.is_relative_to(home / "hub" / "mvit")

    # Offline, with no hub at all, the model-running commands find the import and compute what the original
    # file computes; the imported copy is safetensors (no pickle).
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint())
    for name in ("MVIT_CACHE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    from mvit_cli import checkpoints, loading

    loaded = loading.load_model("xxs", kind, device="cpu", cache_dir=home / "hub", offline=True, progress=False)
    assert loaded.weights_path == stored
    assert loaded.preprocessing == manifest.preprocessing(kind)
    assert stored.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    batch = structured_images(2, 256, seed=7)
    direct = checkpoints.load_checkpoint(original).model
    with torch.no_grad():
        assert torch.equal(loaded.module(batch), direct(batch))  # the plain model: bitwise; .run is exact to 1e-4

    if kind == "apple":  # `mvit classify` offline on an import (on a download: the first test)
        image = tmp_path / "photo.png"
        image_file(image)
        result = mvit("classify", str(image), "--variant", "xxs", "--source", kind, "--format", "json",
                      "--workers", "0", "--device", "cpu", home=home, endpoint=closed_endpoint(), offline=True)
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)[0]["predictions"]) == 5

    # The onnxruntime backend's export of the import goes to mvit's exports folder, which `cache list` sizes ...
    pytest.importorskip("onnxruntime")
    ort = loading.load_model("xxs", kind, device="cpu", backend="onnxruntime", cache_dir=home / "hub",
                               offline=True, progress=False)
    ort.run(structured_images(1, 64))
    export_file = ort.run.exports[(64, 64)][0]
    assert export_file.parent == home / "hub" / "mvit" / "exports" / f"imports--mobilevit_xxs-{kind}"
    listing = json.loads(mvit("cache", "list", "--format", "json", home=home, endpoint=closed_endpoint(),
                              offline=True).stdout)
    assert listing["exports"] == {"path": str(home / "hub" / "mvit" / "exports"),
                                  "size_bytes": export_file.stat().st_size}

    # ... and `cache clear` removes it with the weights it was made from.
    cleared = mvit("cache", "clear", "--variant", "xxs", home=home, endpoint=closed_endpoint())
    assert cleared.returncode == 0 and f"removed {kind} xxs (import" in cleared.stdout
    assert f"removed {kind} xxs (exports" in cleared.stdout
    assert not stored.exists() and not export_file.exists()


def test_import_refuses_a_checkpoint_of_another_variant(tmp_path):
    home = tmp_path / "hf"
    original = tmp_path / "pytorch_model.bin"
    original.write_bytes(timm_files()[2])
    result = mvit("import", str(original), "--variant", "s", home=home, endpoint=closed_endpoint())
    assert_clean_failure(result)
    assert "MobileViT-XXS" in result.stderr and "MobileViT-S" in result.stderr
    assert not (home / "hub" / "mvit" / "imports").exists() or not any((home / "hub" / "mvit" / "imports").iterdir())


def test_cache_list_and_clear_when_empty(tmp_path):
    home = tmp_path / "hf"
    listing = mvit("cache", "list", home=home, endpoint=closed_endpoint())
    assert listing.returncode == 0 and str(home / "hub") in listing.stdout and "no mvit weights" in listing.stdout
    cleared = mvit("cache", "clear", home=home, endpoint=closed_endpoint())
    assert cleared.returncode == 0 and "nothing to remove" in cleared.stdout


@pytest.mark.slow
def test_cache_dir_option_and_env_override_hf_home(fake_hub, tmp_path):
    home, custom = tmp_path / "hf", tmp_path / "custom"
    result = mvit("download", "--variant", "xxs", "--cache-dir", str(custom), home=home, endpoint=fake_hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert (custom / "models--timm--mobilevit_xxs.cvnets_in1k").is_dir() and not (home / "hub").exists()
    listing = json.loads(mvit("cache", "list", "--format", "json", "--cache-dir", str(custom), home=home,
                              endpoint=fake_hub.endpoint).stdout)
    assert listing["cache_dir"] == str(custom) and len(listing["files"]) == 1
    listing = json.loads(mvit("cache", "list", "--format", "json", home=home, endpoint=fake_hub.endpoint,
                              MVIT_CACHE=str(custom)).stdout)
    assert listing["cache_dir"] == str(custom) and len(listing["files"]) == 1
