"""`classify` and `embed` at scale: URLs from a loopback server, lists of inputs, resuming a killed job, real
2-process torchrun runs. Real parts throughout: the installed `mvit` in subprocesses, a real HTTP server, SIGKILL,
torchrun with gloo on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from http_fixtures import WebServer, body, chunked, hang, redirect, refused_port, status
from image_corpus import smooth_rgb
from cli_helpers import invoke

MVIT = Path(sys.executable).with_name("mvit")
TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.usefixtures("offline_empty_cache")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(11):  # odd, and more than a few batches at --batch-size 2
        path = folder / f"{i:02d}.{'jpg' if i % 3 else 'png'}"
        smooth_rgb(60 + 7 * i, 50 + 5 * (i % 4), seed=i).save(path)
        paths.append(path)
    return paths


def classify(*args, checkpoint: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(MVIT), "classify", *map(os.fsdecode, args), "--weights", str(checkpoint)],
                          capture_output=True, text=True, timeout=300, **kwargs)


def records_of(checkpoint: Path, paths) -> list[dict]:
    done = classify(*paths, "--format", "json", checkpoint=checkpoint)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ------------------------------------------------------------------------------------ URLs


def test_urls_are_fetched_and_every_failure_is_its_own_record(xxs_checkpoint, photos):
    jpeg = photos[1].read_bytes()
    with WebServer() as server:
        good = server.route("/cat.jpg", body(jpeg))
        server.route("/a", redirect("/b"))
        server.route("/b", redirect("/c"))
        server.route("/c", redirect("/cat.jpg"))
        for i in range(7):
            server.route(f"/r{i}", redirect(f"/r{i + 1}"))
        too_long = server.url("/r0")
        missing = server.url("/missing.jpg")  # no route: 404
        broken = server.route("/500", status(500))
        silent = server.route("/silent", hang())
        huge = server.route("/huge", chunked(b"\xff" * 65536))  # never ends
        text = server.route("/page.html", body(b"<html>not an image</html>", content_type="text/html"))
        dead = f"http://127.0.0.1:{refused_port()}/x.jpg"
        urls = [good, server.url("/a"), missing, broken, too_long, silent, huge, text, dead]
        started = time.monotonic()
        done = classify(*urls, photos[1], "--format", "json", "--max-download-mb", "1", "--workers", "2",
                        "--download-timeout", "1", checkpoint=xxs_checkpoint.path)
        elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    records = json.loads(done.stdout)
    assert [r["path"] for r in records] == [*urls, str(photos[1])]
    local = records[-1]["predictions"]
    assert records[0]["predictions"] == local and records[1]["predictions"] == local  # chain followed
    errors = {r["path"]: r.get("error", "") for r in records}
    assert "HTTP 404" in errors[missing] and "HTTP 500" in errors[broken]
    assert "too many redirects" in errors[too_long]
    assert "timed out" in errors[silent] and "download limit" in errors[huge]
    assert "not an image" in errors[text] and "refused" in errors[dead]
    assert elapsed < 60  # the silent server cost a read timeout, not a hang


def test_no_other_scheme_is_fetched(xxs_checkpoint, tmp_path, photos):
    secret = tmp_path / "secret.png"
    smooth_rgb(30, 30, seed=9).save(secret)
    with WebServer() as server:
        sneaky = server.route("/sneaky", redirect(secret.as_uri()))
        done = classify(sneaky, "--format", "json", checkpoint=xxs_checkpoint.path)
    (record,) = json.loads(done.stdout)
    assert "unsupported scheme" in record["error"] or "file" in record["error"]


# ------------------------------------------------------------------------------------ lists


@pytest.mark.slow
def test_files_from_streams_a_list_with_comments_urls_and_stdin(xxs_checkpoint, photos, tmp_path):
    with WebServer() as server:
        url = server.route("/x.jpg", body(photos[4].read_bytes()))
        lines = ["# a list", str(photos[0]), "", "   ", "  # indented comment", str(photos[2]), url,
                 str(tmp_path / "gone.jpg")]
        listing = tmp_path / "list.txt"
        listing.write_text("\n".join(lines) + "\n")
        from_file = classify("--files-from", listing, "--format", "jsonl", checkpoint=xxs_checkpoint.path)
        from_stdin = classify(photos[3], "--files-from", "-", "--format", "jsonl", checkpoint=xxs_checkpoint.path,
                              input=listing.read_text())
    assert from_file.returncode == 3, from_file.stderr
    got = [json.loads(line) for line in from_file.stdout.splitlines()]
    assert [r["path"] for r in got] == [str(photos[0]), str(photos[2]), url, str(tmp_path / "gone.jpg")]
    assert got[-1]["error"] == "file not found"
    expected = records_of(xxs_checkpoint.path, [photos[0], photos[2]])
    assert got[:2] == expected
    stdin_paths = [json.loads(line)["path"] for line in from_stdin.stdout.splitlines()]
    assert stdin_paths == [str(photos[3]), str(photos[0]), str(photos[2]), url, str(tmp_path / "gone.jpg")]


def test_stdin_cannot_be_both_the_list_and_an_image(xxs_checkpoint):
    result = invoke("classify", "-", "--files-from", "-", "--weights", str(xxs_checkpoint.path))
    assert result.exit_code == 1 and "both the list" in result.output


# ------------------------------------------------------------------------------------ resume


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_killed_job_resumes_to_exactly_the_uninterrupted_output(xxs_checkpoint, photos, tmp_path, fmt):
    many = photos * 4  # 44 inputs, 22 batches of 2
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in many))
    common = ["--files-from", str(listing), "--format", fmt, "--batch-size", "2", "--workers", "0",
              "--weights", str(xxs_checkpoint.path)]
    complete = tmp_path / f"complete.{fmt}"
    assert subprocess.run([str(MVIT), "classify", *common, "-o", str(complete)], timeout=300).returncode == 0

    out = tmp_path / f"out.{fmt}"
    process = subprocess.Popen([str(MVIT), "classify", *common, "-o", str(out)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not out.exists() or len(out.read_bytes().splitlines()) < 12) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    written = out.read_bytes()
    assert 0 < len(written) < complete.stat().st_size, "killed part way"
    # What a kill mid-write leaves: a torn half line at the end.
    torn_line = complete.read_bytes().splitlines(keepends=True)[len(written.splitlines())]
    out.write_bytes(written + torn_line[: len(torn_line) // 2])

    resumed = subprocess.run([str(MVIT), "classify", *common, "-o", str(out), "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert out.read_bytes() == complete.read_bytes()  # every input exactly once, the same records, in order


@pytest.mark.slow
@pytest.mark.parametrize("content", [b'{"not": "mvit"}\n', b"path,rank\nx,1\n", b"hello world\n"])
def test_resume_refuses_a_foreign_file_and_leaves_it_untouched(xxs_checkpoint, photos, tmp_path, content):
    for fmt in ("jsonl", "csv"):
        foreign = tmp_path / f"notes.{fmt}"
        foreign.write_bytes(content)
        done = classify(photos[0], "--format", fmt, "-o", foreign, "--resume", checkpoint=xxs_checkpoint.path)
        assert done.returncode == 1 and "not a `mvit classify` output" in done.stderr, done.stderr
        assert foreign.read_bytes() == content


def test_resume_refuses_another_top_k(xxs_checkpoint, photos, tmp_path):
    out = tmp_path / "out.jsonl"
    assert classify(photos[0], "--format", "jsonl", "-o", out, "--top-k", "3",
                    checkpoint=xxs_checkpoint.path).returncode == 0
    before = out.read_bytes()
    done = classify(photos[0], photos[1], "--format", "jsonl", "-o", out, "--resume", checkpoint=xxs_checkpoint.path)
    assert done.returncode == 1 and "--top-k 3, not 5" in done.stderr
    assert out.read_bytes() == before


# ------------------------------------------------------------------------------------ embed


def test_embed_writes_paths_and_features_and_skips_failures(xxs_checkpoint, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    out = tmp_path / "feats.npz"
    done = subprocess.run([str(MVIT), "embed", str(photos[0]), str(broken), str(photos[1]), "-o", str(out),
                           "--weights", str(xxs_checkpoint.path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "broken.jpg" in done.stderr
    data = np.load(out)
    assert data["paths"].tolist() == [str(photos[0]), str(photos[1])]
    from mvit_cli import load

    expected = load(weights=xxs_checkpoint.path).embed([photos[0], photos[1]])
    np.testing.assert_allclose(data["features"], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    command = [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
               str(_free_port()), "-m", "mvit_cli", *map(os.fsdecode, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


@pytest.mark.slow
def test_two_process_classify_and_embed_write_exactly_the_single_process_output(xxs_checkpoint, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    inputs = [*photos[:5], broken, *photos[5:]]  # 12 inputs with one failure: shards of 6, odd batches
    single = tmp_path / "single.jsonl"
    assert classify(*inputs, "--format", "jsonl", "--batch-size", "3", "-o", single, "--report",
                    tmp_path / "single.html", checkpoint=xxs_checkpoint.path).returncode == 3
    double = tmp_path / "double.jsonl"
    done = torchrun("classify", *inputs, "--format", "jsonl", "--batch-size", "3", "-o", double, "--weights",
                    xxs_checkpoint.path, "--report", tmp_path / "double.html", tmp_path=tmp_path)
    # mvit exits 3 (one input failed); torchrun reports that as its own failure.
    assert "exitcode  : 3" in done.stderr or done.returncode == 3, done.stderr
    assert double.read_bytes() == single.read_bytes()
    # Rank 0 writes the report, with every process's thumbnails (they travel with the results): the same cards.
    grids = [re.search(r'<section id="grid".*?</section>', (tmp_path / f"{name}.html").read_text(), re.S).group()
             for name in ("single", "double")]
    assert grids[0] == grids[1] and grids[0].count('class="thumb"') == len(inputs) - 1
    assert done.stderr.count("report written") == 1

    embedded = tmp_path / "double.npz"
    torchrun("embed", *inputs[:7], "-o", embedded, "--weights", xxs_checkpoint.path, tmp_path=tmp_path)
    alone = tmp_path / "single.npz"
    subprocess.run([str(MVIT), "embed", *map(str, inputs[:7]), "-o", str(alone), "--weights",
                    str(xxs_checkpoint.path)], capture_output=True, timeout=300)
    a, b = np.load(alone), np.load(embedded)
    assert a["paths"].tolist() == b["paths"].tolist() == [str(p) for p in photos[:5]] + [str(photos[5])]
    np.testing.assert_array_equal(a["features"], b["features"])
