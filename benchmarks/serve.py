"""`mvit serve` under 1, 4, 16 and 64 concurrent clients, against `mvit classify` on the same photos, same run.

    python benchmarks/serve.py                        # XXS, 2 rounds, ../shared/imagenet-sample-100 if present
    python benchmarks/serve.py --variant s --rounds 1 --images 200

What is measured (random weights: real ones cannot be downloaded here; speed does not depend on their values):
- serve: one `python -m mvit_cli serve` process with its defaults (batch 32, --max-wait-ms 5, decoding threads
  cores - 1 + 1), kept running; for each concurrency c, c client threads in this process, each with its own
  keep-alive connection, POST the photos as raw bodies (one image per request) until `--images` requests are
  answered (after a short warm-up). images/s = answered requests / wall time; p50 / p99 of the request
  latencies (send to last byte of the answer, as the client sees it).
- classify: the whole `python -m mvit_cli classify --files-from LIST --format jsonl` command on the same photos
  (LIST repeated to `--images` lines, so it traces the model as the server does), output to a pipe that is read
  and dropped. "e2e" is images / the command's wall time, process start included; "steady" takes the start
  out: `--images` more images / (time of a 2x job - time of the 1x job).
- baseline: decode + model at batch 1, one photo at a time in a fresh process (the pipeline's
  `pixels_or_reason` + `batch_tensor` + the classifier's runner), median per photo, in a process with all cores
  (the path a lone image takes in classify) and in a single-threaded one (the server's path); the faster of the
  two is what one request cannot beat, and the 1-client p50 is compared with it.

Rounds alternate the order (classify first, then serve; then serve first). Each figure carries the background
load: cores kept busy by processes other than this benchmark's own (its clients, the server, classify) while it
was measured. The client threads share the machine with the server; they are included in "ours".

Goals (issue 14): 16 clients >= 0.8x classify's images/s; 1 client p50 <= 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The project's sample photos sit in a shared/ folder beside the checkout (or beside a worktree's parent).
DEFAULT_PHOTOS = next((folder / "shared" / "imagenet-sample-100" for folder in REPO.parents
                       if (folder / "shared" / "imagenet-sample-100").is_dir()), REPO.parent / "shared")
CONCURRENCY = (1, 4, 16, 64)
WARMUP_REQUESTS = 16


# ------------------------------------------------------------------------------------------ inputs


def make_weights(variant: str, folder: Path) -> Path:
    """A random-weight checkpoint in mvit's format (realistic activations: mvit_cli.random_weights)."""
    import safetensors.torch

    from mvit_cli.model import build_model
    from mvit_cli.random_weights import randomize_

    model = randomize_(build_model(variant), seed=1).eval()
    path = folder / f"{variant}-random.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path),
                                metadata={"format": "mvit", "variant": variant, "source": "timm"})
    return path


def photo_paths(folder: Path | None, scratch: Path) -> tuple[list[Path], str]:
    """The sample photos, or 100 generated photo-sized JPEGs where there are none."""
    if folder is not None and folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if found:
            return found, str(folder)
    from mvit_cli.random_weights import synthetic_photo

    made = []
    for i in range(100):
        path = scratch / f"photo{i:03d}.jpg"
        synthetic_photo(500, 375 if i % 3 else 333, seed=i).save(path, quality=90)
        made.append(path)
    return made, "100 generated 500x375 JPEGs (mvit_cli.random_weights.synthetic_photo)"


# ------------------------------------------------------------------------------------------ load meter


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class LoadMeter:
    """Cores kept busy by processes other than ours (this one, its children, the server) between start/stop."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid

    def _sample(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        if self.server_pid is not None:
            ours += _proc_cpu(self.server_pid)
        return busy, ours, time.monotonic()

    def __enter__(self) -> "LoadMeter":
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, ours0, t0 = self.start
        busy1, ours1, t1 = self._sample()
        self.load = max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / max(t1 - t0, 1e-9))


# ------------------------------------------------------------------------------------------ serve


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(weights: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mvit_cli", "serve", "--port", str(port), "--weights",
                                str(weights), "--offline", *extra], stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # the ready line comes once the model is loaded and warm
        if "serving" in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, port
    raise SystemExit(f"mvit serve exited with {process.wait()}")


def post(connection: http.client.HTTPConnection, data: bytes) -> None:
    connection.request("POST", "/v1/classify", data, {"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")


def serve_sweep(port: int, photos: list[bytes], clients: int, total: int) -> dict:
    """`total` requests from `clients` threads; images/s and latency percentiles."""
    counter = iter(range(total + WARMUP_REQUESTS))
    lock = threading.Lock()
    latencies: list[float] = []
    warm = threading.Barrier(clients + 1)
    go = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.connect()
        # As curl, requests (urllib3) and browsers do: http.client sends a body over ~3 KB apart from its
        # headers, and Nagle's algorithm would then hold the body's last segment back until the server's
        # delayed ACK of the headers (measured here: ~10 ms more per request at 1 client).
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(max(1, WARMUP_REQUESTS // clients)):  # connections open, server warm
                post(connection, photos[index % len(photos)])
            warm.wait()
            go.wait()
            while True:
                with lock:
                    n = next(counter, None)
                if n is None or n >= total:
                    return
                t0 = time.perf_counter()
                post(connection, photos[n % len(photos)])
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            for barrier in (warm, go):
                barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    warm.wait()
    started = time.perf_counter()
    go.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    latencies.sort()
    return {"images_per_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "requests": len(latencies)}


# ------------------------------------------------------------------------------------------ classify


def classify_seconds(weights: Path, photos: list[Path], images: int, scratch: Path) -> float:
    listing = scratch / f"list-{images}.txt"
    listing.write_text("".join(f"{photos[i % len(photos)]}\n" for i in range(images)))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mvit_cli", "classify", "--files-from", str(listing),
                           "--weights", str(weights), "--offline", "--format", "jsonl"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or done.stdout.count(b"\n") != images:
        raise SystemExit(f"classify failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return seconds


# ------------------------------------------------------------------------------------------ baseline


def baseline(mode: str, weights: str, photos: list[str]) -> None:
    """(child process) decode + model at batch 1, one photo at a time; prints the median ms per photo as JSON.
    mode "all": torch's default threads (the path a lone image takes in classify); "one": the process
    single-threaded from the start (the model then compiled for one thread, as on the server's batcher thread)."""
    import torch

    if mode == "one":
        torch.set_num_threads(1)
    from mvit_cli import load
    from mvit_cli.pipeline.batching import batch_tensor, pixels_or_reason

    classifier = load(weights=weights, offline=True)  # traced, as the server's
    datas = [Path(p).read_bytes() for p in photos]
    preprocessing = classifier.preprocessing
    for data in datas[:10]:  # warm-up (trace, caches)
        classifier.logits(batch_tensor([pixels_or_reason(data, preprocessing)], preprocessing))
    samples = []
    for data in datas:
        t0 = time.perf_counter()
        classifier.logits(batch_tensor([pixels_or_reason(data, preprocessing)], preprocessing))
        samples.append(time.perf_counter() - t0)
    print(json.dumps({"median_ms": 1000 * statistics.median(samples)}))


def measure_baseline(weights: Path, photos: list[Path]) -> dict[str, float]:
    found = {}
    with LoadMeter(None) as meter:
        for mode in ("all", "one"):
            done = subprocess.run([sys.executable, __file__, "--baseline-child", mode, str(weights),
                                   *map(str, photos)], stdout=subprocess.PIPE, check=True, text=True)
            found[f"{mode}_ms"] = json.loads(done.stdout.strip().splitlines()[-1])["median_ms"]
    return {"all_cores_ms": found["all_ms"], "one_core_ms": found["one_ms"], "load": meter.load}


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline-child":
        baseline(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="xxs", choices=("xxs", "xs", "s"))
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--images", type=int, default=300, help="requests per concurrency level; classify job size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-option", action="append", default=[], help="extra `mvit serve` option (repeat)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mvit-serve-bench-") as tmp:
        scratch = Path(tmp)
        os.environ["HF_HOME"] = str(scratch / "hf")  # nothing touches the user's cache
        weights = make_weights(args.variant, scratch)
        paths, origin = photo_paths(args.photos, scratch)
        datas = [p.read_bytes() for p in paths]
        base = measure_baseline(weights, paths)

        process, port = start_server(weights, args.serve_option)
        rows: dict[int, list[dict]] = {c: [] for c in CONCURRENCY}
        classify_runs: list[dict] = []
        try:
            for round_index in range(args.rounds):
                steps = ["classify", "serve"] if round_index % 2 == 0 else ["serve", "classify"]
                for step in steps:
                    if step == "classify":
                        with LoadMeter(process.pid) as meter:
                            one = classify_seconds(weights, paths, args.images, scratch)
                            two = classify_seconds(weights, paths, 2 * args.images, scratch)
                        steady = args.images / (two - one) if two > one else None  # None: noise won
                        classify_runs.append({"e2e": args.images / one, "steady": steady, "load": meter.load})
                    else:
                        for clients in CONCURRENCY:
                            with LoadMeter(process.pid) as meter:
                                row = serve_sweep(port, datas, clients, args.images)
                            rows[clients].append({**row, "load": meter.load})
        finally:
            process.terminate()
            process.wait(60)

    report(args, origin, len(paths), base, rows, classify_runs)


def report(args, origin: str, n_photos: int, base: dict[str, float], rows: dict[int, list[dict]],
           classify_runs: list[dict]) -> None:
    import torch

    median = statistics.median
    e2e = median(r["e2e"] for r in classify_runs)
    steadies = [r["steady"] for r in classify_runs if r["steady"] is not None]
    steady = median(steadies) if steadies else float("nan")  # nan: every 2x job was not slower (noise)
    base_ms = min(base["all_cores_ms"], base["one_core_ms"])
    print(f"mvit serve vs classify: {args.variant}, random weights, {origin} ({n_photos} photos), "
          f"{args.images} images per measurement, {args.rounds} round(s), medians over rounds")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Python {platform.python_version()}; load average at the end "
          f"{os.getloadavg()[0]:.2f}")
    print(f"baseline, decode + model at batch 1, one photo at a time: {base['all_cores_ms']:.1f} ms on all cores, "
          f"{base['one_core_ms']:.1f} ms on one; the faster is the baseline; background load {base['load']:.2f}")
    print(f"classify --files-from (x{args.images}): e2e {e2e:.1f} images/s (process start included), steady "
          f"{steady:.1f} images/s; background load {median(r['load'] for r in classify_runs):.2f}")
    print()
    print("| clients | images/s | x classify steady | x classify e2e | p50 ms | p99 ms | p50 / baseline "
          "| background load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients, runs in rows.items():
        rate = median(r["images_per_s"] for r in runs)
        p50 = median(r["p50_ms"] for r in runs)
        p99 = median(r["p99_ms"] for r in runs)
        load = median(r["load"] for r in runs)
        print(f"| {clients} | {rate:.1f} | {rate / steady:.2f} | {rate / e2e:.2f} | {p50:.1f} | {p99:.1f} | "
              f"{p50 / base_ms:.2f} | {load:.2f} |")


if __name__ == "__main__":
    main()
