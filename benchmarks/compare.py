"""mvit vs timm vs transformers on this CPU, same weights, plus mvit's end-to-end pipeline on real JPEGs.

    /work/venv/bin/python benchmarks/compare.py                      # every variant, 2 rounds
    /work/venv/bin/python benchmarks/compare.py --variants xxs --rounds 1 --min-seconds 1   # quick look

What is measured, per variant, at batch 1 and at mvit's default batch size:
- mvit          the default path (`mvit bench`'s measurement: runners.prepare + first call = setup, then
                warm-up and timed calls), torch backend
- mvit-ort      the same with --backend onnxruntime (its export is cached next to the weights file, so
                round 1 pays the export and later rounds reuse it)
- timm          timm.create_model(...) eager, torch.inference_mode, default threads
- transformers  MobileViTForImageClassification eager, torch.inference_mode, default threads
and, with the default batch size and decoding thread count, the `classify` pipeline on a folder of JPEGs:
decode-only images/s (the pipeline without the model), model-only images/s, end-to-end images/s.

Same weights everywhere: a transformers model is randomised with mvit_cli.random_weights (realistic activations:
default initialisation makes denormal floats that slow CPUs several times), loaded into mvit through mvit's
own checkpoint loader, and copied into timm by key; the parent checks that all three give the same logits.

Process layout: every (contender, variant) runs in a fresh child process, one at a time, with torch's
default thread count; rounds alternate the contender order and the report takes the median over rounds.
Nothing else runs in the parent while a child measures. Each figure carries the background load (cores
other processes kept busy while it was timed) so a noisy run shows itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
DEFAULT_IMAGES = REPO.parent / "shared" / "imagenet-sample-100"
CONTENDERS = ("mvit", "mvit-ort", "timm", "transformers")


# ------------------------------------------------------------------------------------------------ weights


def make_weights(variant: str, folder: Path) -> dict[str, str]:
    """Random weights for all three libraries, checked to give the same logits. Returns the file paths."""
    # The reference models' builders are test code (timm and transformers are test-only dependencies): the one
    # thing the benchmarks take from tests/.
    sys.path.insert(0, str(TESTS))
    import safetensors.torch
    import torch
    from mvit_cli.random_weights import randomize_, structured_images
    from reference_models import build_timm, build_transformers, plain_state_dict, transformers_logits

    from mvit_cli import checkpoints

    hf = randomize_(build_transformers(variant), seed=1)
    hf_file = folder / f"transformers-{variant}.safetensors"
    safetensors.torch.save_file(plain_state_dict(hf), str(hf_file))
    ours = checkpoints.load_checkpoint(hf_file, variant=variant)  # mvit's loader: BGR stem flip and all
    mvit_file = folder / f"mvit-{variant}.safetensors"
    checkpoints.save_canonical(ours, mvit_file, source="apple")

    timm_model = build_timm(variant)
    timm_state = timm_model.state_dict()
    # timm's keys map 1:1 onto ours: ask the loader which canonical key each timm tensor becomes.
    canonical_of = {id(v): k for k, v in checkpoints.to_canonical(timm_state, "timm").items()}
    ours_state = ours.model.state_dict()
    timm_model.load_state_dict({key: ours_state[canonical_of[id(v)]] for key, v in timm_state.items()
                                if id(v) in canonical_of}, strict=False)
    timm_file = folder / f"timm-{variant}.safetensors"
    safetensors.torch.save_file(plain_state_dict(timm_model), str(timm_file))

    images = structured_images(2, 256, seed=3)
    with torch.no_grad():
        reference = ours.model(images)
        diffs = {
            "timm": float((timm_model(images) - reference).abs().max()),
            "transformers": float((transformers_logits(hf, images) - reference).abs().max()),
        }
    if max(diffs.values()) > 1e-4:
        raise SystemExit(f"{variant}: the three models do not share weights (max |diff| {diffs})")
    return {"mvit": str(mvit_file), "timm": str(timm_file), "transformers": str(hf_file),
            "parity": json.dumps(diffs)}


def make_photos(folder: Path, count: int = 100) -> list[Path]:
    """JPEG 'photos' (smooth colour fields with edges and grain, 500x375 .. 640x480) when no real ones exist."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        w, h = (500, 375) if i % 2 else (640, 480)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ children


def child_model(spec: dict) -> list[dict]:
    """Measure one contender of one variant at each batch size (runs in its own process)."""
    from mvit_cli import benchmark

    variant, files, results = spec["variant"], spec["files"], []
    if spec["contender"] in ("mvit", "mvit-ort"):
        backend = "torch" if spec["contender"] == "mvit" else "onnxruntime"
        parity = max_abs_diff(files["mvit"], variant, backend)
        for batch_size in spec["batch_sizes"]:
            r = benchmark.bench(variant=variant, batch_size=batch_size, backend=backend, device="cpu",
                                weights=Path(files["mvit"]), min_seconds=spec["min_seconds"],
                                repetitions=spec["repetitions"])
            results.append({**r.to_dict(), "max_abs_diff": parity})
        return results

    import safetensors.torch
    import torch

    sys.path.insert(0, str(TESTS))
    from reference_models import build_timm, build_transformers

    t0 = time.perf_counter()
    if spec["contender"] == "timm":
        model = build_timm(variant)
        model.load_state_dict(safetensors.torch.load_file(files["timm"]))
        flip = False
    else:
        model = build_transformers(variant)
        model.load_state_dict(safetensors.torch.load_file(files["transformers"]), strict=False)
        flip = True  # transformers' processor hands the model BGR; flipped before timing
    build_s = time.perf_counter() - t0

    def run(x):
        with torch.inference_mode():
            out = model(pixel_values=x) if flip else model(x)
        return out.logits if flip else out

    for batch_size in spec["batch_sizes"]:
        batch = benchmark.example_batch(batch_size, 256, 256)
        if flip:
            batch = batch.flip(1).contiguous()
        first, summary, load, _ = benchmark.measure(run, batch, 3, spec["repetitions"], spec["min_seconds"])
        results.append({"variant": variant, "batch_size": batch_size, "backend": spec["contender"],
                        "setup_s": build_s + first, "background_load": load, "threads": torch.get_num_threads(),
                        **summary})
    return results


def max_abs_diff(weights: str, variant: str, backend: str) -> float:
    """Largest |logit difference| between the prepared runner and the plain model, over batch sizes 1 and 3 at
    256 px and batch 2 at 224 and 97 px (sizes that resize inside the MobileViT blocks)."""
    import torch

    from mvit_cli import benchmark, checkpoints, runners

    model = checkpoints.load_checkpoint(Path(weights), variant=variant).model
    with tempfile.TemporaryDirectory() as scratch:  # keeps this check's exports out of the timed runs' cache
        runner = runners.prepare(model, torch.device("cpu"), backend, export_dir=Path(scratch))
        worst = 0.0
        for batch, size in ((1, 256), (3, 256), (2, 224), (2, 97)):
            x = benchmark.example_batch(batch, size, size, seed=size)
            with torch.no_grad():
                worst = max(worst, float((runner(x) - model(x)).abs().max()))
    return worst


def child_pipeline(spec: dict) -> dict:
    """Decode-only, model-only and end-to-end images/s of the classify pipeline (own process)."""
    import torch

    from mvit_cli import benchmark, loading, runners
    from mvit_cli.pipeline.batching import iter_batches
    from mvit_cli.pipeline.records import classify_batches
    from mvit_cli.pipeline.inputs import expand_paths

    images = expand_paths([spec["images"]]) * spec["repeat"]
    model = loading.load_model(spec["variant"], None, Path(spec["files"]["mvit"]), "cpu")
    batch_size = runners.default_batch_size(torch.device("cpu"))
    workers = spec.get("workers", runners.default_workers())
    out = {"variant": spec["variant"], "images": len(images), "batch_size": batch_size, "workers": workers}

    t0, cpu0 = time.perf_counter(), time.process_time()
    n = sum(len(b.indices) for b in iter_batches([i.source for i in images], model.preprocessing, batch_size,
                                                  workers))
    out["decode_only_ips"] = n / (time.perf_counter() - t0)
    out["decode_cpu_ms_per_image"] = 1000 * (time.process_time() - cpu0) / n  # every thread of this process

    batch = benchmark.example_batch(batch_size, 256, 256)
    _, summary, _, _ = benchmark.measure(model.run, batch, 2, 5, spec["min_seconds"])
    out["model_only_ips"] = summary["images_per_second"]

    load = benchmark._LoadMeter()
    load.start()
    t0 = time.perf_counter()
    n = sum(len(b) for b in classify_batches(images, model.run, model.preprocessing, 5, batch_size, workers))
    out["end_to_end_ips"] = n / (time.perf_counter() - t0)
    out["background_load"] = load.stop()
    out["ratio_to_slower_side"] = out["end_to_end_ips"] / min(out["decode_only_ips"], out["model_only_ips"])
    out["cpu_bound_ips"] = cpu_sum_bound(out["decode_cpu_ms_per_image"] / 1000, out["decode_only_ips"],
                                         out["model_only_ips"], runners.cpu_threads())
    out["ratio_to_cpu_bound"] = out["end_to_end_ips"] / out["cpu_bound_ips"]
    return out


def cpu_sum_bound(decode_cpu_s: float, decode_ips: float, model_ips: float, cores: int) -> float:
    """Images/s the pipeline could reach if decoding and the model shared `cores` perfectly.

    Decoding and the model run on the same cores, so they cannot both go at their solo speed: each image costs
    the CPU time of decoding it (measured: process CPU time of the decode-only run per image, every thread
    counted) plus the CPU time of the model (model-only keeps every core busy: cores / model images/s), and the
    cores supply `cores` CPU-seconds per second. On a machine with spare cores for decoding this bound exceeds
    min(decode, model), and the slower side is the limit.
    """
    model_cpu_s = cores / model_ips
    return min(cores / (decode_cpu_s + model_cpu_s), decode_ips, model_ips)


def spawn(kind: str, spec: dict) -> object:
    proc = subprocess.run([sys.executable, __file__, "_child", kind, json.dumps(spec)], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} {spec.get('contender', '')} {spec['variant']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


def median_by(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(model_rows: list[dict], pipeline_rows: list[dict], info: dict) -> str:
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
             f"Python {info['python']}", ""]
    lines.append("| variant | batch | contender | ms/image | images/s | x timm | setup s | max abs diff "
                 "| background load |")
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    groups: dict[tuple, list[dict]] = {}
    for row in model_rows:
        groups.setdefault((row["variant"], row["batch_size"], row["backend"]), []).append(row)
    names = {"torch": "mvit", "onnxruntime": "mvit --backend onnxruntime", "timm": "timm eager",
             "transformers": "transformers eager"}
    for variant in dict.fromkeys(r["variant"] for r in model_rows):
        for batch_size in sorted({r["batch_size"] for r in model_rows if r["variant"] == variant}):
            timm_rows = groups.get((variant, batch_size, "timm"))
            timm_ips = median_by(timm_rows, "images_per_second") if timm_rows else None
            for backend in ("torch", "onnxruntime", "timm", "transformers"):
                rows = groups.get((variant, batch_size, backend))
                if not rows:
                    continue
                ips = median_by(rows, "images_per_second")
                ratio = f"{ips / timm_ips:.2f}" if timm_ips else "-"
                setup = "/".join(f"{r['setup_s']:.1f}" for r in rows) if backend in ("torch", "onnxruntime") else "-"
                loads = [r["background_load"] for r in rows if r.get("background_load") is not None]
                load = f"{statistics.median(loads):.2f}" if loads else "-"
                diffs = [r["max_abs_diff"] for r in rows if "max_abs_diff" in r]
                diff = f"{max(diffs):.1e}" if diffs else "-"
                lines.append(f"| {variant} | {batch_size} | {names[backend]} | {1000 / ips:.2f} | {ips:.1f} | {ratio} "
                             f"| {setup} | {diff} | {load} |")
    if pipeline_rows:
        lines += ["", "| variant | images | batch | decode threads | decode-only img/s | decode CPU ms/img "
                  "| model-only img/s | end-to-end img/s | e2e / slower side | CPU-sum bound img/s | e2e / bound "
                  "| background load |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in pipeline_rows:
            load = "-" if r["background_load"] is None else f"{r['background_load']:.2f}"
            lines.append(f"| {r['variant']} | {r['images']} | {r['batch_size']} | {r['workers']} | "
                         f"{r['decode_only_ips']:.1f} | {r['decode_cpu_ms_per_image']:.2f} | "
                         f"{r['model_only_ips']:.1f} | {r['end_to_end_ips']:.1f} | "
                         f"{r['ratio_to_slower_side']:.2f} | {r['cpu_bound_ips']:.1f} | {r['ratio_to_cpu_bound']:.2f} "
                         f"| {load} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="xxs,xs,s")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--batch-sizes", default="1,default", help="comma list; 'default' = mvit's default")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="JPEG folder for the pipeline")
    parser.add_argument("--repeat", type=int, default=3, help="pass the folder this many times (pipeline)")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="pipeline decoding threads [mvit's default]")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from mvit_cli import runners

    default_bs = runners.default_batch_size(torch.device("cpu"))
    batch_sizes = [default_bs if b == "default" else int(b) for b in args.batch_sizes.split(",")]
    contenders = args.contenders.split(",")
    info = machine()
    started = time.time()
    model_rows, pipeline_rows = [], []
    with tempfile.TemporaryDirectory(prefix="mvit-bench-") as tmp:
        folder = Path(tmp)
        images = args.images
        if not images.is_dir():
            (folder / "photos").mkdir()
            make_photos(folder / "photos")
            images = folder / "photos"
        for variant in args.variants.split(","):
            files = make_weights(variant, folder)
            print(f"{variant}: weights shared, max |logit diff| vs mvit {files['parity']}", file=sys.stderr)
            for round_index in range(args.rounds):
                order = contenders if round_index % 2 == 0 else contenders[::-1]
                for contender in order:
                    spec = {"contender": contender, "variant": variant, "files": files, "batch_sizes": batch_sizes,
                            "min_seconds": args.min_seconds, "repetitions": args.repetitions}
                    rows = spawn("model", spec)
                    for row in rows:
                        row["round"] = round_index
                        print(f"  round {round_index} {contender:12s} batch {row['batch_size']:3d}: "
                              f"{row['images_per_second']:7.1f} img/s  setup {row['setup_s']:.2f} s  "
                              f"load {row.get('background_load') or 0:.2f}", file=sys.stderr)
                    model_rows += rows
            if not args.no_pipeline:
                spec = {"variant": variant, "files": files, "images": str(images), "repeat": args.repeat,
                        "min_seconds": args.min_seconds}
                if args.workers is not None:
                    spec["workers"] = args.workers
                pipeline_rows.append(spawn("pipeline", spec))
                print(f"  pipeline: {pipeline_rows[-1]}", file=sys.stderr)
    text = report(model_rows, pipeline_rows, info)
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
    print(f"{text}\n\ncommand: {command}\nwall time: {time.time() - started:.0f} s")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": info, "command": command, "models": model_rows,
                                             "pipeline": pipeline_rows}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, spec = sys.argv[2], json.loads(sys.argv[3])
        print(json.dumps(child_model(spec) if kind == "model" else child_pipeline(spec)))
    else:
        main()
