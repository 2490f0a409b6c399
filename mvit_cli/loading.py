"""One call from "variant / source / weights file" to a model ready to run, with the matching preprocessing.

This is the glue every model-running command shares (classify, eval, bench, export): it picks the weight
file (cache or `--weights`), loads it in whatever format it is, picks the preprocessing protocol, and asks
`runners` for the fastest exact way to run it. Loaded models are memoised per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mvit_cli import checkpoints, manifest, runners, store
from mvit_cli.preprocess import Preprocessing


@dataclass
class LoadedModel:
    run: Callable[[torch.Tensor], torch.Tensor]  # [B, 3, H, W] float32 -> [B, 1000] float32 logits on the CPU
    module: torch.nn.Module  # the plain (unoptimised) MobileViT, on the CPU
    variant: str
    source: str  # weight source whose preprocessing protocol applies: "timm" or "apple"
    checkpoint_format: str  # the format the file was detected as
    preprocessing: Preprocessing
    device: torch.device
    backend: str
    weights_path: Path
    dtype: str = "float32"  # the precision the model runs in ("float32", "bfloat16", "float16")


_loaded: dict[tuple, LoadedModel] = {}


def _memo_key(variant, source, weights, device, backend, cache_dir, offline, trace, dtype) -> tuple:
    """What decides which model `load_model` returns: the weight file's identity, not just its name."""
    if weights is not None:
        stat = Path(weights).stat()
        origin: tuple = ("file", str(Path(weights).resolve()), stat.st_size, stat.st_mtime_ns)
    else:
        # The cache folder as resolved now (HF_HOME / MVIT_CACHE may change between calls in one process).
        origin = ("cache", str(store.cache_root(cache_dir)), offline)
    return (variant, source, device, backend, trace, dtype, *origin)


def find_checkpoint(variant: str | None = None, source: str | None = None, weights: Path | None = None,
                    cache_dir: Path | None = None, offline: bool = False, progress: bool = True,
                    warn: Callable[[str], None] | None = None) -> tuple[checkpoints.Checkpoint, Path, str]:
    """(checkpoint, its file, the weight source whose protocol applies): `weights` (its variant read from the file
    when not given; the protocol of its format unless `source` says otherwise), or the manifest's file for
    (variant, source) from the cache, downloaded if needed and allowed. What every model-running command loads."""
    if weights is not None:
        checkpoint = checkpoints.load_checkpoint(weights, variant=variant)
        path = Path(weights)
    else:
        variant = variant or manifest.DEFAULT_VARIANT
        path = store.resolve_weights(variant, source or manifest.DEFAULT_SOURCE, cache_dir=cache_dir,
                                     offline=offline, progress=progress, warn=warn)
        checkpoint = checkpoints.load_checkpoint(path, variant=variant)
        source = source or manifest.DEFAULT_SOURCE
    return checkpoint, path, source or manifest.source_for(checkpoint.format, checkpoint.source)


def load_model(
    variant: str | None = None,
    source: str | None = None,
    weights: Path | None = None,
    device: str = "auto",
    backend: str = "torch",
    cache_dir: Path | None = None,
    offline: bool = False,
    progress: bool = True,
    expected_images: int | None = None,
    warn: Callable[[str], None] | None = None,
    dtype: str = "float32",
) -> LoadedModel:
    """Load (download if needed, verify, convert) the weights and prepare the model. Memoised per process.

    With `weights`, the variant is read from the checkpoint when not given, and the preprocessing protocol is
    that of the detected checkpoint format unless `source` says otherwise. Without, the manifest's file for
    (variant, source) is taken from the cache or downloaded. `expected_images`: how many images the caller
    will run, when it knows (a small job skips tracing, see `runners.TRACE_MIN_IMAGES`). `warn` hears of what
    happens in the weight store on the way (`store.resolve_weights`). `dtype`: "float32" (default), "bfloat16",
    "float16", or "auto" (the best the device runs natively); one the device does not run natively is refused
    before anything is loaded (`runners.resolve_dtype`).
    """
    target = runners.resolve_device(device)
    dtype = runners.resolve_dtype(dtype, target, backend)
    key = _memo_key(variant, source, weights, device, backend, cache_dir, offline,
                    runners.worth_tracing(expected_images), dtype)
    if key in _loaded:
        return _loaded[key]
    checkpoint, path, source = find_checkpoint(variant, source, weights, cache_dir, offline, progress, warn)

    loaded = LoadedModel(
        run=runners.prepare(checkpoint.model, target, backend, weights_path=path, expected_images=expected_images,
                            dtype=dtype),
        module=checkpoint.model,
        variant=checkpoint.variant,
        source=source,
        checkpoint_format=checkpoint.format,
        preprocessing=manifest.preprocessing(source),
        device=target,
        backend=backend,
        weights_path=path,
        dtype=dtype,
    )
    _loaded[key] = loaded
    return loaded
