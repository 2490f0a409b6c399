"""`mvit info`: what a variant is and what it costs, where its weights come from, how accurate it is."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mvit_cli.cli._options import (
    CacheDirOpt,
    InputSizeOpt,
    WeightSource,
    SourceOpt,
    TableOrJson,
    TableOrJsonOpt,
    Variant,
)


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)


def info_command(
    variant: Annotated[Variant, typer.Option("--variant", "-m", help="Model variant: xxs, xs or s.")] = Variant.s,
    source: SourceOpt = None,
    input_size: InputSizeOpt = None,
    output_format: TableOrJsonOpt = TableOrJson.table,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Describe a variant: stage table, exact parameter count, GFLOPs, preprocessing, weight file and
    published accuracy. Never touches the network.

    GFLOPs count 2 x the multiply-accumulates of convolutions, linear layers and the attention matmuls for
    one image at the input size (norms, activations, softmax and resizing excluded; halve for GMACs).
    "cached" says whether the weight file is in the cache (path and size) or would be downloaded on first use.

    JSON keys: variant, name, input_size, parameters, gflops, flops, flops_by_kind, flops_convention, stages
    (stage, blocks, channels, stride, output_size, transformer_dim, transformer_depth, heads, patch, mlp_dim),
    source, preprocessing, weights (repo, revision, file, sha256, sha256_origin, size_bytes, size, format,
    license, url), cached (path, bytes, or null), published (per origin: top1, top5, reference ...).

    Examples:

      mvit info

      mvit info --variant xxs --format json

      mvit info -m s --source apple --input-size 320
    """
    from mvit_cli.cli import output
    from mvit_cli.describe import variant_info

    info = variant_info(variant.value, (source or WeightSource.timm).value, input_size, cache_dir)
    output.Output(output_format.value).emit(info, _print_tables)


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _cached_text(cached: dict[str, Any] | None) -> str:
    """What the cache holds, said as what it is: an imported file is not the published one unless it hashed to it."""
    if cached is None:
        return "no (downloaded on first use)"
    where = f"{cached['path']} ({cached['bytes'] / 1e6:.1f} MB)"
    if cached["kind"] == "download":
        return f"yes, the published file: {where}"
    what = {True: "imported, the published file", False: "imported, NOT the published file above",
            None: "imported, unknown whether it is the published file"}[cached["published"]]
    return f"{what}: {where}"


def _print_tables(info: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    from mvit_cli.cli import output

    console = output.stdout_console()
    height, width = info["input_size"]
    console.print(
        f"[bold]{info['name']}[/bold]: {info['parameters']:,} parameters, {info['gflops']:.2f} GFLOPs per "
        f"{height}x{width} image (2 x multiply-accumulates of convs, linears, attention)",
        highlight=False,
        soft_wrap=True,
    )
    stages = Table(title="Stages (ch: output channels, out: feature map; dim..mlp: the transformer)",
                   title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("stage", "blocks", "ch", "stride", "out", "dim", "depth", "heads", "patch", "mlp"):
        stages.add_column(column, justify="left" if column in ("stage", "blocks") else "right", no_wrap=True)
    for row in info["stages"]:
        stages.add_row(
            row["stage"], row["blocks"], str(row["channels"]), str(row["stride"]),
            "x".join(str(n) for n in row["output_size"]), _dash(row["transformer_dim"]),
            _dash(row["transformer_depth"]), _dash(row["heads"]), _dash(row["patch"]), _dash(row["mlp_dim"]),
        )
    console.print(stages)

    p = info["preprocessing"]
    w = info["weights"]
    details = Table(show_header=False, title="Weights and input", title_justify="left", box=box.SIMPLE_HEAD,
                    pad_edge=False)
    details.add_column(style="bold")
    details.add_column(overflow="fold")
    details.add_row("source", info["source"])
    details.add_row(
        "preprocessing",
        f"resize shorter side to {p['resize_shorter']} ({p['interpolation']}), centre crop {p['crop_size']}, "
        f"RGB in [0, 1], mean {list(p['mean'])} std {list(p['std'])}",
    )
    details.add_row("repo", f"{w['repo']} @ {w['revision']}")
    details.add_row("file", f"{w['file']} ({w['size']}, {w['format']} format, {w['license']})")
    details.add_row("sha256", f"{w['sha256'] or 'checked against the hub LFS sha256 on download'}")
    cached = info["cached"]
    details.add_row("cached", _cached_text(cached))
    console.print(details)

    accuracy = Table(title="Published ImageNet-1k accuracy", title_justify="left", box=box.SIMPLE_HEAD,
                     pad_edge=False)
    for column in ("by", "top-1 %", "top-5 %", "reference"):
        accuracy.add_column(column)
    for origin, values in info["published"].items():
        accuracy.add_row(origin, _dash(values.get("top1")), _dash(values.get("top5")), _dash(values.get("reference")))
    console.print(accuracy)
