"""classify at scale on this machine: processes vs threads, and whether a long list costs memory or speed.

    .venv/bin/python benchmarks/scale.py                         # both parts, XXS, ~6 min on 2 cores
    .venv/bin/python benchmarks/scale.py --part shards --rounds 3 --images 300
    .venv/bin/python benchmarks/scale.py --part length --long 20000

Part "shards": the same folder of photos classified by 1 process with all cores (torch threads = cores) and by
`torchrun --nproc-per-node <cores>` with one thread per process, alternating, several rounds; images/s of the
whole command (start-up included, as a user sees it) and of the classify phase alone (from the first to the
last record written, read from the output's growth, so start-up cost is shown apart).

Part "length": `--files-from` lists of `--short` and `--long` entries (the sample photos repeated through
symlinks); images/s and the peak resident memory of the process (getrusage of the child). The goal: the long
list within 10% of the short one's images/s, and its peak RSS not growing with the count.

Photos: ../shared/imagenet-sample-100 when present, generated ones otherwise. Weights: random XXS (realistic
activations; the speed is that of real weights). Everything runs in fresh subprocesses, one at a time; the
background load (cores other processes kept busy) is printed with each figure.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO.parent / "shared" / "imagenet-sample-100"
BIN = Path(sys.executable).parent


def _photos(folder: Path, source: Path) -> list[Path]:
    found = sorted(p for p in source.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if source.is_dir() \
        else []
    if found:
        return found
    from mvit_cli.random_weights import synthetic_photo

    made = []
    for i in range(100):
        path = folder / "generated" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(500, 375, seed=i).save(path, quality=90)
        made.append(path)
    return made


def _links(folder: Path, photos: list[Path], count: int) -> list[Path]:
    """`count` symlinks to the photos, in turn: a big job of real JPEGs without copying them."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for i in range(count):
        link = folder / f"{i:06d}{photos[i % len(photos)].suffix}"
        if not link.exists():
            link.symlink_to(photos[i % len(photos)])
        links.append(link)
    return links


def _weights(folder: Path, variant: str) -> Path:
    import safetensors.torch
    from mvit_cli.random_weights import randomize_

    from mvit_cli.model import build_model

    path = folder / f"{variant}.safetensors"
    safetensors.torch.save_file(randomize_(build_model(variant), seed=0).state_dict(), str(path),
                                metadata={"format": "mvit", "variant": variant, "source": "timm"})
    return path


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_cores() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _run(command: list[str], out: Path, env: dict[str, str]) -> dict:
    """Run one command; its wall time, the classify phase (first to last output line), peak RSS and the load
    other processes put on the machine meanwhile."""
    out.unlink(missing_ok=True)
    busy0, own0, t0 = _busy_cores(), _children_cpu(), time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while process.poll() is None:
        if first is None and out.exists() and out.stat().st_size > 0:
            first = time.monotonic()
        time.sleep(0.01)
    wall = time.monotonic() - t0
    stderr = process.stderr.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({process.returncode}): {stderr[-800:]}")
    records = sum(1 for _ in open(out, "rb"))
    others = (_busy_cores() - busy0) - (_children_cpu() - own0)  # busy CPU time that was not the command's
    return {"wall_s": wall, "records": records, "phase_s": wall - ((first or t0) - t0),
            "background": max(0.0, others / wall)}


def _rss_run(command: list[str], out: Path, env: dict[str, str]) -> dict:
    """As `_run`, plus the child's peak resident memory (getrusage through wait4)."""
    out.unlink(missing_ok=True)
    t0 = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {process.stderr.read().decode(errors='replace')[-800:]}")
    records = sum(1 for _ in open(out, "rb"))
    return {"wall_s": wall, "records": records, "images_per_s": records / wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_shards(args, work: Path, weights: Path, photos: list[Path]) -> None:
    cores = len(os.sched_getaffinity(0))
    links = _links(work / "shards", photos, args.images)
    listing = work / "shards.txt"
    listing.write_text("".join(f"{p}\n" for p in links))
    common = ["classify", "--files-from", str(listing), "--format", "jsonl", "--weights", str(weights)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    single = [str(BIN / "mvit"), *common, "-o", str(work / "single.jsonl")]
    torchrun = [str(BIN / "torchrun"), "--nproc-per-node", str(cores), "--master-addr", "127.0.0.1", "--master-port",
                "PORT", "-m", "mvit_cli", *common, "-o", str(work / "multi.jsonl")]
    results: dict[str, list[dict]] = {"1 process x %d threads" % cores: [], "%d processes x 1 thread" % cores: []}
    for round_ in range(args.rounds):
        order = list(results) if round_ % 2 == 0 else list(results)[::-1]
        for name in order:
            if name.startswith("1 process"):
                results[name].append(_run(single, work / "single.jsonl", env))
            else:
                command = [str(_free_port()) if part == "PORT" else part for part in torchrun]
                results[name].append(_run(command, work / "multi.jsonl",
                                          {**env, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}))
    print(f"\n## {args.images} photos, {args.variant}, {args.rounds} rounds (median)\n")
    print("| layout | whole command images/s | classify phase images/s | other processes' load |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        whole = statistics.median(r["records"] / r["wall_s"] for r in runs)
        phase = statistics.median(r["records"] / r["phase_s"] for r in runs)
        load = statistics.median(r["background"] for r in runs)
        print(f"| {name} | {whole:.1f} | {phase:.1f} | {load:.2f} |")


def part_length(args, work: Path, weights: Path, photos: list[Path]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = []
    for count in (args.short, args.long, args.short):  # the short list before and after: drift shows itself
        links = _links(work / "length", photos, count)
        listing = work / f"list-{count}.txt"
        listing.write_text("".join(f"{p}\n" for p in links[:count]))
        out = work / f"out-{count}.jsonl"
        command = [str(BIN / "mvit"), "classify", "--files-from", str(listing), "--format", "jsonl",
                   "--weights", str(weights), "-o", str(out)]
        rows.append((count, _rss_run(command, out, env)))
    print(f"\n## --files-from lists, {args.variant}\n")
    print("| inputs | images/s (whole command) | peak RSS MB |")
    print("|---:|---:|---:|")
    for count, r in rows:
        print(f"| {count:,} | {r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["shards", "length", "all"], default="all")
    parser.add_argument("--variant", default="xxs")
    parser.add_argument("--images", type=int, default=300, help="photos for the shards part")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--short", type=int, default=1000)
    parser.add_argument("--long", type=int, default=20000)
    parser.add_argument("--photos", type=Path, default=DEFAULT_IMAGES)
    args = parser.parse_args()
    print(f"CPU: {_cpu_model()}, {len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="mvit-scale-") as scratch:
        work = Path(scratch)
        photos = _photos(work, args.photos)
        weights = _weights(work, args.variant)
        if args.part in ("shards", "all"):
            part_shards(args, work, weights, photos)
        if args.part in ("length", "all"):
            part_length(args, work, weights, photos)


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
