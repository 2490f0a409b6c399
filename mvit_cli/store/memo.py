"""Which file serves (variant, source, cache root), remembered for the life of the process."""

from __future__ import annotations

from pathlib import Path

# (variant, source, cache root) -> verified path.
_resolved: dict[tuple[str, str, str], Path] = {}


def remembered(variant: str, source: str, root: Path) -> Path | None:
    path = _resolved.get((variant, source, str(root)))
    return path if path is not None and path.exists() else None


def remember(variant: str, source: str, root: Path, path: Path) -> None:
    _resolved[(variant, source, str(root))] = path


def forget(root: Path | None = None, variant: str | None = None, source: str | None = None) -> None:
    for key in list(_resolved):
        if root in (None, Path(key[2])) and variant in (None, key[0]) and source in (None, key[1]):
            del _resolved[key]
