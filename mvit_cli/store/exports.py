"""Where exports of weights live: the onnxruntime backend's ONNX files, made once per weights and input size.

    mvit/exports/<origin>/<name>-<variant>-<H>x<W>-<key>.onnx  onnxruntime exports of the cached weights;
                                                               <origin>: the repo folder's name for a download,
                                                               imports--<import's name>

Exports of the cache's weights live in mvit's own folder, never inside huggingface_hub's repo folders (which timm
and transformers manage too), and `clear_cache` removes them with the weights they were made from. Exports of a
file given with --weights live in a `mvit-exports/` folder beside it; where that is not writable, in the user
cache folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mvit_cli.manifest import WeightEntry
from mvit_cli.store.config import MVIT_DIR, cache_root
from mvit_cli.store.downloads import repo_folder
from mvit_cli.store.imports import import_paths
from mvit_cli.store.verify import CachedFile

EXPORTS_DIR = "exports"  # inside MVIT_DIR: ONNX exports of cached weights, one subfolder per origin
EXPORT_DIR_NAME = "mvit-exports"  # beside a weights file outside the cache
_OTHER_ORIGIN = "other"  # exports of a file under the cache root that is neither a download nor an import


def exports_root(cache_dir: Path | None = None) -> Path:
    """mvit's folder for ONNX exports of cached weights: `<cache root>/mvit/exports`."""
    return cache_root(cache_dir) / MVIT_DIR / EXPORTS_DIR


def download_origin(entry: WeightEntry) -> str:
    """The exports subfolder of a download: its huggingface_hub repo folder's name."""
    return repo_folder(entry, Path()).name


def import_origin(variant: str, source: str) -> str:
    return f"imports--{import_paths(Path(), variant, source)[0].stem}"


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


def remove_exports(root: Path, variant: str, source: str, origin: str) -> CachedFile | None:
    """Delete the exports made from one cached file (their folder); what was removed, or None."""
    folder = root / MVIT_DIR / EXPORTS_DIR / origin
    if not folder.is_dir():
        return None
    size = _folder_size(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return CachedFile(variant, source, "exports", folder, size, "-", "ONNX exports of the onnxruntime backend", None)


def user_exports_folder() -> Path:
    """Exports of a weights file whose own folder is not writable: the user's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mvit" / "exports"


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def export_folder(weights_path: Path) -> Path | None:
    """Where exports of `weights_path` are kept: mvit's exports folder in the weight cache for a cached file,
    else `mvit-exports/` beside it; the user cache folder if that is not writable; None if nothing is."""
    preferred = cache_exports_folder(weights_path) or Path(weights_path).parent / EXPORT_DIR_NAME
    for folder in (preferred, user_exports_folder()):
        if _writable_dir(folder):
            return folder
    return None
