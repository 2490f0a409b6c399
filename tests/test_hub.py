"""The weight manifest and the download / verify / cache logic (mvit_cli/manifest.py, mvit_cli/store/).

Downloads go to the loopback hub of hub_server.py, never to the internet: HF_ENDPOINT points at it, and the
huggingface_hub constants read at import time (endpoint, offline flag, telemetry) are pointed at it too, in
case another test imported huggingface_hub first. The served files are random bytes here: the hub layer
never parses them (loading real checkpoints end to end is in test_weights_cli.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from hub_server import FakeHub, closed_endpoint
from mvit_cli import manifest, store
from mvit_cli.errors import IntegrityError, UsageError, WeightsUnavailableError

REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_has_every_variant_and_source_with_verifiable_pins():
    for source in manifest.SOURCES:
        for variant in manifest.VARIANTS:
            e = manifest.entry(variant, source)
            assert re.fullmatch(r"[0-9a-f]{40}", e.revision), f"{source} {variant}: revision must be a commit"
            assert e.pinned
            if e.sha256_origin == "manifest":
                assert re.fullmatch(r"[0-9a-f]{64}", e.sha256)
            else:
                assert e.sha256_origin == "hub-etag" and e.sha256 is None
            assert e.license_url.startswith("https://")
    assert manifest.SOURCES[0] == "timm"  # the default source


def test_manifest_facts_from_the_issue():
    # The sha256s the hub's file pages show (issue 4); a typo here would refuse every real download.
    assert manifest.entry("s", "timm").sha256 == "87f5585cb61814a5e18920d556772ed9c3af6c9ad72b6cf798c654021c306f81"
    assert manifest.entry("xxs", "apple").sha256 == "9d11a44822385937be46ecfa81757e306e47143323cba5cdc09a3b48966fe22a"
    assert manifest.entry("xs", "apple").sha256 == "09b264fe681cb67144c41fe10b923c8d59ad4273f9d4cc3053080e6e986e63e8"
    assert manifest.entry("s", "apple").sha256 == "e82f00eb463387332cfc6204f1590225bd2c16cab4e45f113438f04378b84763"
    assert manifest.entry("xxs", "timm").repo_id == "timm/mobilevit_xxs.cvnets_in1k"
    assert manifest.entry("s", "apple").repo_id == "apple/mobilevit-small"
    assert manifest.entry("xs", "timm").format == "timm" and manifest.entry("xs", "apple").format == "transformers"
    assert manifest.entry("xs", "apple").channel_order == "BGR"
    pub = {v: manifest.published(v) for v in manifest.VARIANTS}
    assert [pub[v]["timm"]["top1"] for v in manifest.VARIANTS] == [68.936, 74.618, 78.298]
    assert [pub[v]["timm"]["top5"] for v in manifest.VARIANTS] == [88.942, 92.350, 94.168]
    assert [pub[v]["paper"]["top1"] for v in manifest.VARIANTS] == [69.0, 74.8, 78.4]
    assert [(pub[v]["mmpretrain"]["top1"], pub[v]["mmpretrain"]["top5"]) for v in manifest.VARIANTS] == [
        (69.02, 88.91), (74.75, 92.32), (78.25, 94.09)]
    assert all("reference" in r for p in pub.values() for r in p.values())


def test_preprocessing_per_source():
    timm, apple = manifest.preprocessing("timm"), manifest.preprocessing("apple")
    assert (timm.resize_shorter, timm.interpolation, timm.crop_size) == (284, "bicubic", 256)
    assert (apple.resize_shorter, apple.interpolation, apple.crop_size) == (288, "bilinear", 256)
    assert timm.mean == apple.mean == (0.0, 0.0, 0.0) and timm.std == apple.std == (1.0, 1.0, 1.0)


def test_unknown_names_are_usage_errors():
    with pytest.raises(UsageError, match="variant"):
        manifest.entry("m", "timm")
    with pytest.raises(UsageError, match="source"):
        manifest.preprocessing("torchvision")


def test_manifest_is_found_in_the_checkout_and_shipped_in_the_wheel():
    # Editable / source checkout: weights/manifest.toml at the repository root.
    assert manifest.manifest_path() == REPO_ROOT / "weights" / "manifest.toml"
    # The wheel: pyproject force-includes that file at the path manifest.py looks at first.
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    force = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    packaged = REPO_ROOT / force["weights/manifest.toml"]
    assert packaged == manifest._PACKAGED


def test_manifest_prefers_the_packaged_copy(tmp_path, monkeypatch):
    packaged = tmp_path / "manifest.toml"
    text = (REPO_ROOT / "weights" / "manifest.toml").read_text()
    packaged.write_text(text.replace('size_approx = "5.14 MB"', 'size_approx = "packaged"'))
    monkeypatch.setattr(manifest, "_PACKAGED", packaged)
    manifest.reload()
    try:
        assert manifest.manifest_path() == packaged
        assert manifest.entry("xxs", "timm").size_approx == "packaged"
    finally:
        manifest.reload()


# ------------------------------------------------------------------------------------------ cache root


def test_cache_root_precedence(tmp_path, monkeypatch):
    for name in ("MVIT_CACHE", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.cache_root() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert store.cache_root() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert store.cache_root() == tmp_path / "hubcache"
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "mvit"))
    assert store.cache_root() == tmp_path / "mvit"
    assert store.cache_root(tmp_path / "explicit") == tmp_path / "explicit"


# ------------------------------------------------------------------------------------------ downloads

ENTRY = manifest.entry("xxs", "timm")  # sha256 not in the manifest: verified against the hub's LFS sha256
PINNED = manifest.entry("s", "timm")  # sha256 in the manifest


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running loopback hub serving the XXS timm file (random bytes), with mvit and huggingface_hub on it."""
    import huggingface_hub.constants as hf_constants

    served = FakeHub().start()
    served.add_file(ENTRY.repo_id, ENTRY.revision, ENTRY.filename, os.urandom(200_000))
    monkeypatch.setenv("HF_ENDPOINT", served.endpoint)
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    # Read by huggingface_hub at import time, possibly before this test ran. mvit passes the endpoint of
    # HF_ENDPOINT explicitly; telemetry (which would call the import-time endpoint) is switched off.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    yield served
    served.stop()


def cache_files(root: Path) -> list[str]:
    """Every file (and link) under the cache root except lock files and the CACHEDIR tag."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts and p.name != "CACHEDIR.TAG")


def weight_files(root: Path) -> list[str]:
    """Blobs, snapshot links and partial downloads: what could ever reach the model."""
    return [f for f in cache_files(root) if "/blobs/" in f or "/snapshots/" in f or f.endswith(".incomplete")]


def test_download_lands_in_the_standard_hf_cache_verified(fake_hub, tmp_path):
    root = tmp_path / "cache"
    data = fake_hub.repos[(ENTRY.repo_id, ENTRY.revision)][ENTRY.filename].data
    sha = hashlib.sha256(data).hexdigest()

    path = store.resolve_weights("xxs", "timm", progress=False)

    assert path == root / "models--timm--mobilevit_xxs.cvnets_in1k" / "snapshots" / ENTRY.revision / ENTRY.filename
    assert path.read_bytes() == data
    assert Path(os.path.realpath(path)) == root / "models--timm--mobilevit_xxs.cvnets_in1k" / "blobs" / sha
    # The pinned commit is what was asked for: no branch name anywhere in the request.
    assert all(f"/resolve/{ENTRY.revision}/" in p for _, p, _ in fake_hub.requests("HEAD"))
    assert [r.state for r in store.list_cache()] == ["verified"]
    assert store.cached_file("xxs", "timm") == path


def test_second_run_uses_the_cache_without_network(fake_hub, tmp_path, monkeypatch):
    first = store.resolve_weights("xxs", "timm", progress=False)
    fake_hub.stop()
    store.forget()  # a new process
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert store.resolve_weights("xxs", "timm", progress=False) == first
    monkeypatch.delenv("HF_HUB_OFFLINE")
    store.forget()
    assert store.resolve_weights("xxs", "timm", offline=False, progress=False) == first  # cached: no HEAD needed


def test_bit_rot_under_the_same_size_and_mtime_is_caught_at_the_next_load(fake_hub, tmp_path):
    path = store.resolve_weights("xxs", "timm", progress=False)
    blob = Path(os.path.realpath(path))
    # Flip a byte but keep size and mtime, as bit rot or a careless edit would: a size-and-mtime check misses it.
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    # `cache list` hashes every file and tells the truth ...
    assert [r.state for r in store.list_cache()] == ["corrupt"]
    # ... and the next run (a new process) hashes before loading: the damaged file is deleted, never loaded.
    store.forget()
    with pytest.raises(WeightsUnavailableError, match="offline"):
        store.resolve_weights("xxs", "timm", offline=True, progress=False)
    assert weight_files(tmp_path / "cache") == []


def test_damaged_cached_file_is_replaced_when_online(fake_hub, tmp_path):
    path = store.resolve_weights("xxs", "timm", progress=False)
    blob = Path(os.path.realpath(path))
    blob.write_bytes(b"garbage" + blob.read_bytes()[7:])  # new mtime: the marker no longer vouches for it
    store.forget()
    again = store.resolve_weights("xxs", "timm", progress=False)
    assert again.read_bytes() == fake_hub.repos[(ENTRY.repo_id, ENTRY.revision)][ENTRY.filename].data


def test_tampered_bytes_are_refused_and_nothing_is_cached(fake_hub, tmp_path):
    fake_hub.tamper = True
    with pytest.raises(IntegrityError, match="sha256"):
        store.resolve_weights("xxs", "timm", progress=False)
    assert weight_files(tmp_path / "cache") == []
    assert store.cached_file("xxs", "timm") is None
    fake_hub.reset_faults()
    assert store.resolve_weights("xxs", "timm", progress=False).is_file()


def test_a_file_other_than_the_pinned_sha256_is_refused_before_download(fake_hub, tmp_path):
    # The hub (or a mirror) holds a self-consistent file at the pinned path, but not the one the manifest pins.
    fake_hub.add_file(PINNED.repo_id, PINNED.revision, PINNED.filename, os.urandom(50_000))
    with pytest.raises(IntegrityError, match="manifest pins"):
        store.resolve_weights("s", "timm", progress=False)
    assert fake_hub.requests("GET", "/cdn/") == []  # not a byte was fetched
    assert weight_files(tmp_path / "cache") == []


def test_connection_closed_midfile_is_retried_and_ends_verified(fake_hub, tmp_path):
    fake_hub.drop = "once"
    path = store.resolve_weights("xxs", "timm", progress=False)
    assert path.read_bytes() == fake_hub.repos[(ENTRY.repo_id, ENTRY.revision)][ENTRY.filename].data
    assert len(fake_hub.requests("GET", "/cdn/")) == 2  # the cut one, then the retry
    assert [f for f in cache_files(tmp_path / "cache") if f.endswith(".incomplete")] == []


def test_failed_download_leaves_nothing_and_a_later_run_succeeds(fake_hub, tmp_path):
    fake_hub.drop, fake_hub.after_drop_status = "once", 503  # cut mid-file, then the CDN is down
    with pytest.raises(WeightsUnavailableError, match="run the command again to retry"):
        store.resolve_weights("xxs", "timm", progress=False)
    assert weight_files(tmp_path / "cache") == []
    fake_hub.reset_faults()
    path = store.resolve_weights("xxs", "timm", progress=False)
    assert [r.state for r in store.list_cache()] == ["verified"] and path.is_file()


def test_offline_with_nothing_cached_explains_and_never_touches_the_network(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        store.resolve_weights("xs", "apple", progress=False)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "offline" in message
    assert "mvit download --variant xs --source apple" in message
    assert "mvit import FILE --variant xs --source apple" in message
    assert str(tmp_path / "cache") in message
    assert fake_hub.log == []
    with pytest.raises(WeightsUnavailableError):  # `mvit download` obeys HF_HUB_OFFLINE as well
        store.download("xxs", "timm", progress=False)
    assert fake_hub.log == []


def test_unreachable_hub_with_nothing_cached(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint())
    with pytest.raises(WeightsUnavailableError, match="cannot be reached.*mvit download --variant xxs"):
        store.resolve_weights("xxs", "timm", progress=False)


def test_mirror_without_the_file(fake_hub, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="has no pytorch_model.bin in apple/mobilevit-x-small"):
        store.resolve_weights("xs", "apple", progress=False)


def test_clear_removes_only_mvit_files(fake_hub, tmp_path):
    root = tmp_path / "cache"
    store.resolve_weights("xxs", "timm", progress=False)
    repo = root / "models--timm--mobilevit_xxs.cvnets_in1k"
    removed = store.clear_cache(variant="s")  # another variant: nothing
    assert removed == [] and weight_files(root)
    # Another file of the same repo, cached by someone else (e.g. timm itself), survives a clear.
    (repo / "blobs" / "otherblob").write_bytes(b"{}")
    removed = store.clear_cache(variant="xxs", source="timm")
    assert [(r.variant, r.source, r.kind) for r in removed] == [("xxs", "timm", "download")]
    assert weight_files(root) == [f"{repo.name}/blobs/otherblob"]
    (repo / "blobs" / "otherblob").unlink()
    store.resolve_weights("xxs", "timm", progress=False)
    store.clear_cache()
    assert not repo.exists()  # a repo folder left empty goes entirely
    assert store.list_cache() == []


def test_exports_folder_of_a_cached_file_is_mvits_own(tmp_path, monkeypatch):
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "env-cache"))
    root = tmp_path / "given"  # a --cache-dir: recognised from the path, whatever the environment says
    repo = "models--timm--mobilevit_xxs.cvnets_in1k"
    exports = root / "mvit" / "exports"
    snapshot = root / repo / "snapshots" / ENTRY.revision
    assert store.cache_exports_folder(snapshot / "model.safetensors") == exports / repo
    assert store.cache_exports_folder(snapshot / "sub" / "w.bin") == exports / repo
    assert store.cache_exports_folder(root / repo / "blobs" / ("0" * 64)) == exports / repo
    imported = root / "mvit" / "imports" / "mobilevit_s-apple.safetensors"
    assert store.cache_exports_folder(imported) == exports / "imports--mobilevit_s-apple"
    env_root = tmp_path / "env-cache"
    assert store.cache_exports_folder(env_root / "x" / "w.pt") == env_root / "mvit" / "exports" / "other"
    assert store.cache_exports_folder(tmp_path / "elsewhere" / "w.safetensors") is None
    assert store.cache_exports_folder(tmp_path / repo / "w.safetensors") is None  # not inside snapshots/


def test_clear_removes_the_exports_of_what_it_clears(fake_hub, tmp_path):
    root = tmp_path / "cache"
    path = store.resolve_weights("xxs", "timm", progress=False)
    folder = store.cache_exports_folder(path)
    folder.mkdir(parents=True)
    (folder / "model-xxs-64x64-0123456789abcdef.onnx").write_bytes(b"x" * 1000)
    other = store.exports_root() / "imports--mobilevit_s-timm"  # another variant's, its weights already gone
    other.mkdir()
    (other / "mobilevit_s-timm-s-64x64-0123456789abcdef.onnx").write_bytes(b"x" * 500)
    assert store.exports_size() == (root / "mvit" / "exports", 1500)

    assert store.clear_cache(variant="xxs", source="apple") == []
    removed = store.clear_cache(variant="xxs", source="timm")
    assert [(r.variant, r.source, r.kind) for r in removed] == [("xxs", "timm", "download"), ("xxs", "timm", "exports")]
    assert removed[1].path == folder and removed[1].size == 1000
    assert not folder.exists() and other.is_dir()
    removed = store.clear_cache(variant="s")  # exports go even where their weights are gone already
    assert [(r.variant, r.source, r.kind) for r in removed] == [("s", "timm", "exports")]
    assert store.exports_size()[1] == 0


# ------------------------------------------------------------------------------------------ copied caches


def copy_without_symlinks(source: Path, target: Path) -> None:
    """What `cp -rL`, a zip, Windows or `rsync -r` make of a cache: every link replaced by a plain copy of its
    target, and new mtimes (no -p), so no verification marker vouches for the copies."""
    shutil.copytree(source, target, symlinks=False, copy_function=shutil.copyfile)
    assert not any(p.is_symlink() for p in target.rglob("*"))


@pytest.fixture
def copied_cache(fake_hub, tmp_path, monkeypatch):
    """The XXS timm download (sha256 known only from the hub), in a cache copied without symlinks; offline."""
    store.resolve_weights("xxs", "timm", progress=False)
    copy_without_symlinks(tmp_path / "cache", tmp_path / "copy")
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "copy"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store.forget()  # a new process, on the other machine
    snapshot = tmp_path / "copy" / "models--timm--mobilevit_xxs.cvnets_in1k" / "snapshots" / ENTRY.revision
    return snapshot / ENTRY.filename


def served(fake_hub) -> bytes:
    return fake_hub.repos[(ENTRY.repo_id, ENTRY.revision)][ENTRY.filename].data


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_intact_copied_cache_is_verified_offline_and_never_deleted(copied_cache, fake_hub):
    # `mvit download` offline: already there, intact, kept (it used to be called damaged and deleted).
    log_before = len(fake_hub.log)
    result = store.download("xxs", "timm", progress=False)
    assert result.downloaded is False and result.path == copied_cache
    assert copied_cache.read_bytes() == served(fake_hub)
    assert [r.state for r in store.list_cache()] == ["verified"]
    assert store.resolve_weights("xxs", "timm", offline=True, progress=False) == copied_cache
    # Its sha256, established once (against the blob huggingface_hub named by the hub's sha256), is remembered:
    # a byte changed later under the same size and mtime is caught by the next listing and the next load.
    flip_byte(copied_cache, keep_mtime=True)
    assert [r.state for r in store.list_cache()] == ["corrupt"]
    store.forget()
    with pytest.raises(WeightsUnavailableError):
        store.resolve_weights("xxs", "timm", offline=True, progress=False)
    assert len(fake_hub.log) == log_before  # offline throughout


def test_tampered_file_in_copied_cache_never_reaches_the_model(copied_cache, fake_hub, monkeypatch):
    flip_byte(copied_cache)
    log_before = len(fake_hub.log)
    for attempt in (lambda: store.resolve_weights("xxs", "timm", offline=True, progress=False),
                    lambda: store.download("xxs", "timm", progress=False)):
        with pytest.raises(IntegrityError) as info:
            attempt()
        message = str(info.value)
        assert "cannot verify" in message and "cp -a" in message
        assert "mvit download --variant xxs --source timm" in message and "mvit import" in message
        assert "\n" not in message
    assert store.cached_file("xxs", "timm") is None
    assert [r.state for r in store.list_cache()] == ["unverified"]
    assert copied_cache.exists()  # not known to be corrupt offline: refused, not deleted
    assert len(fake_hub.log) == log_before  # offline: the hub was not asked
    # With network, the hub's sha256 settles it: the bad copy is replaced by the intact blob beside it.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = store.resolve_weights("xxs", "timm", progress=False)
    assert path.read_bytes() == served(fake_hub)
    assert fake_hub.requests("GET", "/cdn/")[1:] == []  # the one GET is the original download: no new transfer


def test_intact_copied_cache_is_confirmed_by_the_hub_without_a_download(fake_hub, tmp_path, monkeypatch):
    # No blob of that name beside it (only the snapshots were copied): offline it cannot be verified, online
    # the hub's sha256 confirms it and nothing is downloaded again.
    store.resolve_weights("xxs", "timm", progress=False)
    copy_without_symlinks(tmp_path / "cache", tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "models--timm--mobilevit_xxs.cvnets_in1k" / "blobs")
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "copy"))
    store.forget()
    with pytest.raises(IntegrityError, match="cannot verify"):
        store.resolve_weights("xxs", "timm", offline=True, progress=False)
    gets = len(fake_hub.requests("GET", "/cdn/"))
    result = store.download("xxs", "timm", progress=False)
    assert result.downloaded is False and result.path.read_bytes() == served(fake_hub)
    assert len(fake_hub.requests("GET", "/cdn/")) == gets
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store.forget()
    assert store.resolve_weights("xxs", "timm", offline=True, progress=False) == result.path


def test_hf_tree_listing_of_the_pinned_commit_gives_the_expected_sha256(fake_hub, tmp_path, monkeypatch):
    # huggingface_hub's snapshot_download records each file's LFS sha256 per commit (trees/<commit>.json).
    # In a copied cache holding that listing, an intact file is verified offline even with no blobs/ beside
    # it, and a damaged one is known corrupt: deleted, never loaded.
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    store.resolve_weights("xxs", "timm", progress=False)
    repo = tmp_path / "cache" / "models--timm--mobilevit_xxs.cvnets_in1k"
    data = served(fake_hub)
    sha = hashlib.sha256(data).hexdigest()
    write_tree_cache(str(repo), ENTRY.revision, {ENTRY.filename: TreeCacheEntry(
        size=len(data), blob_id="0" * 40, lfs_sha256=sha, lfs_size=len(data))})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("intact", "damaged"):
        copy_without_symlinks(tmp_path / "cache", tmp_path / name)
        shutil.rmtree(tmp_path / name / repo.name / "blobs")
    intact, damaged = (tmp_path / name / repo.name / "snapshots" / ENTRY.revision / ENTRY.filename
                       for name in ("intact", "damaged"))
    store.forget()
    assert store.resolve_weights("xxs", "timm", cache_dir=tmp_path / "intact", progress=False) == intact
    flip_byte(damaged)
    with pytest.raises(WeightsUnavailableError, match="offline"):
        store.resolve_weights("xxs", "timm", cache_dir=tmp_path / "damaged", progress=False)
    assert not damaged.exists()


# ------------------------------------------------------------------------------------------ imports vs downloads


@pytest.fixture
def imported_xxs(tmp_path):
    """A random-weight XXS checkpoint imported into the cache (MVIT_CACHE) as timm weights."""
    import safetensors.torch

    from mvit_cli.model import build_model
    from mvit_cli.random_weights import randomize_

    original = tmp_path / "xxs.safetensors"
    safetensors.torch.save_file(randomize_(build_model("xxs"), seed=0).state_dict(), original,
                                metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    weights, _ = store.import_checkpoint(original, variant="xxs", source="timm")
    return weights


def test_a_verified_download_wins_over_a_corrupt_import(fake_hub, imported_xxs, tmp_path):
    downloaded = store.download("xxs", "timm", progress=False).path
    with open(imported_xxs, "ab") as f:
        f.write(b"damage")  # size changed: the import's marker no longer vouches for it
    store.forget()
    assert store.resolve_weights("xxs", "timm", offline=True, progress=False) == downloaded
    # Without the download, the damaged import is refused, never loaded.
    store.clear_cache(variant="xxs", source="timm")
    store.import_checkpoint(tmp_path / "xxs.safetensors", variant="xxs", source="timm")
    with open(imported_xxs, "ab") as f:
        f.write(b"damage")
    store.forget()
    with pytest.raises(IntegrityError, match="import them again"):
        store.resolve_weights("xxs", "timm", offline=True, progress=False)


def test_offline_miss_of_the_default_source_points_to_the_source_that_is_cached(fake_hub, tmp_path, monkeypatch):
    # Apple weights imported, then a run with the default source (timm) offline: the fix is `--source apple`,
    # not instructions to fetch timm weights the user may not want.
    import safetensors.torch

    from mvit_cli.model import build_model
    from mvit_cli.random_weights import randomize_

    original = tmp_path / "apple-xs.safetensors"
    safetensors.torch.save_file(randomize_(build_model("xs"), seed=0).state_dict(), original,
                                metadata={"format": "mvit", "variant": "xs", "source": "apple"})
    store.import_checkpoint(original, variant="xs", source="apple")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        store.resolve_weights("xs", "timm", progress=False)
    message = str(info.value)
    assert "The cache has apple weights for MobileViT-XS: add `--source apple`" in message
    assert "mvit download --variant xs --source timm" in message  # the other way out stays in the message
    # Another variant's miss says nothing of the apple XS weights.
    with pytest.raises(WeightsUnavailableError) as info:
        store.resolve_weights("s", "timm", progress=False)
    assert "--source apple" not in str(info.value) and "To get them: run `mvit download" in str(info.value)
    assert fake_hub.log == []
