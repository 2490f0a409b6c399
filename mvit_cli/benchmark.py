"""`mvit bench`: how fast a variant runs here, measured the way the classify/eval pipeline runs it.

One measurement: build the runner (`runners.prepare`), time its first call (tracing / export happen there:
that plus preparing is the setup time), run `warmup` more calls, then time calls until both `repetitions`
calls and `min_seconds` have passed. Reported: median latency per batch with its 10th-90th percentile
spread, and images/s from each call's latency (median and the same percentiles).

Without a weights file (given or cached) the model gets random weights drawn to behave like trained ones
(`random_weights.py`): default initialisation produces denormal floats deep in the network, which make some
CPUs several times slower and would misreport the speed of real weights.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from mvit_cli.model import MobileViT
from mvit_cli.random_weights import random_model, structured_images


@dataclass
class BenchResult:
    variant: str
    batch_size: int
    backend: str
    device: str
    input_size: list[int]  # [height, width]
    weights: str  # the weights file, or "random"
    runner: str  # how the model runs (the runner's description)
    dtype: str  # the precision it runs in
    threads: int  # torch intra-op threads of this process
    setup_s: float  # preparing the runner + its first call (tracing / export / session)
    warmup: int
    repetitions: int  # calls timed (at least `min_repetitions`, more until `min_seconds` had passed)
    min_repetitions: int
    min_seconds: float
    latency_ms: float  # median per batch
    latency_ms_p10: float
    latency_ms_p90: float
    ms_per_image: float  # median latency / batch size
    images_per_second: float  # median
    images_per_second_p10: float
    images_per_second_p90: float
    background_load: float | None  # cores busy with other processes during the timed calls (Linux), else None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- weights


def example_batch(batch_size: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: smooth colour fields plus a little noise, closer to photos than white noise."""
    assert height == width, "square inputs only"
    return structured_images(batch_size, height, seed=seed)


# ----------------------------------------------------------------------------------------------- timing


class _LoadMeter:
    """Cores kept busy by other processes between start() and stop(): /proc/stat's busy time minus ours."""

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat") and hasattr(os, "times")

    @staticmethod
    def _busy_and_own() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / ticks
        t = os.times()
        return busy, t.user + t.system, time.monotonic()

    def start(self) -> None:
        if self.available:
            self._start = self._busy_and_own()

    def stop(self) -> float | None:
        if not self.available:
            return None
        busy0, own0, t0 = self._start
        busy1, own1, t1 = self._busy_and_own()
        if t1 <= t0:
            return None
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


def time_calls(fn: Callable[[], Any], repetitions: int, min_seconds: float, max_seconds: float = 120.0) -> list[float]:
    """Seconds per call: at least `repetitions` calls and at least `min_seconds` in all (at most `max_seconds`)."""
    samples: list[float] = []
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        if len(samples) >= repetitions and (elapsed >= min_seconds or elapsed >= max_seconds):
            return samples


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples: list[float], batch_size: int) -> dict[str, float]:
    rates = [batch_size / s for s in samples]
    latency = statistics.median(samples)
    return {
        "latency_ms": latency * 1e3,
        "latency_ms_p10": _percentile(samples, 0.1) * 1e3,
        "latency_ms_p90": _percentile(samples, 0.9) * 1e3,
        "ms_per_image": latency * 1e3 / batch_size,
        "images_per_second": statistics.median(rates),
        "images_per_second_p10": _percentile(rates, 0.1),
        "images_per_second_p90": _percentile(rates, 0.9),
    }


def measure(run: Callable[[torch.Tensor], Any], batch: torch.Tensor, warmup: int = 3, repetitions: int = 10,
            min_seconds: float = 2.0) -> tuple[float, dict[str, float], float | None, int]:
    """(first call's seconds, summary of the timed calls, background load, calls timed) for `run(batch)`."""
    t0 = time.perf_counter()
    run(batch)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run(batch)
    meter = _LoadMeter()
    meter.start()
    samples = time_calls(lambda: run(batch), repetitions, min_seconds)
    return first, summarize(samples, batch.shape[0]), meter.stop(), len(samples)


def versions() -> dict[str, str]:
    from mvit_cli import __version__

    found = {"mvit": __version__, "torch": torch.__version__}
    try:
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return found


def bench(
    variant: str | None = None,
    batch_size: int | None = None,
    backend: str = "torch",
    device: str = "auto",
    weights: Path | None = None,
    source: str | None = None,
    input_size: int | None = None,
    warmup: int = 3,
    repetitions: int = 10,
    min_seconds: float = 2.0,
    cache_dir: Path | None = None,
    dtype: str = "float32",
) -> BenchResult:
    """Measure one (variant, batch size, backend, device). Never downloads: cached weights, `weights`, or
    random weights (reported as "random")."""
    from mvit_cli import runners

    model, weights_label, weights_path, variant = _model_for(variant, weights, source, cache_dir)
    target = runners.resolve_device(device)
    dtype = runners.resolve_dtype(dtype, target, backend)
    batch_size = batch_size or runners.default_batch_size(target)
    size = input_size or model.cfg.default_input_size
    batch = example_batch(batch_size, size, size)

    t0 = time.perf_counter()
    runner = runners.prepare(model, target, backend, weights_path=weights_path, dtype=dtype)
    prepare_s = time.perf_counter() - t0
    first_s, summary, load, timed = measure(runner, batch, warmup, repetitions, min_seconds)
    return BenchResult(
        variant=variant,
        batch_size=batch_size,
        backend=backend,
        device=target.type,
        input_size=[size, size],
        weights=weights_label,
        runner=runner.describe(batch_size),
        dtype=dtype,
        threads=torch.get_num_threads(),
        setup_s=prepare_s + first_s,
        warmup=warmup,
        repetitions=timed,
        min_repetitions=repetitions,
        min_seconds=min_seconds,
        background_load=load,
        versions=versions(),
        **summary,
    )


def _model_for(variant: str | None, weights: Path | None, source: str | None,
               cache_dir: Path | None) -> tuple[MobileViT, str, Path | None, str]:
    """(model, label for the report, weights file or None, variant): loaded as every command loads it, from the
    cache only (bench never downloads), else random weights."""
    from mvit_cli import loading, manifest
    from mvit_cli.errors import WeightsUnavailableError

    try:
        checkpoint, path, _ = loading.find_checkpoint(variant, source, weights, cache_dir, offline=True,
                                                      progress=False, warn=lambda message: None)
    except WeightsUnavailableError:
        variant = variant or manifest.DEFAULT_VARIANT
        return random_model(variant), "random", None, variant
    return checkpoint.model, str(path), path, checkpoint.variant
