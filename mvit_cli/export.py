"""ONNX and TorchScript exports of a model, checked against it, and the keyed export cache the onnxruntime backend
runs from.

Both formats are traced: MobileViT's forward decides from the input's height and width whether feature maps
must be resized to a multiple of the patch size, so an export is valid for the input size it was made at
(any batch size). `mvit export --input-size` makes one for another size; the onnxruntime backend keeps one
per input size it meets.

Cache. The onnxruntime backend exports once per (weights' sha256, variant, input size, torch / onnx opset /
mvit versions) and keeps the file named by a hash of that key: other weights, a new torch or a new mvit give a
new export instead of a stale one. Where the files live is the weight store's decision (`store/exports.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvit_cli.errors import ExportParityError, UsageError
from mvit_cli.folding import fold_batchnorm
from mvit_cli.safe_output import check_output

ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.14 runs it
EXPORT_FORMATS = ("onnx", "torchscript")
_EXPORT_LAYOUT_VERSION = 1  # bump when the exported graph changes for the same weights and versions
INSTALL_HINT = "install it with: pip install 'mvit-cli[onnx]'"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"the onnxruntime backend needs the onnxruntime package; {INSTALL_HINT}") from None
    return onnxruntime


def require_onnx(purpose: str) -> None:
    """torch's ONNX exporter needs the `onnx` package (it raises its own error deep inside otherwise)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError(f"{purpose} needs the onnx package; {INSTALL_HINT}") from None


def _variant_of(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "name", "model")


def _example(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------- exporting


def _prepare_target(path: Path) -> None:
    """Make sure `path` can be written, and is a new path or a regular file, before any export work: the export is
    renamed over it at the end, which would replace a device node such as /dev/null with a regular file."""
    check_output(path, "the export target", refuse_images=False)


def export_onnx(model: nn.Module, path: Path, height: int = 256, width: int = 256, mode: int | None = None) -> Path:
    """Write `model` (BatchNorm folded) as ONNX for [B, 3, height, width] inputs, B dynamic. Input "images",
    output "logits". `mode`: the new file's permissions (default: the umask's)."""
    require_onnx("ONNX export")
    path = Path(path)
    _prepare_target(path)
    folded = fold_batchnorm(model)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    kwargs: dict[str, Any] = {}
    if "dynamo" in torch.onnx.export.__code__.co_varnames:
        kwargs["dynamo"] = False  # the TorchScript-based exporter: no onnxscript needed, 10x faster here
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: the shape decisions are specialised on purpose
            torch.onnx.export(
                folded,
                (_example(1, height, width),),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                **kwargs,
            )
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_torchscript(model: nn.Module, path: Path, height: int = 256, width: int = 256,
                       mode: int | None = None) -> Path:
    """Write `model` (BatchNorm folded, traced, frozen) as TorchScript for [B, 3, height, width] inputs.

    Load it with `torch.jit.load(path)`; it takes float32 RGB in [0, 1] and returns logits, any batch size.
    """
    path = Path(path)
    _prepare_target(path)
    folded = fold_batchnorm(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # Traced at batch 2 so that nothing in the graph specialises on a batch of one.
        traced = torch.jit.freeze(torch.jit.trace(folded, _example(2, height, width), check_trace=False))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 marks TorchScript serialisation deprecated in favour of torch.export; the format
            # still loads everywhere TorchScript does, which is what this export is for.
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                torch.jit.save(traced, str(tmp))
            except RuntimeError as exc:  # torch reports I/O failures as RuntimeError ("open file failed")
                raise UsageError(f"cannot write {path}: {' '.join(str(exc).split())[:160]}") from None
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class ExportResult:
    path: Path
    format: str
    variant: str
    input_size: tuple[int, int]
    bytes: int
    max_abs_diff: float | None  # against the plain model on random images; None when it could not be checked
    checked_with: str | None  # "onnxruntime" or "torch.jit.load"


# Largest |logit difference| an export may have from the PyTorch model: the bound every mvit path is held to.
PARITY_TOLERANCE = 1e-4


def export(model: nn.Module, fmt: str, path: Path, height: int = 256, width: int = 256,
           verify: bool = True) -> ExportResult:
    """Export `model` in `fmt` ("onnx" or "torchscript") to `path`, then reload it and measure its parity.

    An export whose logits differ from the model's by more than PARITY_TOLERANCE (or are NaN) is deleted and
    raises ExportParityError: a wrong file left where a pipeline expects a model would be used silently.
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    if fmt == "onnx":
        export_onnx(model, path, height, width)
    else:
        export_torchscript(model, path, height, width)
    diff, checker = (max_abs_diff(model, fmt, path, height, width) if verify else (None, None))
    if diff is not None and not diff <= PARITY_TOLERANCE:  # `not <=`: NaN fails too
        path.unlink(missing_ok=True)
        raise ExportParityError(fmt, path, diff, checker, PARITY_TOLERANCE)
    return ExportResult(path, fmt, _variant_of(model), (height, width), path.stat().st_size, diff, checker)


def max_abs_diff(model: nn.Module, fmt: str, path: Path, height: int, width: int) -> tuple[float | None, str | None]:
    """Largest |logit difference| between the exported file and `model` on two random images."""
    x = _example(2, height, width)
    with torch.no_grad():
        reference = model.eval()(x)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path))
        with torch.no_grad():
            return float((loaded(x) - reference).abs().max()), "torch.jit.load"
    try:
        ort = import_onnxruntime()
    except UsageError:
        return None, None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    return float((out - reference).abs().max()), "onnxruntime"


# ----------------------------------------------------------------------------------------------- the cache


def export_key(weights_sha256: str, variant: str, height: int, width: int, fmt: str) -> str:
    """What an export depends on, hashed: the weights' bytes (their sha256), the variant, the input size and the
    versions that shape the graph. Keyed on content, not on the file's path, size and mtime: a checkpoint replaced
    by another of the same size with its timestamp kept (tar and zip extraction do that) must not be served by
    the old weights' export."""
    from mvit_cli import __version__

    try:
        import onnx  # noqa: F401 - only its version matters

        onnx_version = onnx.__version__
    except ImportError:
        onnx_version = None
    identity = {
        "weights_sha256": weights_sha256,
        "variant": variant,
        "input": [height, width],
        "format": fmt,
        "opset": ONNX_OPSET,
        "torch": torch.__version__,
        "onnx": onnx_version,
        "mvit": __version__,
        "layout": _EXPORT_LAYOUT_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def cached_export(model: nn.Module, height: int, width: int, fmt: str = "onnx", *, folder: Path | None,
                  weights_sha256: str | None, stem: str = "model", scratch_dir: Path | None = None,
                  mode: int | None = None) -> tuple[Path, bool]:
    """(path, reused): the export of `model` for this input size in `folder`, made now if missing.

    Without a folder or without the weights' sha256 there is nothing to key a cache on: the export is made afresh
    in `scratch_dir` (the caller's temporary folder). `mode`: file permissions for a new export (those of the
    weights it was made from, so that an export of a private checkpoint stays private).
    """
    variant = _variant_of(model)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    if folder is None or weights_sha256 is None:
        if scratch_dir is None:
            raise ValueError("no cache folder and no scratch folder to export into")
        path = Path(scratch_dir) / f"mobilevit_{variant}-{height}x{width}{suffix}"
    else:
        key = export_key(weights_sha256, variant, height, width, fmt)
        path = Path(folder) / f"{stem}-{variant}-{height}x{width}-{key}{suffix}"
        if path.is_file() and path.stat().st_size > 0:
            return path, True
    (export_onnx if fmt == "onnx" else export_torchscript)(model, path, height, width, mode=mode)
    return path, False
