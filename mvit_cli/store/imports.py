"""Imports: checkpoint files brought in by hand (`mvit import`), stored as canonical safetensors.

    mvit/imports/mobilevit_<variant>-<source>.safetensors   `mvit import`ed weights, canonical keys
    mvit/imports/mobilevit_<variant>-<source>.json          where they came from, and their sha256
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mvit_cli import checkpoints, manifest
from mvit_cli.store.config import MVIT_DIR, checked_root
from mvit_cli.store.memo import forget
from mvit_cli.store.verify import CachedFile, sha256_file, verify_file, write_marker


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


def import_paths(root: Path, variant: str, source: str) -> tuple[Path, Path]:
    base = root / MVIT_DIR / "imports" / f"mobilevit_{variant}-{source}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def read_import(root: Path, variant: str, source: str) -> tuple[Path, ImportRecord] | None:
    weights, record_path = import_paths(root, variant, source)
    if not (weights.is_file() and record_path.is_file()):
        return None
    try:
        record = ImportRecord(**json.loads(record_path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return weights, record


def cached_import(root: Path, variant: str, source: str, hash_now: bool) -> CachedFile | None:
    """The imported file for (variant, source), hashed now against its record (`hash_now`) or not."""
    found = read_import(root, variant, source)
    if found is None:
        return None
    weights, record = found
    if hash_now:
        state = "verified" if verify_file(root, weights, record.sha256) else "corrupt"
    else:
        state = "unverified"
    detail = f"imported from {record.original_name} ({record.original_format} format)"
    return CachedFile(variant, source, "import", weights, weights.stat().st_size, state, detail,
                      record.matches_manifest)


def import_checkpoint(file: Path, variant: str | None = None, source: str | None = None,
                      cache_dir: Path | None = None) -> tuple[Path, ImportRecord]:
    """Load `file` (any supported format) to prove it is a complete checkpoint of `variant`, then store it in
    the cache as canonical safetensors, where `resolve_weights(variant, source)` finds it offline.

    `source` (whose preprocessing protocol applies) defaults to the one of the detected format.
    """
    file = Path(file)
    checkpoint = checkpoints.load_checkpoint(file, variant=variant)
    source = source or manifest.source_for(checkpoint.format, checkpoint.source)
    manifest.entry(checkpoint.variant, source)  # validates the source
    original_sha256 = sha256_file(file)
    published = manifest.entry(checkpoint.variant, source).sha256
    root = checked_root(cache_dir)
    weights, record_path = import_paths(root, checkpoint.variant, source)
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
    write_marker(root, weights, record.sha256)
    forget(root, checkpoint.variant, source)
    return weights, record
