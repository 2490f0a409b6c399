"""Verification: whether a file of the store holds the bytes it must, and the markers that remember it.

A download is hashed when it arrives, against the manifest's sha256 (or, where that is not established, the LFS
sha256 the hub reports for the pinned commit); a mismatch deletes it. After that, every time a file is about to be
loaded (and every time `mvit cache list` lists it) it is hashed again: bit rot or an edit that kept the file's size
and mtime is caught before the weights are used. It costs one read of the file, ~15 ms for the largest (S, 22 MB)
against ~1.5 s of start-up (1%, measured); trusting a size-and-mtime marker instead saved only that and missed
such damage. A marker still records a file's sha256 once established (with its size and mtime), so that a plain
copy of the cache, whose expected hash is not otherwise known offline, keeps it (downloads.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mvit_cli.store.config import MVIT_DIR


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def marker_path(root: Path, file: Path) -> Path:
    """One marker per file, named after its path inside the root (unique across repos and imports)."""
    try:
        relative = file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # not under the root (cannot happen for our files; be safe)
        relative = file.resolve().as_posix()
    name = relative.replace("/", "__")
    if len(name) > 200:
        name = hashlib.sha256(relative.encode()).hexdigest()
    return root / MVIT_DIR / "verified" / f"{name}.json"


def read_marker(root: Path, file: Path) -> dict | None:
    try:
        return json.loads(marker_path(root, file).read_text())
    except (OSError, ValueError):
        return None


def write_marker(root: Path, file: Path, sha256: str) -> None:
    st = file.stat()
    marker = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "verified_at": time.time()}
    path = marker_path(root, file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: verification just runs again next time


def remove_marker(root: Path, file: Path) -> None:
    try:
        marker_path(root, file).unlink(missing_ok=True)
    except OSError:
        pass  # read-only cache


def verify_file(root: Path, file: Path, expected_sha256: str) -> bool:
    """Whether `file` hashes to `expected_sha256` (read and hashed now, every time: see the module docstring)."""
    actual = sha256_file(file)
    if actual != expected_sha256:
        return False  # the marker stays: for a plain copy it is what says the file is damaged, not unknown
    write_marker(root, file, actual)
    return True


@dataclass
class CachedFile:
    """A file of mvit's in the cache, and whether its bytes are the expected ones."""

    variant: str
    source: str
    kind: str  # "download" or "import" ("exports" in what clear_cache removed: a folder of ONNX exports)
    path: Path  # what to load (for downloads: the snapshot path, usually a link to the blob)
    size: int
    state: str  # "verified" (holds the bytes it must), "unverified" (not hashed) or "corrupt"; "-" for exports
    detail: str  # repo and file for downloads, provenance for imports
    # Whether it is the published file the manifest pins: always for a verified download; for an import, whether
    # the imported original hashed to the published sha256 (None: no published sha256 to compare with).
    published: bool | None = True

    @property
    def provenance(self) -> str:
        """In words, for tables: what this file is, as far as mvit can tell."""
        if self.kind != "import":
            return "published file" if self.kind == "download" else "-"
        return {True: "imported, the published file", False: "imported, NOT the published file",
                None: "imported, unknown (no published sha256 to compare)"}[self.published]
