"""What the store holds, and removing it: `mvit cache list` and `mvit cache clear`."""

from __future__ import annotations

import shutil
from pathlib import Path

from mvit_cli import manifest
from mvit_cli.manifest import WeightEntry
from mvit_cli.store.config import MVIT_DIR, checked_root
from mvit_cli.store.downloads import cached_download, remove_download, repo_folder
from mvit_cli.store.exports import EXPORTS_DIR, download_origin, import_origin, remove_exports
from mvit_cli.store.imports import cached_import, import_paths
from mvit_cli.store.memo import forget
from mvit_cli.store.verify import CachedFile, remove_marker


def list_cache(cache_dir: Path | None = None) -> list[CachedFile]:
    """Every mvit weight file in the cache, each hashed now: "verified", or "corrupt" (or, for a plain copy whose
    expected hash is not known offline, "unverified")."""
    root = checked_root(cache_dir)
    rows: list[CachedFile] = []
    for entry in manifest.entries():
        for found in (cached_download(entry, root, hash_now=True),
                      cached_import(root, entry.variant, entry.source, hash_now=True)):
            if found is not None:
                rows.append(found)
    return rows


def clear_cache(variant: str | None = None, source: str | None = None,
                cache_dir: Path | None = None) -> list[CachedFile]:
    """Delete mvit's weight files (downloads and imports) for the given variant/source (None: all), and the
    ONNX exports made from them (kind "exports"; without a filter, the whole exports folder).

    Only the manifest's files are removed from huggingface_hub's repo folders; a repo folder left without any
    file is removed whole.
    """
    root = checked_root(cache_dir)
    removed: list[CachedFile] = []
    for entry in manifest.entries():
        if variant not in (None, entry.variant) or source not in (None, entry.source):
            continue
        found = cached_download(entry, root, hash_now=False)
        if found is not None:
            remove_download(entry, root, found.path)
            _prune_repo_folder(root, entry)
            removed.append(found)
        found = cached_import(root, entry.variant, entry.source, hash_now=False)
        if found is not None:
            remove_marker(root, found.path)
            for path in import_paths(root, entry.variant, entry.source):
                path.unlink(missing_ok=True)
            removed.append(found)
        # Exports go even when their weights are gone already (e.g. deleted with `hf cache delete`).
        for origin in (download_origin(entry), import_origin(entry.variant, entry.source)):
            exports = remove_exports(root, entry.variant, entry.source, origin)
            if exports is not None:
                removed.append(exports)
        forget(root, entry.variant, entry.source)
    if variant is None and source is None:  # "everything mvit cached": exports of other files too
        shutil.rmtree(root / MVIT_DIR / EXPORTS_DIR, ignore_errors=True)
    return removed


def _prune_repo_folder(root: Path, entry: WeightEntry) -> None:
    folder = repo_folder(entry, root)
    blobs = folder / "blobs"
    if blobs.is_dir() and any(p.is_file() for p in blobs.iterdir()):
        return  # other files of this repo (e.g. cached by transformers) stay
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(root / ".locks" / folder.name, ignore_errors=True)
