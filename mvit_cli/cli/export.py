"""`mvit export`: the model as an ONNX or TorchScript file, checked against the PyTorch model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mvit_cli.cli._options import (
    CacheDirOpt,
    InputSizeOpt,
    OfflineOpt,
    SourceOpt,
    VariantOpt,
    WeightsOpt,
)


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


def export_command(
    variant: VariantOpt = None,
    export_format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="onnx (opset 17) or torchscript (torch.jit.load).")
    ] = ExportFormat.onnx,
    output_file: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", dir_okay=False, help="File to write \\[default: mobilevit_<variant>.onnx or .pt here]."
        ),
    ] = None,
    weights: WeightsOpt = None,
    source: SourceOpt = None,
    input_size: InputSizeOpt = 256,
    no_check: Annotated[bool, typer.Option("--no-check",
                                           help="Skip reloading the file to compare its logits.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (--format names the file's format here).")
    ] = False,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Export a variant, weights included, as ONNX or TorchScript, for use outside mvit.

    The file takes float32 RGB images in [0, 1] (resized and centre-cropped as `mvit info` shows; MobileViT
    uses no mean/std normalisation), shape [B, 3, S, S] with S = --input-size and any batch size B (ONNX:
    input "images", output "logits"). BatchNorm is folded into the convolutions. An export is specialised to
    its input size (MobileViT resizes feature maps whose side is not a multiple of the patch size, decided
    from the shape): export once per size you need.

    After writing, the file is loaded back (onnxruntime for ONNX when installed, torch.jit.load for
    TorchScript) and its logits are compared with the PyTorch model's; the largest difference is printed.
    Above 1e-4 (or NaN) the file is removed and the command fails with exit code 1.
    Weights as for classify: --weights, or the cache (downloaded when missing unless --offline).

    Examples:

      mvit export --variant xxs --format onnx

      mvit export -m s -f torchscript -o mobilevit_s.pt

      mvit export --weights my_finetune.safetensors --input-size 320 -o my_320.onnx
    """
    from dataclasses import asdict

    from mvit_cli import export, loading, manifest
    from mvit_cli.cli import output
    from mvit_cli.safe_output import check_output, identity

    if output_file is not None:  # a wrong target is refused before the weights are loaded
        check_output(output_file, "--output", {identity(weights)} if weights else (), "the weights file")
    model = loading.load_model(
        variant.value if variant else None,
        source.value if source else None,
        weights,
        "cpu",
        cache_dir=cache_dir,
        offline=offline,
        progress=output.progress_enabled(), warn=output.warn,
    )
    fmt = export_format.value
    path = output_file or Path(f"mobilevit_{model.variant}{SUFFIX[fmt]}")
    check_output(path, "--output", {identity(model.weights_path)}, "the weights file")
    result = export.export(model.module, fmt, path, input_size, input_size, verify=not no_check)
    if result.max_abs_diff is None and not no_check:
        output.warn("not checked: onnxruntime is not installed (pip install 'mvit-cli[onnx]')")

    def render(data: dict) -> None:
        out.line(f"wrote {result.path} ({result.bytes / 1e6:.1f} MB): {manifest.title(model.variant)} as {fmt}, "
                 f"input [B, 3, {input_size}, {input_size}] float32 RGB in [0, 1]")
        if result.max_abs_diff is not None:
            out.line(f"checked with {result.checked_with}: max |logit difference| vs PyTorch "
                     f"{result.max_abs_diff:.2e}")

    out = output.Output("json" if as_json else "table")
    out.emit({**asdict(result), "path": str(result.path), "input_size": list(result.input_size),
              "weights": str(model.weights_path), "source": model.source}, render)
