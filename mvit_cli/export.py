"""ONNX and TorchScript exports of a model, the export cache, and the onnxruntime backend.

Both formats are traced: MobileViT's forward decides from the input's height and width whether feature maps
must be resized to a multiple of the patch size, so an export is valid for the input size it was made at
(any batch size). `mvit export --input-size` makes one for another size; the onnxruntime backend keeps one
per input size it meets.

Cache. The onnxruntime backend exports once per (weights file, variant, input size, torch / onnx opset /
mvit versions) and keeps the file named by a hash of that key: a changed weights file (size or modification
time), a new torch or a new mvit gives a new export instead of a stale one. Where: for weights of the weight
cache (downloads, imports) in mvit's own `<cache root>/mvit/exports/<origin>/` (hub.py), never inside
huggingface_hub's repo folders, so that `mvit cache clear` removes them with their weights; for a file given
with --weights, in a `mvit-exports/` folder beside it; where that folder is not writable, in the user cache
folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mvit_cli.errors import MvitError, UsageError

if TYPE_CHECKING:
    from mvit_cli.runtime import Pending

ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.14 runs it
EXPORT_FORMATS = ("onnx", "torchscript")
EXPORT_DIR_NAME = "mvit-exports"
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
    """Make sure `path` can be written before any export work, with a one-line error naming it if not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"cannot write {path}: the folder {path.parent} is not writable")


def export_onnx(model: nn.Module, path: Path, height: int = 256, width: int = 256) -> Path:
    """Write `model` (BatchNorm folded) as ONNX for [B, 3, height, width] inputs, B dynamic. Input "images",
    output "logits"."""
    from mvit_cli.runtime import fold_batchnorm

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
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_torchscript(model: nn.Module, path: Path, height: int = 256, width: int = 256) -> Path:
    """Write `model` (BatchNorm folded, traced, frozen) as TorchScript for [B, 3, height, width] inputs.

    Load it with `torch.jit.load(path)`; it takes float32 RGB in [0, 1] and returns logits, any batch size.
    """
    from mvit_cli.runtime import fold_batchnorm

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


class ExportParityError(MvitError):
    """An export that loads back but does not compute what the model computes."""


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
        raise ExportParityError(
            f"the {fmt} export disagrees with the PyTorch model (max |logit difference| {diff:.2e} with "
            f"{checker}, allowed {PARITY_TOLERANCE:.0e}), so {path} was removed; --no-check writes it unchecked"
        )
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


def export_key(weights_path: Path, variant: str, height: int, width: int, fmt: str) -> str:
    """What an export depends on, hashed: the weights file's identity, the variant, the input size, versions."""
    from mvit_cli import __version__

    weights_path = Path(weights_path).resolve()
    stat = weights_path.stat()
    try:
        import onnx  # noqa: F401 - only its version matters

        onnx_version = onnx.__version__
    except ImportError:
        onnx_version = None
    identity = {
        "weights": [str(weights_path), stat.st_size, stat.st_mtime_ns],
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


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mvit" / "exports"


def export_folder(weights_path: Path) -> Path | None:
    """Where exports of `weights_path` are cached: mvit's exports folder in the weight cache for a cached file,
    else `mvit-exports/` beside it; the user cache folder if that is not writable; None if nothing is."""
    from mvit_cli import hub

    preferred = hub.cache_exports_folder(weights_path) or Path(weights_path).parent / EXPORT_DIR_NAME
    for folder in (preferred, user_cache_dir()):
        if _writable_dir(folder):
            return folder
    return None


def cached_export(model: nn.Module, weights_path: Path | None, height: int, width: int, fmt: str = "onnx",
                  export_dir: Path | None = None, scratch_dir: Path | None = None) -> tuple[Path, bool]:
    """(path, reused): the cached export of `model` for this input size, made now if missing.

    The cache folder is `export_dir` if given, else the one `export_folder` picks for the weights. Without
    `weights_path` there is no file identity to key a cache on, and where no folder is writable there is no
    cache: the export is made afresh in `scratch_dir` (the caller's temporary folder).
    """
    variant = _variant_of(model)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    folder = None
    if weights_path is not None:
        folder = Path(export_dir) if export_dir else export_folder(weights_path)
    if folder is None:
        if scratch_dir is None:
            raise ValueError("no cache folder and no scratch folder to export into")
        path = Path(scratch_dir) / f"mobilevit_{variant}-{height}x{width}{suffix}"
    else:
        key = export_key(weights_path, variant, height, width, fmt)  # type: ignore[arg-type]
        path = folder / f"{Path(weights_path).stem}-{variant}-{height}x{width}-{key}{suffix}"  # type: ignore[arg-type]
        if path.is_file() and path.stat().st_size > 0:
            return path, True
    (export_onnx if fmt == "onnx" else export_torchscript)(model, path, height, width)
    return path, False


# ----------------------------------------------------------------------------------------------- backend


class OnnxRuntimeRunner:
    """onnxruntime on the CPU: one session per input size; a batch is split one image per core like the torch
    path (single-threaded sessions run concurrently), a single image runs on all cores."""

    backend = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, model: nn.Module, weights_path: Path | None = None, export_dir: Path | None = None,
                 threads: int = 1):
        from mvit_cli.runtime import ORT_MICRO_BATCH, _PerCorePool, tune_allocator

        self.ort = import_onnxruntime()
        require_onnx("the onnxruntime backend (it runs an ONNX export of the model)")
        self.model = model.eval()
        self.weights_path = Path(weights_path) if weights_path is not None else None
        self.export_dir = export_dir
        self.threads = max(1, threads)
        self.micro_batch = ORT_MICRO_BATCH
        self._sessions: dict[tuple[int, int, int], Any] = {}
        self._lock = threading.Lock()
        self._pool = _PerCorePool(self.threads) if self.threads > 1 else None
        self.exports: dict[tuple[int, int], tuple[Path, bool]] = {}  # input size -> (file, reused from cache)
        # Exports that cannot be cached (no weights file, nothing writable) live as long as this runner.
        self._scratch = tempfile.TemporaryDirectory(prefix="mvit-exports-")
        tune_allocator()
        self.description = (
            f"onnxruntime {self.ort.__version__}, ONNX opset {ONNX_OPSET}, BatchNorm folded, "
            f"{self.threads} core(s), {self.micro_batch} image(s) per core at a time"
        )

    def _session(self, height: int, width: int, threads: int) -> Any:
        key = (height, width, threads)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                if (height, width) not in self.exports:
                    self.exports[(height, width)] = cached_export(
                        self.model, self.weights_path, height, width, "onnx", self.export_dir, Path(self._scratch.name)
                    )
                options = self.ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.log_severity_level = 3  # errors only: its warnings are not the user's business
                path = self.exports[(height, width)][0]
                session = self.ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                self._sessions[key] = session
        return session

    def _run(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        session = self._session(x.shape[2], x.shape[3], threads)
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.submit(batch).result()

    def submit(self, batch: torch.Tensor) -> Pending:
        """`runtime.Runner.submit`: a batch of several chunks is computed in the background."""
        from mvit_cli.runtime import Pending  # at call time: runtime imports this module lazily

        x = batch.detach().to("cpu", torch.float32).contiguous()
        n = x.shape[0]
        if n == 0:
            return Pending.done(torch.empty(0, getattr(getattr(self.model, "cfg", None), "num_classes", 1000)))
        if self._pool is None or n <= self.micro_batch:
            return Pending.done(self._run(x, self.threads))
        return self._pool.submit(lambda chunk: self._run(chunk.contiguous(), 1), list(x.split(self.micro_batch)), n)
