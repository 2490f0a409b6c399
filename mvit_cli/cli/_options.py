"""Option aliases shared by several commands, so each option is spelled and documented once."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mvit_cli.manifest import SOURCES, VARIANTS

# The choices come from the manifest, the one list of variants and weight sources (model.VARIANTS has the same
# keys: tests/test_cli_basics.py checks it), so a variant or source added there appears here by itself.
Variant = Enum("Variant", {name: name for name in VARIANTS}, type=str)
WeightSource = Enum("WeightSource", {name: name for name in SOURCES}, type=str)
# `download` and `cache clear` also take "all".
VariantOrAll = Enum("VariantOrAll", {**{name: name for name in VARIANTS}, "all": "all"}, type=str)
WeightSourceOrAll = Enum("WeightSourceOrAll", {**{name: name for name in SOURCES}, "all": "all"}, type=str)


class TableOrJson(str, Enum):
    table = "table"
    json = "json"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


VariantOpt = Annotated[
    Optional[Variant],
    typer.Option("--variant", "-m", help="Model variant: xxs, xs or s \\[default: s, or the one in --weights]."),
]
SourceOpt = Annotated[
    Optional[WeightSource],
    typer.Option(
        "--source",
        help="Weight source: timm (default) or apple. Also picks the preprocessing protocol; with --weights it "
        "overrides the protocol of the detected checkpoint format.",
    ),
]
WeightsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--weights",
        "-w",
        help="Checkpoint file (timm, transformers or ml-cvnets format; .safetensors, .bin or .pt). Bypasses the cache.",
        exists=True,
        dir_okay=False,
        resolve_path=True,
    ),
]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run the model: auto, cpu, cuda or mps.")]
CacheDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        envvar="MVIT_CACHE",  # shown by the help as [env var: MVIT_CACHE]
        metavar="DIR",
        help="Weight cache folder \\[default: the Hugging Face cache: HF_HUB_CACHE, or HF_HOME/hub].",
    ),
]
OfflineOpt = Annotated[
    bool,
    typer.Option("--offline", help="Use only cached weights; never touch the network (also: HF_HUB_OFFLINE=1)."),
]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option("--workers", "-j", min=0, help="Image-decoding threads (0: decode between model calls)."),
]
InputSizeOpt = Annotated[
    Optional[int],
    typer.Option("--input-size", min=32, max=2048, metavar="PIXELS", show_default=False,
                 help="Square input side in pixels \\[default: 256, the weights' crop size]."),
]


def _batch_size_default() -> str:
    from mvit_cli.runners.devices import DEFAULT_BATCH_SIZE

    devices_by_size: dict[int, list[str]] = {}
    for device, size in DEFAULT_BATCH_SIZE.items():
        devices_by_size.setdefault(size, []).append(device.upper())
    return ", ".join(f"{size} on {' and '.join(devices)}" for size, devices in devices_by_size.items())


def _workers_default() -> str:
    from mvit_cli.runners.tuning import MAX_DEFAULT_WORKERS, default_workers

    return f"{default_workers()} here: one per core beyond the first, at most {MAX_DEFAULT_WORKERS}"


# Defaults that live beside the runners (which import torch) or depend on this machine: the help shows them as
# "[default: ...]", computed when a help page is shown (cli/_help.py), not when the CLI is imported.
DEFAULTS_AT_HELP_TIME = {"--batch-size": _batch_size_default, "--workers": _workers_default}


class Backend(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"


BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        help="How the model runs on the CPU: torch (default) or onnxruntime (optional: pip install "
        "'mvit-cli\\[onnx]'; its ONNX export is made once and cached).",
    ),
]
TableOrJsonOpt = Annotated[
    TableOrJson, typer.Option("--format", "-f", help="table (for people) or json (for programs).")
]
FilesFromOpt = Annotated[
    Optional[Path],
    typer.Option("--files-from", "-T", metavar="FILE", show_default=False,
                 help="Also take inputs from this list: one path or URL per line (blank lines and # comments skipped), "
                 "read as the run goes; - reads it from stdin."),
]
MaxDownloadOpt = Annotated[
    float,
    typer.Option("--max-download-mb", min=0.001, metavar="MB",
                 help="Size limit for one image fetched from a URL, in MB."),
]
DownloadTimeoutOpt = Annotated[
    float,
    typer.Option("--download-timeout", min=0.1, metavar="SECONDS",
                 help="Seconds a URL's server may stay silent before that download fails (connecting has 10)."),
]


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    auto = "auto"


DtypeOpt = Annotated[
    Dtype,
    typer.Option("--dtype", help="Precision of the model: float32 (exact; the published numbers), bfloat16 or "
                 "float16 where the device runs it natively (faster, logits within ~2% and a few top-1 changes on "
                 "close calls), or auto: the fastest native one."),
]
