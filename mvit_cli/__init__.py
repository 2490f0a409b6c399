"""mvit: classify images with MobileViT v1 (Mehta & Rastegari, ICLR 2022), from the shell or from Python.

    from mvit_cli import load
    results = load("xxs").classify(["cat.jpg"])

The Python API lives in `mvit_cli.api`; its names are importable from here. They are loaded on first use, so
that `import mvit_cli` (and `mvit --help`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Classifier", "Embedding", "Prediction", "Result", "__version__", "load"]

if TYPE_CHECKING:
    from mvit_cli.api import Classifier, Embedding, Prediction, Result, load


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Embedding", "Prediction", "Result", "load"):
        from mvit_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'mvit_cli' has no attribute {name!r}")
