"""Where the weight store lives, and whether it may use the network.

The root is, first found: `cache_dir` (`--cache-dir`, `MVIT_CACHE`), `HF_HUB_CACHE`, `$HF_HOME/hub`,
`$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub` (huggingface_hub's own rule, read when mvit runs,
not when huggingface_hub was imported).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mvit_cli.errors import UsageError

DEFAULT_ENDPOINT = "https://huggingface.co"
MVIT_DIR = "mvit"  # mvit's own folder inside the cache root
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "on", "yes", "true"}


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


def describe_root(cache_dir: Path | None = None) -> str:
    """Where the cache root came from, for messages: "--cache-dir / MVIT_CACHE", "HF_HUB_CACHE", ..."""
    if cache_dir:
        return "--cache-dir / MVIT_CACHE"
    for name in ("MVIT_CACHE", "HF_HUB_CACHE", "HF_HOME"):
        if os.environ.get(name):
            return name
    return "default"


class CacheDirError(UsageError):
    """The configured weight cache is not a usable folder."""

    def __init__(self, root: Path, origin: str, reason: str):
        super().__init__(f"the weight cache {root} (set by {origin}) {reason}; point it at a folder")
        self.root, self.origin, self.reason = root, origin, reason


def checked_root(cache_dir: Path | str | None = None) -> Path:
    """`cache_root`, refused when it exists and is not a folder (e.g. MVIT_CACHE set to a file)."""
    root = cache_root(cache_dir)
    if root.exists() and not root.is_dir():
        raise CacheDirError(root, describe_root(cache_dir), "is a file, not a folder")
    return root
