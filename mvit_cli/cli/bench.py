"""`mvit bench`: latency and images/s of a variant on this machine, as classify/eval run it."""

from __future__ import annotations

from typing import Annotated

import typer

from mvit_cli.cli._options import (
    Backend,
    BackendOpt,
    BatchSizeOpt,
    CacheDirOpt,
    Device,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    InputSizeOpt,
    SourceOpt,
    TableOrJson,
    TableOrJsonOpt,
    VariantOpt,
    WeightsOpt,
)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)


def bench_command(
    variant: VariantOpt = None,
    batch_size: BatchSizeOpt = None,
    backend: BackendOpt = Backend.torch,
    dtype: DtypeOpt = Dtype.float32,
    device: DeviceOpt = Device.auto,
    weights: WeightsOpt = None,
    source: SourceOpt = None,
    input_size: InputSizeOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls after the first.")] = 3,
    repetitions: Annotated[int, typer.Option("--repetitions", "-n", min=1, help="Timed calls, at least.")] = 10,
    min_seconds: Annotated[
        float, typer.Option("--min-seconds", min=0.0, help="Keep timing until this much time has passed.")
    ] = 2.0,
    output_format: TableOrJsonOpt = TableOrJson.table,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Measure how fast a variant runs here: setup time, latency per batch and images per second.

    Runs the model exactly as classify and eval do (same backend, device, batch splitting), on synthetic
    images. Weights: --weights, else the cached ones, else random weights drawn to behave like trained ones
    (the report says "random"); bench never downloads. The first call (tracing / ONNX export) is timed
    apart as setup; then --warmup untimed calls; then at least --repetitions timed calls and --min-seconds.
    Latency and images/s are medians with their 10th-90th percentile spread; "background load" is how many
    cores other processes kept busy meanwhile (Linux), so a noisy measurement shows itself.

    JSON keys: variant, batch_size, backend, device, input_size, weights, runner, dtype, threads, setup_s, warmup,
    repetitions (calls timed), min_repetitions, min_seconds, latency_ms (median per batch), latency_ms_p10/p90,
    ms_per_image, images_per_second (median), images_per_second_p10/p90, background_load, versions.

    Examples:

      mvit bench --variant xxs

      mvit bench --variant s --batch-size 1 --backend onnxruntime

      mvit bench -m xs -b 32 --format json > xs-b32.json

      mvit bench --weights mobilevit_s.safetensors --input-size 320
    """
    from mvit_cli import benchmark
    from mvit_cli.cli import output

    result = benchmark.bench(
        variant=variant.value if variant else None,
        batch_size=batch_size,
        backend=backend.value,
        device=device.value,
        weights=weights,
        source=source.value if source else None,
        input_size=input_size,
        warmup=warmup,
        repetitions=repetitions,
        min_seconds=min_seconds,
        cache_dir=cache_dir,
        dtype=dtype.value,
    )
    output.Output(output_format.value).emit(result.to_dict(), lambda data: _print_table(result))


def _print_table(result) -> None:
    from rich.table import Table

    from mvit_cli import manifest
    from mvit_cli.cli import output

    table = Table(title=f"mvit bench: {manifest.title(result.variant)}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    weights = result.weights
    if weights == "random":
        weights = "random (none given or cached; speed is that of real weights, predictions are not)"
    load = "n/a" if result.background_load is None else f"{result.background_load:.2f} cores"
    rows = [
        ("backend", f"{result.backend} on {result.device}: {result.runner}"),
        ("precision", result.dtype),
        *([("torch threads", str(result.threads))] if result.backend == "torch" else []),
        ("weights", weights),
        ("batch", f"{result.batch_size} x 3 x {result.input_size[0]} x {result.input_size[1]}"),
        ("setup", f"{result.setup_s:.2f} s (prepare + first call)"),
        ("latency", f"{result.latency_ms:.2f} ms per batch "
                    f"(p10-p90 {result.latency_ms_p10:.2f}-{result.latency_ms_p90:.2f})"),
        ("per image", f"{result.ms_per_image:.2f} ms"),
        (
            "throughput",
            f"{result.images_per_second:.1f} images/s (p10-p90 "
            f"{result.images_per_second_p10:.1f}-{result.images_per_second_p90:.1f})",
        ),
        ("timed calls", f"{result.repetitions} (at least {result.min_repetitions} and {result.min_seconds:g} s) after "
                        f"{result.warmup} warm-up"),
        ("background load", load),
    ]
    for key, value in rows:
        table.add_row(key, value)
    output.stdout_console().print(table)
