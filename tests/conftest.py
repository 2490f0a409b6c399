"""Every test runs with its caches in a temporary folder, never in the user's home.

Set at import time, before any test module imports huggingface_hub (which reads HF_HOME when imported):
downloads, imports, verification markers and ONNX exports of weights without a folder of their own all land
under one session folder that is removed at the end. Tests that need their own cache set it themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from browser import browser  # noqa: F401 - the headless-browser fixture, for every test module

_SESSION_CACHE = tempfile.mkdtemp(prefix="mvit-tests-")
for name, sub in (("HF_HOME", "hf"), ("XDG_CACHE_HOME", "xdg")):
    os.environ[name] = os.path.join(_SESSION_CACHE, sub)
# A developer's own settings must not redirect tests to a real cache, hub or debug mode.
for name in ("HF_HUB_CACHE", "MVIT_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "MVIT_DEBUG"):
    os.environ.pop(name, None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """An empty weight cache of this test's own, no network (HF_HUB_OFFLINE), and not under torchrun."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@dataclass(frozen=True)
class RandomCheckpoint:
    """A random-weight MobileViT-XXS saved as mvit's canonical safetensors, and the model it holds."""

    path: Path
    model: torch.nn.Module


def write_checkpoint(model: torch.nn.Module, path: Path, variant: str = "xxs", source: str = "timm") -> Path:
    """`model` saved as mvit's canonical safetensors (what `mvit import` stores)."""
    import safetensors.torch

    safetensors.torch.save_file(model.state_dict(), str(path),
                                metadata={"format": "mvit", "variant": variant, "source": source})
    return path


@pytest.fixture(scope="session")
def xxs_checkpoint(tmp_path_factory) -> RandomCheckpoint:
    """One random XXS checkpoint for the whole session (realistic activations: mvit_cli.random_weights)."""
    from mvit_cli.random_weights import random_model

    model = random_model("xxs", seed=1)
    return RandomCheckpoint(write_checkpoint(model, tmp_path_factory.mktemp("weights") / "xxs-random.safetensors"),
                            model)
