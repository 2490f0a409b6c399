"""bfloat16 vs float32 on this CPU, the way mvit runs them (`--dtype`), in one run.

    .venv/bin/python benchmarks/precision.py                        # every variant, ~8 min on 2 cores
    .venv/bin/python benchmarks/precision.py --variants s --rounds 3

For each variant: model-only images/s at batch 1 and at the default batch (the runner classify uses, on
synthetic 256x256 images) and end-to-end images/s (the whole `mvit classify` command, start-up included, on the
sample photos three times over: 300 images), float32
and bfloat16 alternating in every round (the host is shared: only ratios from one run compare), the median over
rounds, and the share of this CPU's attainable bf16 matrix rate reached: the MobileViT's multiply-accumulates per
image (mvit_cli.costs) times images/s, over the rate of a large bf16 matmul on all cores measured in the same run.
Agreement (max and mean |logit difference|, top-1 agreement) is printed beside, on the same synthetic images.

Weights: random (realistic activations); speed is that of real weights. Photos: ../shared/imagenet-sample-100
when present, generated ones otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "imagenet-sample-100"
BIN = Path(sys.executable).parent


def _rate(run, batch: torch.Tensor, seconds: float) -> float:
    run(batch)
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        run(batch)
        calls += 1
    return calls * batch.shape[0] / (time.perf_counter() - started)


def _matmul_peak(seconds: float = 2.0) -> float:
    """Multiply-accumulates per second of a large bf16 matmul on all cores: the attainable matrix rate."""
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a @ b
        calls += 1
    return calls * 2048**3 / (time.perf_counter() - started)


def _photos(folder: Path) -> Path:
    if PHOTOS.is_dir():
        return PHOTOS
    from mvit_cli.random_weights import synthetic_photo

    for i in range(100):
        synthetic_photo(500, 375, seed=i).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["xxs", "xs", "s"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args()

    import safetensors.torch

    from mvit_cli import costs, runners
    from mvit_cli.random_weights import random_model, structured_images

    native = runners.native_dtypes(torch.device("cpu"))
    if "bfloat16" not in native:
        raise SystemExit("this CPU runs no bfloat16 natively; nothing to compare")
    print(f"bfloat16 native here through {native['bfloat16']}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")
    peak = _matmul_peak()
    print(f"attainable bf16 matmul rate (2048^3, all cores): {peak / 1e12:.2f} TMAC/s")
    batch_size = runners.default_batch_size(torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mvit-precision-") as scratch:
        # The photos three times over: start-up (~1.5 s) then weighs on the whole command as on a job of hundreds.
        paths = sorted(str(p) for p in _photos(Path(scratch)).iterdir()) * 3
        listing = Path(scratch) / "photos.txt"
        listing.write_text("\n".join(paths) + "\n")
        for variant in args.variants:
            model = random_model(variant, seed=0)
            weights = Path(scratch) / f"{variant}.safetensors"
            safetensors.torch.save_file(model.state_dict(), str(weights),
                                        metadata={"format": "mvit", "variant": variant, "source": "timm"})
            macs = costs.anatomy(variant).flops.total / 2
            images = structured_images(batch_size, 256, seed=1)
            batches = {"batch 1": images[:1], f"batch {batch_size}": images}
            # A runner per batch size, as in separate jobs: one runner that has run its per-core graph on batches
            # runs a lone image on all cores ~1.5x slower than a fresh one (the fused kernels were compiled on
            # single-threaded cores; runners/torch_cpu.py).
            prepared = {(dtype, label): runners.prepare(model, torch.device("cpu"), dtype=dtype)
                        for dtype in ("float32", "bfloat16") for label in batches}
            last = f"batch {batch_size}"
            exact, fast = prepared[("float32", last)](images), prepared[("bfloat16", last)](images)
            agreement = float((exact.argmax(1) == fast.argmax(1)).float().mean())
            difference = (exact - fast).abs()
            measured: dict[tuple[str, str], list[float]] = {}
            for round_ in range(args.rounds):
                order = ("float32", "bfloat16") if round_ % 2 == 0 else ("bfloat16", "float32")
                for dtype in order:
                    for label, batch in batches.items():
                        measured.setdefault((label, dtype), []).append(
                            _rate(prepared[(dtype, label)], batch, args.seconds))
                    if not args.no_end_to_end:
                        started = time.perf_counter()
                        done = subprocess.run([str(BIN / "mvit"), "classify", "--files-from", str(listing),
                                               "--weights", str(weights),
                                               "--dtype", dtype, "--format", "jsonl", "-o",
                                               str(Path(scratch) / "out.jsonl")], capture_output=True)
                        if done.returncode != 0:
                            raise SystemExit(done.stderr.decode()[-600:])
                        count = len(paths)
                        measured.setdefault(("whole command", dtype), []).append(count / (time.perf_counter() -
                                                                                          started))
            for label in dict.fromkeys(label for label, _ in measured):
                f32 = statistics.median(measured[(label, "float32")])
                b16 = statistics.median(measured[(label, "bfloat16")])
                share = macs * b16 / peak if label != "whole command" else None
                rows.append((variant, label, f32, b16, share))
            print(f"{variant}: max |logit difference| {float(difference.max()):.3f}, "
                  f"mean {float(difference.mean()):.4f}, "
                  f"top-1 agreement {agreement:.0%} on {len(images)} synthetic images")
    print("\n| variant | what | float32 img/s | bfloat16 img/s | bf16 / fp32 | share of the bf16 matmul rate |")
    print("|---|---|---:|---:|---:|---:|")
    for variant, label, f32, b16, share in rows:
        print(f"| {variant} | {label} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f} | "
              f"{'-' if share is None else f'{share:.1%}'} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
