"""Which file serves (variant, source): the verified download if cached, else an imported checkpoint, else a
download (never when offline). Results are memoised per process (`memo.py`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from mvit_cli import manifest
from mvit_cli.errors import IntegrityError, WeightsUnavailableError
from mvit_cli.manifest import WeightEntry
from mvit_cli.store.memo import forget, remember, remembered
from mvit_cli.store.config import checked_root, offline_from_env
from mvit_cli.store.downloads import (
    Download,
    FetchFailed,
    cached_download,
    expected_sha256,
    fetch,
    how_to_get,
    remove_corrupt,
    unverifiable,
)
from mvit_cli.store.imports import cached_import, read_import
from mvit_cli.store.verify import CachedFile

Warn = Callable[[str], None]
_log = logging.getLogger("mvit")


def _other_cached_sources(entry: WeightEntry, root: Path) -> list[str]:
    """Other sources whose weights for this variant are in the cache (e.g. apple weights imported while the
    run asked for the default, timm): the likeliest fix for a user who imported or downloaded them."""
    return [source for source in manifest.SOURCES
            if source != entry.source and cached_file(entry.variant, source, root) is not None]


def _unavailable(entry: WeightEntry, root: Path, reason: str,
                 imported: CachedFile | None = None) -> WeightsUnavailableError:
    title = manifest.title(entry.variant)
    if imported is not None and imported.state == "verified":
        # `mvit download` wants the published file; an import that is not it does not count, but exists.
        message = (f"the cache {root} holds an imported {entry.source} checkpoint for {title} ({imported.provenance}) "
                   f"but not the published file, and {reason}. ")
    else:
        message = f"no {entry.source} weights for {title} in the cache {root}, and {reason}. "
    others = _other_cached_sources(entry, root)
    if others:
        message += (f"The cache has {' and '.join(others)} weights for {title}: add "
                    f"`--source {others[0]}` to use them. To get the {entry.source} weights instead: ")
    else:
        message += "To get them: "
    return WeightsUnavailableError(message + how_to_get(entry, root))


def download(variant: str, source: str, cache_dir: Path | None = None, progress: bool = True,
             warn: Warn | None = None) -> Download:
    """The manifest's file for (variant, source) in the cache, verified: downloaded unless already there.

    A download that does not hash to the expected sha256 is deleted (blob and snapshot link) and IntegrityError
    raised; one that fails midway leaves nothing in the cache (huggingface_hub writes to a temporary file and
    moves it into place only once complete). `warn` hears of what happens on the way (a damaged copy deleted, a
    download started); by default the "mvit" logger does.
    """
    warn = warn or _log.warning
    entry = manifest.entry(variant, source)
    root = checked_root(cache_dir)
    found = cached_download(entry, root, hash_now=True)
    if found is not None and found.state == "verified":
        return Download(found.path, found.size, expected_sha256(entry, root, found.path) or "", downloaded=False)
    imported = cached_import(root, variant, source, hash_now=True)
    if imported is not None and imported.state == "verified" and imported.published:
        # The published file, brought in by hand: nothing to download.
        return Download(imported.path, imported.size, _original_sha256(root, variant, source), downloaded=False,
                        kind="import")
    if found is not None and found.state == "corrupt":
        remove_corrupt(entry, root, found.path, warn)
        found = None
    if offline_from_env():
        if found is not None:  # unverified: kept, but only the hub can tell whether it is the right file
            raise unverifiable(entry, found.path)
        raise _unavailable(entry, root, "offline mode is on (HF_HUB_OFFLINE=1)", imported)
    try:
        path, sha256, downloaded = fetch(entry, root, progress, warn)
    except FetchFailed as exc:
        raise _unavailable(entry, root, exc.reason, imported) from None
    forget(root, variant, source)
    return Download(path, Path(os.path.realpath(path)).stat().st_size, sha256, downloaded=downloaded)


def cached_entry(variant: str, source: str, cache_dir: Path | None = None) -> CachedFile | None:
    """The file that would serve (variant, source) from the cache, verified, with what it is (a download, an
    import and whether that is the published file); None if there is none. No network."""
    root = checked_root(cache_dir)
    entry = manifest.entry(variant, source)
    for found in (cached_download(entry, root, hash_now=True), cached_import(root, variant, source, hash_now=True)):
        if found is not None and found.state == "verified":
            return found
    return None


def cached_file(variant: str, source: str, cache_dir: Path | None = None) -> Path | None:
    """The path of `cached_entry`, or None."""
    found = cached_entry(variant, source, cache_dir)
    return None if found is None else found.path


def _original_sha256(root: Path, variant: str, source: str) -> str:
    found = read_import(root, variant, source)
    return found[1].original_sha256 if found else ""


def resolve_weights(variant: str, source: str, cache_dir: Path | None = None, offline: bool = False,
                    progress: bool = True, warn: Warn | None = None) -> Path:
    """A verified weight file for (variant, source): from the cache, or downloaded (unless offline).

    Raises WeightsUnavailableError when nothing is cached and the hub cannot be used, IntegrityError when a
    file does not hash to what it must, or (offline) when a cached file's expected hash cannot be established.
    `warn`: as for `download`.
    """
    warn = warn or _log.warning
    entry = manifest.entry(variant, source)
    root = checked_root(cache_dir)
    known = remembered(variant, source, root)
    if known is not None:
        return known

    download_found = cached_download(entry, root, hash_now=True)
    if download_found is not None and download_found.state == "corrupt":
        remove_corrupt(entry, root, download_found.path, warn)
        download_found = None
    import_found = None
    if download_found is None or download_found.state != "verified":
        import_found = cached_import(root, variant, source, hash_now=True)
    for found in (download_found, import_found):
        if found is not None and found.state == "verified":
            remember(variant, source, root, found.path)
            return found.path
    # Nothing verified. A damaged import or a copy whose hash is unknown offline is refused, never loaded.
    if import_found is not None and import_found.state == "corrupt":
        raise IntegrityError(
            f"the imported {source} weights for {manifest.title(variant)} ({import_found.path}) no longer match "
            f"their sha256; import them again with `mvit import FILE --variant {variant} --source {source}`"
        )
    if offline or offline_from_env():
        if download_found is not None:
            raise unverifiable(entry, download_found.path)
        raise _unavailable(entry, root, "offline mode is on (--offline or HF_HUB_OFFLINE=1)")
    try:
        path, _, _ = fetch(entry, root, progress, warn)
    except FetchFailed as exc:
        raise _unavailable(entry, root, exc.reason) from None
    remember(variant, source, root, path)
    return path
