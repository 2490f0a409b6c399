"""Everything `mvit info` reports about a variant, gathered without touching the network.

Architecture and costs come from `costs`, the weight file, its preprocessing and published accuracy from the
manifest, and what the cache holds for it from `store.cached_entry` (hashed now).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from mvit_cli import costs, manifest, store

def variant_info(variant: str, source: str = "timm", input_size: int | None = None,
                 cache_dir: Path | None = None) -> dict[str, Any]:
    """One JSON-ready dict: anatomy (stages, parameters, FLOPs), preprocessing, weights, cache, accuracy."""
    entry = manifest.entry(variant, source)  # validates variant and source
    preprocessing = manifest.preprocessing(source)
    size = input_size or preprocessing.crop_size
    anatomy = costs.anatomy(variant, (size, size)).to_dict()
    cached = store.cached_entry(variant, source, cache_dir=cache_dir)
    return {
        "variant": variant,
        "name": manifest.title(variant),
        **anatomy,
        "source": source,
        "preprocessing": asdict(preprocessing),
        "weights": {
            "repo": entry.repo_id,
            "revision": entry.revision,
            "file": entry.filename,
            "sha256": entry.sha256,
            "sha256_origin": entry.sha256_origin,
            "size_bytes": entry.size,
            "size": entry.size_approx,
            "format": entry.format,
            "license": entry.license,
            "url": entry.page_url,
        },
        # What the cache holds for it, and whether that is the file described above (an import may not be).
        "cached": None if cached is None else {"path": str(cached.path), "bytes": cached.size, "kind": cached.kind,
                                               "published": cached.published},
        "published": manifest.published(variant),
    }
