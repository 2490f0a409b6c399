"""Downloads: the manifest's files in huggingface_hub's cache layout, found on disk or fetched from the hub.

    models--timm--mobilevit_s.cvnets_in1k/      huggingface_hub's standard layout, shared with timm and
        blobs/<sha256>                          transformers: a file downloaded by either is reused
        snapshots/<commit>/model.safetensors -> ../../blobs/<sha256>
        refs/

Where the manifest has no sha256, a cached file's expected hash comes from the cache itself: the blob's name
(huggingface_hub names blobs by the hub's LFS sha256), else huggingface_hub's tree listing of the pinned
commit (`trees/<commit>.json`, written by snapshot_download), else mvit's marker. A cache copied without
symlinks (`cp -rL`, zip, Windows) has a plain file in snapshots/: it is hashed once and accepted when blobs/
holds a blob of that name. A file whose expected hash is known and differs is corrupt (deleted); one whose
hash cannot be established offline is "unverified": never loaded, and never deleted either (with network,
the hub's sha256 settles it; offline mvit refuses and says how to fix the copy).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from mvit_cli.errors import IntegrityError, WeightsUnavailableError
from mvit_cli.manifest import WeightEntry
from mvit_cli.store.config import SHA256_PATTERN, endpoint
from mvit_cli.store.verify import (
    CachedFile,
    read_marker,
    remove_marker,
    sha256_file,
    verify_file,
    write_marker,
)

_HEAD_TIMEOUT_S = 10.0
Warn = Callable[[str], None]


class FetchFailed(Exception):
    """The hub could not be asked or the transfer failed; `reason` completes "... and <reason>" in the
    caller's message (which knows what else the cache holds)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def snapshot_path(entry: WeightEntry, root: Path) -> Path | None:
    """The cached file of `entry` at its pinned revision, found on disk only (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.repo_id, entry.filename, cache_dir=str(root), revision=entry.revision)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def repo_folder(entry: WeightEntry, root: Path) -> Path:
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
        listing = read_tree_cache(str(repo_folder(entry, root)), entry.revision) or {}
    except Exception:  # a format this version does not expect: not known
        return None
    sha256 = getattr(listing.get(entry.filename), "lfs_sha256", None)
    return sha256 if isinstance(sha256, str) and SHA256_PATTERN.fullmatch(sha256) else None


def expected_sha256(entry: WeightEntry, root: Path, path: Path) -> str | None:
    """What a cached download must hash to, as far as known without hashing or network: the manifest's sha256,
    else the hub's, from the blob's name, huggingface_hub's tree listing, or mvit's marker (module doc)."""
    if entry.sha256:
        return entry.sha256
    blob = Path(os.path.realpath(path))
    if SHA256_PATTERN.fullmatch(blob.name):
        return blob.name
    listed = _tree_listing_sha256(entry, root)
    if listed:
        return listed
    marker = read_marker(root, blob)  # a plain copy whose hash mvit established before (see below)
    return marker.get("sha256") if marker else None


def _sha256_vouched_by_blobs(entry: WeightEntry, root: Path, file: Path) -> str | None:
    """For a snapshot file that is a plain copy: its sha256, when the repo folder's blobs/ holds a blob of that
    name (huggingface_hub named it by the hub's sha256 on download). Hashes only if a blob of its size exists;
    records a marker, so later runs check a stat."""
    size = file.stat().st_size
    try:
        names = {b.name for b in (repo_folder(entry, root) / "blobs").iterdir()
                 if SHA256_PATTERN.fullmatch(b.name) and b.is_file() and b.stat().st_size == size}
    except OSError:
        return None
    if not names:
        return None
    actual = sha256_file(file)
    if actual not in names:
        return None
    write_marker(root, file, actual)
    return actual


def remove_download(entry: WeightEntry, root: Path, path: Path) -> None:
    """Delete a cached download: the blob, the snapshot link and the marker."""
    blob = Path(os.path.realpath(path))
    remove_marker(root, path)
    remove_marker(root, blob)
    for p in (path, blob):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def cached_download(entry: WeightEntry, root: Path, hash_now: bool) -> CachedFile | None:
    """The cached file of `entry`, hashed now (`hash_now`: "verified" or "corrupt") or not ("unverified")."""
    path = snapshot_path(entry, root)
    if path is None:
        return None
    expected = expected_sha256(entry, root, path)
    blob = Path(os.path.realpath(path))
    if not hash_now:
        state = "unverified"
    elif expected is not None:
        state = "verified" if verify_file(root, blob, expected) else "corrupt"
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


def how_to_get(entry: WeightEntry, root: Path) -> str:
    return (
        f"run `mvit download --variant {entry.variant} --source {entry.source}` on a machine with "
        f"network access and copy its cache folder (`mvit cache list` shows it) to {root} here, or bring the "
        f"checkpoint file ({entry.repo_id} {entry.filename}) and run "
        f"`mvit import FILE --variant {entry.variant} --source {entry.source}`"
    )


def unverifiable(entry: WeightEntry, path: Path) -> IntegrityError:
    return IntegrityError(
        f"cannot verify the cached {entry.label} ({path}): it is a plain copy without huggingface_hub's links and "
        f"no sha256 for it is known offline, so it was not used. Copy the cache again keeping symlinks "
        f"(`cp -a`, `rsync -a`), or run `mvit download --variant {entry.variant} --source {entry.source}` with "
        f"network access to check it against the hub, or `mvit import FILE --variant {entry.variant} "
        f"--source {entry.source}`"
    )


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
    sha256: str  # of the published file
    downloaded: bool  # False: it was already in the cache, verified
    kind: str = "download"  # "import": the published file was brought in by hand (`mvit import`)


def remove_corrupt(entry: WeightEntry, root: Path, path: Path, warn: Warn) -> None:
    warn(f"the cached {entry.label} does not match its sha256 (damaged on disk?); deleted it")
    remove_download(entry, root, path)


def fetch(entry: WeightEntry, root: Path, progress: bool, warn: Warn) -> tuple[Path, str, bool]:
    """Download `entry` from the hub into the cache root; verify it. Returns the snapshot path, sha256, and
    whether bytes were transferred (False: an unverified cached copy turned out to be the hub's file).

    Raises FetchFailed when the hub cannot be reached or the transfer fails, WeightsUnavailableError when the hub
    lacks the file, IntegrityError when the bytes are not the pinned ones."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = endpoint()
    where = f"{entry.repo_id}@{entry.revision} {entry.filename} from {hub}"
    started = False  # whether the transfer itself began (else the hub could not even be asked)
    try:
        # Ask the hub first which file it holds (its LFS sha256 and size), so that a file other than the pinned
        # one is refused before a single byte is stored.
        url = hf_hub_url(entry.repo_id, entry.filename, revision=entry.revision, endpoint=hub)
        meta = get_hf_file_metadata(url, timeout=_HEAD_TIMEOUT_S, **_agent())
        hub_sha256 = meta.etag if meta.etag and SHA256_PATTERN.fullmatch(meta.etag) else None
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
        existing = snapshot_path(entry, root)
        if existing is not None:
            if verify_file(root, Path(os.path.realpath(existing)), expected):
                return existing, expected, False
            remove_corrupt(entry, root, existing, warn)
        size = f"{meta.size / 1e6:.1f} MB" if meta.size else entry.size_approx
        warn(f"downloading {entry.repo_id} {entry.filename} ({size}) from {hub}")
        started = True
        with _progress_bars(progress):
            path = Path(hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision,
                                        cache_dir=str(root), endpoint=hub, **_agent()))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsUnavailableError(
            f"the hub at {hub} has no {entry.filename} in {entry.repo_id} at revision {entry.revision} "
            f"({type(exc).__name__}); if HF_ENDPOINT points to a mirror, it lacks this file. To get it: "
            + how_to_get(entry, root)
        ) from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise FetchFailed(f"the hub at {hub} cannot be reached ({_first_line(exc)})") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise FetchFailed(f"the hub at {hub} answered HTTP {status}" + _retry_hint(started)) from None
    except _network_errors() as exc:
        problem = f"{type(exc).__name__}: {_first_line(exc)}"
        reason = (f"the download from {hub} failed ({problem})" if started
                  else f"the hub at {hub} cannot be reached ({problem})")
        raise FetchFailed(reason + _retry_hint(started)) from None
    except OSError as exc:
        if exc.errno is not None:  # disk full, permission denied...: the CLI reports those itself
            raise
        # huggingface_hub's "Consistency check failed": fewer bytes arrived than the hub announced.
        raise FetchFailed(f"the download was incomplete ({_first_line(exc)})" + _retry_hint(True)) from None

    blob = Path(os.path.realpath(path))
    actual = sha256_file(blob)
    if actual != expected:
        remove_download(entry, root, path)
        origin = "mvit's manifest" if entry.sha256 else "the hub announced"
        raise IntegrityError(
            f"the downloaded {entry.label} has sha256 {actual[:12]}..., not {expected[:12]}... as {origin}: it was "
            "corrupted or tampered with on the way and has been deleted. Run the command again; if this persists, "
            "the hub or a proxy serves wrong bytes"
        )
    write_marker(root, blob, actual)
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
