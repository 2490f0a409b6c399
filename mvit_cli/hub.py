"""Weight files on disk: downloads into the Hugging Face cache, `mvit import`ed checkpoints, verification.

Cache layout. The root is, first found: `cache_dir` (`--cache-dir`, `MVIT_CACHE`), `HF_HUB_CACHE`,
`$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub` (huggingface_hub's own rule,
read when mvit runs, not when huggingface_hub was imported). Inside it:

    models--timm--mobilevit_s.cvnets_in1k/      huggingface_hub's standard layout, shared with timm and
        blobs/<sha256>                          transformers: a file downloaded by either is reused
        snapshots/<commit>/model.safetensors -> ../../blobs/<sha256>
        refs/
    mvit/imports/mobilevit_<variant>-<source>.safetensors   `mvit import`ed weights, canonical keys
    mvit/imports/mobilevit_<variant>-<source>.json          where they came from, and their sha256
    mvit/verified/<name>.json                               "this file, with this size and mtime, hashed OK"
    mvit/exports/<origin>/<name>-<variant>-<H>x<W>-<key>.onnx  onnxruntime exports of the cached weights
                                                            (export.py); <origin>: the repo folder's name
                                                            for a download, imports--<import's name>

Exports live in mvit's own folder, never inside huggingface_hub's repo folders (which timm and transformers
manage too), and `clear_cache` removes them with the weights they were made from.

Verification. A download is hashed once, when it arrives, against the manifest's sha256 (or, where that is
not established, the LFS sha256 the hub reports for the pinned commit); a mismatch deletes it. A marker
records the file's size and mtime, so later runs check a `stat` instead of reading and hashing the whole
file again; a file whose size or mtime changed (e.g. a cache copied from another machine) is hashed once more.

Where the manifest has no sha256, a cached file's expected hash comes from the cache itself: the blob's name
(huggingface_hub names blobs by the hub's LFS sha256), else huggingface_hub's tree listing of the pinned
commit (`trees/<commit>.json`, written by snapshot_download), else mvit's marker. A cache copied without
symlinks (`cp -rL`, zip, Windows) has a plain file in snapshots/: it is hashed once and accepted when blobs/
holds a blob of that name. A file whose expected hash is known and differs is corrupt (deleted); one whose
hash cannot be established offline is "unverified": never loaded, and never deleted either (with network,
the hub's sha256 settles it; offline mvit refuses and says how to fix the copy).

Which file serves (variant, source): the verified download if cached, else an imported checkpoint, else a
download (never when offline). Results are memoised per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from mvit_cli import manifest
from mvit_cli.errors import IntegrityError, UsageError, WeightsUnavailableError
from mvit_cli.manifest import WeightEntry

DEFAULT_ENDPOINT = "https://huggingface.co"
MVIT_DIR = "mvit"  # mvit's own folder inside the cache root
EXPORTS_DIR = "exports"  # inside MVIT_DIR: ONNX exports of cached weights, one subfolder per origin
_OTHER_ORIGIN = "other"  # exports of a file under the cache root that is neither a download nor an import
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "on", "yes", "true"}
_HEAD_TIMEOUT_S = 10.0

# (variant, source, cache root) -> verified path, for the life of the process.
_resolved: dict[tuple[str, str, str], Path] = {}


# ------------------------------------------------------------------------------------------ configuration


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """The weight cache folder, following huggingface_hub's rule, with `cache_dir` / MVIT_CACHE first."""
    env = os.environ
    for value in (cache_dir, env.get("MVIT_CACHE"), env.get("HF_HUB_CACHE")):
        if value:
            return Path(os.path.expandvars(str(value))).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expandvars(xdg)).expanduser() / "huggingface" / "hub"


def offline_from_env() -> bool:
    """HF_HUB_OFFLINE=1 (or huggingface's older TRANSFORMERS_OFFLINE=1): use only what is cached."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    """The hub to download from: HF_ENDPOINT (a mirror) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


# ------------------------------------------------------------------------------------------ verification


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _marker_path(root: Path, file: Path) -> Path:
    """One marker per file, named after its path inside the root (unique across repos and imports)."""
    try:
        relative = file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # not under the root (cannot happen for our files; be safe)
        relative = file.resolve().as_posix()
    name = relative.replace("/", "__")
    if len(name) > 200:
        name = hashlib.sha256(relative.encode()).hexdigest()
    return root / MVIT_DIR / "verified" / f"{name}.json"


def _read_marker(root: Path, file: Path) -> dict | None:
    try:
        return json.loads(_marker_path(root, file).read_text())
    except (OSError, ValueError):
        return None


def _marker_valid(root: Path, file: Path, expected_sha256: str) -> bool:
    marker = _read_marker(root, file)
    if not marker:
        return False
    st = file.stat()
    return (marker.get("sha256") == expected_sha256 and marker.get("size") == st.st_size
            and marker.get("mtime_ns") == st.st_mtime_ns)


def _write_marker(root: Path, file: Path, sha256: str) -> None:
    st = file.stat()
    marker = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "verified_at": time.time()}
    path = _marker_path(root, file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: verification just runs again next time


def _remove_marker(root: Path, file: Path) -> None:
    try:
        _marker_path(root, file).unlink(missing_ok=True)
    except OSError:
        pass  # read-only cache


def _verify(root: Path, file: Path, expected_sha256: str, use_marker: bool = True) -> bool:
    """Whether `file` hashes to `expected_sha256`; a valid marker answers without hashing."""
    if use_marker and _marker_valid(root, file, expected_sha256):
        return True
    actual = sha256_file(file)
    if actual != expected_sha256:
        _remove_marker(root, file)
        return False
    _write_marker(root, file, actual)
    return True


# ------------------------------------------------------------------------------------------ downloads


@dataclass
class CachedFile:
    """A file of mvit's in the cache, and whether its bytes are the expected ones."""

    variant: str
    source: str
    kind: str  # "download" or "import" ("exports" in what clear_cache removed: a folder of ONNX exports)
    path: Path  # what to load (for downloads: the snapshot path, usually a link to the blob)
    size: int
    state: str  # "verified", "unverified" (not hashed yet) or "corrupt"; "-" for exports
    detail: str  # repo and file for downloads, provenance for imports


def _snapshot_path(entry: WeightEntry, root: Path) -> Path | None:
    """The cached file of `entry` at its pinned revision, found on disk only (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.repo_id, entry.filename, cache_dir=str(root), revision=entry.revision)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _repo_folder(entry: WeightEntry, root: Path) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return root / repo_folder_name(repo_id=entry.repo_id, repo_type="model")


def _tree_listing_sha256(entry: WeightEntry, root: Path) -> str | None:
    """The LFS sha256 that huggingface_hub's tree listing of the pinned commit records for the file, if cached.

    snapshot_download (e.g. `hf download`) stores each commit's listing in the repo folder; a private module
    of huggingface_hub reads it, so its absence in another version only means "not known".
    """
    try:
        from huggingface_hub._tree_cache import read_tree_cache
    except ImportError:
        return None
    try:
        listing = read_tree_cache(str(_repo_folder(entry, root)), entry.revision) or {}
    except Exception:  # a format this version does not expect: not known
        return None
    sha256 = getattr(listing.get(entry.filename), "lfs_sha256", None)
    return sha256 if isinstance(sha256, str) and _SHA256.fullmatch(sha256) else None


def _expected_sha256(entry: WeightEntry, root: Path, path: Path) -> str | None:
    """What a cached download must hash to, as far as known without hashing or network: the manifest's sha256,
    else the hub's, from the blob's name, huggingface_hub's tree listing, or mvit's marker (module doc)."""
    if entry.sha256:
        return entry.sha256
    blob = Path(os.path.realpath(path))
    if _SHA256.fullmatch(blob.name):
        return blob.name
    listed = _tree_listing_sha256(entry, root)
    if listed:
        return listed
    marker = _read_marker(root, blob)  # a plain copy whose hash mvit established before (see below)
    return marker.get("sha256") if marker else None


def _sha256_vouched_by_blobs(entry: WeightEntry, root: Path, file: Path) -> str | None:
    """For a snapshot file that is a plain copy: its sha256, when the repo folder's blobs/ holds a blob of that
    name (huggingface_hub named it by the hub's sha256 on download). Hashes only if a blob of its size exists;
    records a marker, so later runs check a stat."""
    size = file.stat().st_size
    try:
        names = {b.name for b in (_repo_folder(entry, root) / "blobs").iterdir()
                 if _SHA256.fullmatch(b.name) and b.is_file() and b.stat().st_size == size}
    except OSError:
        return None
    if not names:
        return None
    actual = sha256_file(file)
    if actual not in names:
        return None
    _write_marker(root, file, actual)
    return actual


def _remove_download(entry: WeightEntry, root: Path, path: Path) -> None:
    """Delete a cached download: the blob, the snapshot link and the marker."""
    blob = Path(os.path.realpath(path))
    _remove_marker(root, path)
    _remove_marker(root, blob)
    for p in (path, blob):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _cached_download(entry: WeightEntry, root: Path, hash_now: bool, use_marker: bool = True) -> CachedFile | None:
    path = _snapshot_path(entry, root)
    if path is None:
        return None
    expected = _expected_sha256(entry, root, path)
    blob = Path(os.path.realpath(path))
    if expected is not None and use_marker and _marker_valid(root, blob, expected):
        state = "verified"
    elif not hash_now:
        state = "unverified"
    elif expected is not None:
        state = "verified" if _verify(root, blob, expected, use_marker=False) else "corrupt"
    else:  # a plain copy with no hash known: only a blob of its own hash can vouch for it
        state = "verified" if _sha256_vouched_by_blobs(entry, root, blob) else "unverified"
    return CachedFile(entry.variant, entry.source, "download", path, blob.stat().st_size, state,
                      f"{entry.repo_id}@{entry.revision[:7]} {entry.filename}")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport-level exception classes of whichever HTTP client this huggingface_hub version uses."""
    import importlib

    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests.exceptions", "RequestException")):
        try:
            classes.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def _how_to_get(entry: WeightEntry, root: Path) -> str:
    return (
        f"run `mvit download --variant {entry.variant} --source {entry.source}` on a machine with "
        f"network access and copy its cache folder (`mvit cache list` shows it) to {root} here, or bring the "
        f"checkpoint file ({entry.repo_id} {entry.filename}) and run "
        f"`mvit import FILE --variant {entry.variant} --source {entry.source}`"
    )


def _unverifiable(entry: WeightEntry, path: Path) -> IntegrityError:
    return IntegrityError(
        f"cannot verify the cached {entry.label} ({path}): it is a plain copy without huggingface_hub's links and "
        f"no sha256 for it is known offline, so it was not used. Copy the cache again keeping symlinks "
        f"(`cp -a`, `rsync -a`), or run `mvit download --variant {entry.variant} --source {entry.source}` with "
        f"network access to check it against the hub, or `mvit import FILE --variant {entry.variant} "
        f"--source {entry.source}`"
    )


def _other_cached_sources(entry: WeightEntry, root: Path) -> list[str]:
    """Other sources whose weights for this variant are in the cache (e.g. apple weights imported while the
    run asked for the default, timm): the likeliest fix for a user who imported or downloaded them."""
    return [source for source in manifest.SOURCES
            if source != entry.source and cached_file(entry.variant, source, root) is not None]


def _unavailable(entry: WeightEntry, root: Path, reason: str) -> WeightsUnavailableError:
    message = f"no {entry.source} weights for MobileViT-{entry.variant.upper()} in the cache {root}, and {reason}. "
    others = _other_cached_sources(entry, root)
    if others:
        message += (f"The cache has {' and '.join(others)} weights for MobileViT-{entry.variant.upper()}: add "
                    f"`--source {others[0]}` to use them. To get the {entry.source} weights instead: ")
    else:
        message += "To get them: "
    return WeightsUnavailableError(message + _how_to_get(entry, root))


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's download bar on stderr, or none at all."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


@dataclass
class Download:
    path: Path
    size: int
    sha256: str
    downloaded: bool  # False: it was already in the cache, verified


def download(variant: str, source: str, cache_dir: Path | None = None, progress: bool = True) -> Download:
    """The manifest's file for (variant, source) in the cache, verified: downloaded unless already there.

    A download that does not hash to the expected sha256 is deleted (blob and snapshot link) and IntegrityError
    raised; one that fails midway leaves nothing in the cache (huggingface_hub writes to a temporary file and
    moves it into place only once complete).
    """
    entry = manifest.entry(variant, source)
    root = cache_root(cache_dir)
    found = _cached_download(entry, root, hash_now=True)
    if found is not None and found.state == "verified":
        return Download(found.path, found.size, _expected_sha256(entry, root, found.path) or "", downloaded=False)
    if found is not None and found.state == "corrupt":
        _remove_corrupt(entry, root, found.path)
        found = None
    if offline_from_env():
        if found is not None:  # unverified: kept, but only the hub can tell whether it is the right file
            raise _unverifiable(entry, found.path)
        raise _unavailable(entry, root, "offline mode is on (HF_HUB_OFFLINE=1)")
    path, sha256, downloaded = _fetch(entry, root, progress)
    _forget(root, variant, source)
    return Download(path, Path(os.path.realpath(path)).stat().st_size, sha256, downloaded=downloaded)


def _remove_corrupt(entry: WeightEntry, root: Path, path: Path) -> None:
    from mvit_cli.output import warn

    warn(f"the cached {entry.label} does not match its sha256 (damaged on disk?); deleted it")
    _remove_download(entry, root, path)


def _fetch(entry: WeightEntry, root: Path, progress: bool) -> tuple[Path, str, bool]:
    """Download `entry` from the hub into the cache root; verify it. Returns the snapshot path, sha256, and
    whether bytes were transferred (False: an unverified cached copy turned out to be the hub's file)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from mvit_cli.output import warn

    hub = endpoint()
    where = f"{entry.repo_id}@{entry.revision} {entry.filename} from {hub}"
    started = False  # whether the transfer itself began (else the hub could not even be asked)
    try:
        # Ask the hub first which file it holds (its LFS sha256 and size), so that a file other than the pinned
        # one is refused before a single byte is stored.
        url = hf_hub_url(entry.repo_id, entry.filename, revision=entry.revision, endpoint=hub)
        meta = get_hf_file_metadata(url, timeout=_HEAD_TIMEOUT_S, **_agent())
        hub_sha256 = meta.etag if meta.etag and _SHA256.fullmatch(meta.etag) else None
        expected = entry.sha256 or hub_sha256
        if expected is None:
            raise IntegrityError(f"the hub reports no sha256 for {where}, so a download could not be verified")
        if entry.sha256 and hub_sha256 and hub_sha256 != entry.sha256:
            raise IntegrityError(
                f"the hub serves another file (sha256 {hub_sha256[:12]}...) than the one mvit's manifest pins "
                f"(sha256 {entry.sha256[:12]}...) for {where}; refused, nothing was stored"
            )
        # A cached copy whose hash could not be established offline (huggingface_hub would return it as is):
        # the hub's sha256 now tells whether it is the pinned file, or a damaged one to replace.
        existing = _snapshot_path(entry, root)
        if existing is not None:
            if _verify(root, Path(os.path.realpath(existing)), expected, use_marker=False):
                return existing, expected, False
            _remove_corrupt(entry, root, existing)
        size = f"{meta.size / 1e6:.1f} MB" if meta.size else entry.size_approx
        warn(f"downloading {entry.repo_id} {entry.filename} ({size}) from {hub}")
        started = True
        with _progress_bars(progress):
            path = Path(hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision,
                                        cache_dir=str(root), endpoint=hub, **_agent()))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsUnavailableError(
            f"the hub at {hub} has no {entry.filename} in {entry.repo_id} at revision {entry.revision} "
            f"({type(exc).__name__}); if HF_ENDPOINT points to a mirror, it lacks this file. To get it: " + _how_to_get(entry, root)
        ) from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise _unavailable(entry, root, f"the hub at {hub} cannot be reached ({_first_line(exc)})") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise _unavailable(entry, root, f"the hub at {hub} answered HTTP {status}" + _retry_hint(started)) from None
    except _network_errors() as exc:
        problem = f"{type(exc).__name__}: {_first_line(exc)}"
        reason = (f"the download from {hub} failed ({problem})" if started
                  else f"the hub at {hub} cannot be reached ({problem})")
        raise _unavailable(entry, root, reason + _retry_hint(started)) from None
    except OSError as exc:
        if exc.errno is not None:  # disk full, permission denied...: the CLI reports those itself
            raise
        # huggingface_hub's "Consistency check failed": fewer bytes arrived than the hub announced.
        raise _unavailable(entry, root, f"the download was incomplete ({_first_line(exc)})" + _retry_hint(True)) from None

    blob = Path(os.path.realpath(path))
    actual = sha256_file(blob)
    if actual != expected:
        _remove_download(entry, root, path)
        origin = "mvit's manifest" if entry.sha256 else "the hub announced"
        raise IntegrityError(
            f"the downloaded {entry.label} has sha256 {actual[:12]}..., not {expected[:12]}... as {origin}: it was "
            "corrupted or tampered with on the way and has been deleted. Run the command again; if this persists, "
            "the hub or a proxy serves wrong bytes"
        )
    _write_marker(root, blob, actual)
    return path, actual, True


def _retry_hint(started: bool) -> str:
    return "; nothing was kept, run the command again to retry" if started else ""


def _agent() -> dict[str, str]:
    """Identify mvit in the hub's user agent, as huggingface_hub asks libraries to."""
    from mvit_cli import __version__

    return {"library_name": "mvit", "library_version": __version__}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ imports


@dataclass
class ImportRecord:
    """Provenance of an imported checkpoint (the .json beside it)."""

    variant: str
    source: str
    original_name: str
    original_format: str
    original_sha256: str
    original_size: int
    matches_manifest: bool | None  # the original is the manifest's file (True), is not (False), unknown (None)
    sha256: str  # of the stored canonical safetensors
    imported_at: float


def _import_paths(root: Path, variant: str, source: str) -> tuple[Path, Path]:
    base = root / MVIT_DIR / "imports" / f"mobilevit_{variant}-{source}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def _read_import(root: Path, variant: str, source: str) -> tuple[Path, ImportRecord] | None:
    weights, record_path = _import_paths(root, variant, source)
    if not (weights.is_file() and record_path.is_file()):
        return None
    try:
        record = ImportRecord(**json.loads(record_path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return weights, record


def _cached_import(root: Path, variant: str, source: str, hash_now: bool, use_marker: bool = True) -> CachedFile | None:
    found = _read_import(root, variant, source)
    if found is None:
        return None
    weights, record = found
    if use_marker and _marker_valid(root, weights, record.sha256):
        state = "verified"
    elif hash_now:
        state = "verified" if _verify(root, weights, record.sha256, use_marker=False) else "corrupt"
    else:
        state = "unverified"
    detail = f"imported from {record.original_name} ({record.original_format} format)"
    return CachedFile(variant, source, "import", weights, weights.stat().st_size, state, detail)


def import_checkpoint(file: Path, variant: str | None = None, source: str | None = None,
                      cache_dir: Path | None = None) -> tuple[Path, ImportRecord]:
    """Load `file` (any supported format) to prove it is a complete checkpoint of `variant`, then store it in
    the cache as canonical safetensors, where `resolve_weights(variant, source)` finds it offline.

    `source` (whose preprocessing protocol applies) defaults to the one of the detected format.
    """
    from mvit_cli import checkpoints
    from mvit_cli.inference import DEFAULT_SOURCE, FORMAT_SOURCE

    file = Path(file)
    checkpoint = checkpoints.load_checkpoint(file, variant=variant)
    source = source or FORMAT_SOURCE.get(checkpoint.format) or checkpoint.source or DEFAULT_SOURCE
    if source not in manifest.SOURCES:
        raise UsageError(f"unknown weight source {source!r}; expected one of {', '.join(manifest.SOURCES)}")
    original_sha256 = sha256_file(file)
    published = manifest.entry(checkpoint.variant, source).sha256
    root = cache_root(cache_dir)
    weights, record_path = _import_paths(root, checkpoint.variant, source)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f"{weights.stem}.{os.getpid()}.tmp")
    try:
        checkpoints.save_canonical(checkpoint, tmp, source)
        record = ImportRecord(
            variant=checkpoint.variant,
            source=source,
            original_name=file.name,
            original_format=checkpoint.format,
            original_sha256=original_sha256,
            original_size=file.stat().st_size,
            matches_manifest=None if published is None else original_sha256 == published,
            sha256=sha256_file(tmp),
            imported_at=time.time(),
        )
        # The record goes last: an import without its record is never used, so a crash midway is harmless.
        record_path.unlink(missing_ok=True)
        os.replace(tmp, weights)
        record_tmp = record_path.with_name(f"{record_path.stem}.{os.getpid()}.tmp")
        record_tmp.write_text(json.dumps(asdict(record), indent=1))
        os.replace(record_tmp, record_path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(root, weights, record.sha256)
    _forget(root, checkpoint.variant, source)
    return weights, record


# ------------------------------------------------------------------------------------------ resolving


def _forget(root: Path, variant: str | None = None, source: str | None = None) -> None:
    for key in list(_resolved):
        if key[2] == str(root) and variant in (None, key[0]) and source in (None, key[1]):
            del _resolved[key]


def cached_file(variant: str, source: str, cache_dir: Path | None = None) -> Path | None:
    """The file that would serve (variant, source) from the cache, verified; None if there is none. No network."""
    root = cache_root(cache_dir)
    entry = manifest.entry(variant, source)
    for found in (_cached_download(entry, root, hash_now=True), _cached_import(root, variant, source, hash_now=True)):
        if found is not None and found.state == "verified":
            return found.path
    return None


def resolve_weights(variant: str, source: str, cache_dir: Path | None = None, offline: bool = False,
                    progress: bool = True) -> Path:
    """A verified weight file for (variant, source): from the cache, or downloaded (unless offline).

    Raises WeightsUnavailableError when nothing is cached and the hub cannot be used, IntegrityError when a
    file does not hash to what it must, or (offline) when a cached file's expected hash cannot be established.
    """
    entry = manifest.entry(variant, source)
    root = cache_root(cache_dir)
    key = (variant, source, str(root))
    if key in _resolved and _resolved[key].exists():
        return _resolved[key]

    download_found = _cached_download(entry, root, hash_now=True)
    if download_found is not None and download_found.state == "corrupt":
        _remove_corrupt(entry, root, download_found.path)
        download_found = None
    import_found = None
    if download_found is None or download_found.state != "verified":
        import_found = _cached_import(root, variant, source, hash_now=True)
    for found in (download_found, import_found):
        if found is not None and found.state == "verified":
            _resolved[key] = found.path
            return found.path
    # Nothing verified. A damaged import or a copy whose hash is unknown offline is refused, never loaded.
    if import_found is not None and import_found.state == "corrupt":
        raise IntegrityError(
            f"the imported {source} weights for MobileViT-{variant.upper()} ({import_found.path}) no longer match "
            f"their sha256; import them again with `mvit import FILE --variant {variant} --source {source}`"
        )
    if offline or offline_from_env():
        if download_found is not None:
            raise _unverifiable(entry, download_found.path)
        raise _unavailable(entry, root, "offline mode is on (--offline or HF_HUB_OFFLINE=1)")
    path, _, _ = _fetch(entry, root, progress)
    _resolved[key] = path
    return path


# ------------------------------------------------------------------------------------------ cache admin


def list_cache(cache_dir: Path | None = None, verify: bool = False) -> list[CachedFile]:
    """Every mvit weight file in the cache. `verify`: hash every file now, ignoring verification markers."""
    root = cache_root(cache_dir)
    rows: list[CachedFile] = []
    for entry in manifest.entries():
        for found in (_cached_download(entry, root, hash_now=True, use_marker=not verify),
                      _cached_import(root, entry.variant, entry.source, hash_now=True, use_marker=not verify)):
            if found is not None:
                rows.append(found)
    return rows


def exports_root(cache_dir: Path | None = None) -> Path:
    """mvit's folder for ONNX exports of cached weights: `<cache root>/mvit/exports`."""
    return cache_root(cache_dir) / MVIT_DIR / EXPORTS_DIR


def _download_origin(entry: WeightEntry) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=entry.repo_id, repo_type="model")


def _import_origin(variant: str, source: str) -> str:
    return f"imports--{_import_paths(Path(), variant, source)[0].stem}"


def _cache_origin(weights: Path) -> tuple[Path, str] | None:
    """(cache root, origin) when `weights` is a file of a weight cache, read from its path: a huggingface_hub
    download (`<root>/models--*/snapshots/<commit>/...` or `.../blobs/<sha>`), an import
    (`<root>/mvit/imports/<name>`), or any other file under the configured cache root. None otherwise.

    The path itself names its root, so this holds for a cache given with --cache-dir too, which the runtime
    never sees."""
    parts = weights.parts
    for i in range(len(parts) - 3, 0, -1):  # innermost repo folder first
        if parts[i].startswith("models--") and (
            (parts[i + 1] == "snapshots" and len(parts) >= i + 4) or (parts[i + 1] == "blobs" and len(parts) == i + 3)
        ):
            return Path(*parts[:i]), parts[i]
    if len(parts) >= 4 and parts[-2] == "imports" and parts[-3] == MVIT_DIR:
        return Path(*parts[:-3]), f"imports--{weights.stem}"
    root = Path(os.path.abspath(cache_root()))
    if root in weights.parents:
        return root, _OTHER_ORIGIN
    return None


def cache_exports_folder(weights_path: Path) -> Path | None:
    """Where exports of `weights_path` belong when it is a file of a weight cache (see `_cache_origin`):
    `<root>/mvit/exports/<origin>/`. None for a file outside any cache (its exports stay beside it)."""
    found = _cache_origin(Path(os.path.abspath(weights_path)))
    if found is None:
        return None
    root, origin = found
    return root / MVIT_DIR / EXPORTS_DIR / origin


def _folder_size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:  # removed meanwhile (another process cleaning up its temporary export)
            pass
    return total


def exports_size(cache_dir: Path | None = None) -> tuple[Path, int]:
    """(mvit's exports folder, bytes of the exports in it); 0 when it does not exist."""
    folder = exports_root(cache_dir)
    return folder, (_folder_size(folder) if folder.is_dir() else 0)


def _remove_exports(root: Path, variant: str, source: str, origin: str) -> CachedFile | None:
    """Delete the exports made from one cached file (their folder); what was removed, or None."""
    folder = root / MVIT_DIR / EXPORTS_DIR / origin
    if not folder.is_dir():
        return None
    size = _folder_size(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return CachedFile(variant, source, "exports", folder, size, "-", "ONNX exports of the onnxruntime backend")


def clear_cache(variant: str | None = None, source: str | None = None, cache_dir: Path | None = None) -> list[CachedFile]:
    """Delete mvit's weight files (downloads and imports) for the given variant/source (None: all), and the
    ONNX exports made from them (kind "exports"; without a filter, the whole exports folder).

    Only the manifest's files are removed from huggingface_hub's repo folders; a repo folder left without any
    file is removed whole.
    """
    root = cache_root(cache_dir)
    removed: list[CachedFile] = []
    for entry in manifest.entries():
        if variant not in (None, entry.variant) or source not in (None, entry.source):
            continue
        found = _cached_download(entry, root, hash_now=False)
        if found is not None:
            _remove_download(entry, root, found.path)
            _prune_repo_folder(root, entry)
            removed.append(found)
        found = _cached_import(root, entry.variant, entry.source, hash_now=False)
        if found is not None:
            _remove_marker(root, found.path)
            for path in _import_paths(root, entry.variant, entry.source):
                path.unlink(missing_ok=True)
            removed.append(found)
        # Exports go even when their weights are gone already (e.g. deleted with `hf cache delete`).
        for origin in (_download_origin(entry), _import_origin(entry.variant, entry.source)):
            exports = _remove_exports(root, entry.variant, entry.source, origin)
            if exports is not None:
                removed.append(exports)
        _forget(root, entry.variant, entry.source)
    if variant is None and source is None:  # "everything mvit cached": exports of other files too
        shutil.rmtree(root / MVIT_DIR / EXPORTS_DIR, ignore_errors=True)
    return removed


def _prune_repo_folder(root: Path, entry: WeightEntry) -> None:
    from huggingface_hub.file_download import repo_folder_name

    folder = root / repo_folder_name(repo_id=entry.repo_id, repo_type="model")
    blobs = folder / "blobs"
    if blobs.is_dir() and any(p.is_file() for p in blobs.iterdir()):
        return  # other files of this repo (e.g. cached by transformers) stay
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(root / ".locks" / folder.name, ignore_errors=True)


def describe_root(cache_dir: Path | None = None) -> str:
    """Where the cache root came from, for messages: "--cache-dir / MVIT_CACHE", "HF_HUB_CACHE", ..."""
    if cache_dir:
        return "--cache-dir / MVIT_CACHE"
    for name in ("MVIT_CACHE", "HF_HUB_CACHE", "HF_HOME"):
        if os.environ.get(name):
            return name
    return "default"


__all__ = [
    "CachedFile",
    "ImportRecord",
    "cache_exports_folder",
    "cache_root",
    "cached_file",
    "clear_cache",
    "download",
    "endpoint",
    "exports_root",
    "exports_size",
    "import_checkpoint",
    "list_cache",
    "offline_from_env",
    "resolve_weights",
    "sha256_file",
]
