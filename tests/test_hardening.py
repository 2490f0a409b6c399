"""Attacks on mvit, each of which once destroyed a file, hung mvit, leaked control sequences or gave a wrong answer
silently (issue 18). Every test here failed before its fix.

Special files are made by the test under a temporary folder (device nodes with mknod, which needs root; those
tests skip otherwise), never taken from /dev. Runs that could hang are real subprocesses with a timeout.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from image_corpus import corrupt_exif_tiff, encode, smooth_rgb, write_hostile_corpus, write_photo
from cli_helpers import invoke
from mvit_cli.errors import CheckpointError, ImageDecodeError
from mvit_cli.pipeline import images
from mvit_cli.pipeline.sources import ReadPolicy, read_stream

MVIT = Path(sys.executable).with_name("mvit")
pytestmark = pytest.mark.usefixtures("offline_empty_cache")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes (mknod) needs root")


@pytest.fixture(scope="module")
def model(xxs_checkpoint):
    return xxs_checkpoint.model


@pytest.fixture(scope="module")
def checkpoint(xxs_checkpoint) -> Path:
    return xxs_checkpoint.path


def mvit(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(MVIT), *map(os.fsdecode, args)], capture_output=True, timeout=timeout, **kwargs)


def device_node(path: Path, major: int, minor: int) -> Path:
    """A character device like /dev/null (1, 3) or /dev/zero (1, 5), under the test's own folder."""
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return path


# ------------------------------------------------------------------------------------ 1. export -o targets


@needs_root
def test_export_never_replaces_a_device_node(checkpoint, tmp_path):
    null = device_node(tmp_path / "null", 1, 3)
    done = mvit("export", "--weights", checkpoint, "-f", "torchscript", "-o", null, "--input-size", "64")
    assert done.returncode == 1, done.stderr
    assert b"character device" in done.stderr and b"Traceback" not in done.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)  # still the device, not a 5 MB regular file


def test_export_onto_the_weights_file_is_refused(checkpoint, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(checkpoint.read_bytes())
    link = tmp_path / "hard.pt"
    os.link(weights, link)  # another name for the same file
    for target in (weights, link):
        result = invoke("export", "--weights", str(weights), "-f", "torchscript", "-o", str(target),
                        "--input-size", "64")
        assert result.exit_code == 1 and "the weights file" in result.output, result.output
    assert weights.read_bytes() == checkpoint.read_bytes()


# ------------------------------------------------------------------------------------ 2, 3. special inputs


def test_hostile_corpus_completes_with_an_error_record_for_each_attack(checkpoint, tmp_path):
    """FIFOs (alone, in a folder, behind a symlink), device nodes, hostile names: the run ends, every readable
    image is classified, every attack is an error record that says what it is."""
    expected = write_hostile_corpus(tmp_path / "corpus", devices=os.geteuid() == 0)
    started = time.monotonic()
    done = mvit("classify", tmp_path / "corpus", "--weights", checkpoint, "--format", "json", "--workers", "1",
                timeout=120)
    assert time.monotonic() - started < 100
    assert done.returncode == 3, done.stderr
    records = {Path(r["path"]).name: r for r in json.loads(done.stdout)}
    assert sorted(records) == sorted(expected)
    for name, want in expected.items():
        record = records[name]
        if want is True:
            assert "predictions" in record, (name, record)
        else:
            assert want in record["error"], (name, record)
    assert b"Traceback" not in done.stderr and b"Warning" not in done.stderr


def test_a_fifo_named_alone_does_not_hang(checkpoint, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    done = mvit("classify", fifo, "--weights", checkpoint, "--format", "json", timeout=60)
    assert done.returncode == 3
    assert "FIFO" in json.loads(done.stdout)[0]["error"]


@needs_root
def test_dev_zero_as_input_is_refused_without_reading_it(checkpoint, tmp_path):
    zero = device_node(tmp_path / "zero.jpg", 1, 5)
    limit = 8 << 30  # enough for torch; /dev/zero read into memory would pass it within seconds

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = mvit("classify", zero, write_photo(tmp_path / "ok.png"), "--weights", checkpoint, "--format", "json",
                timeout=60, preexec_fn=limit_memory)
    assert done.returncode == 3, done.stderr
    bad, good = json.loads(done.stdout)
    assert "character device" in bad["error"] and "predictions" in good


def test_reading_stops_at_the_size_limit_of_an_endless_stream():
    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            buffer[:] = b"\0" * len(buffer)
            return len(buffer)

    with pytest.raises(ImageDecodeError, match="too large"):
        read_stream(Endless(), ReadPolicy(max_file_bytes=1 << 20))


def test_a_file_over_the_limit_is_refused_by_its_size(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\0" * 4096)
    with pytest.raises(ImageDecodeError, match="too large"):
        images.decode_image(big, policy=ReadPolicy(max_file_bytes=1024))


# ------------------------------------------------------------------------------------ 5. outputs aimed at inputs


def test_output_on_a_hard_link_to_an_input_is_refused_and_the_input_kept(checkpoint, tmp_path):
    image = write_photo(tmp_path / "a.png")
    before = image.read_bytes()
    link = tmp_path / "b.json"
    os.link(image, link)
    symlink = tmp_path / "c.json"
    symlink.symlink_to(image)
    for target in (link, symlink):
        done = mvit("classify", image, "--weights", checkpoint, "--format", "json", "-o", target)
        assert done.returncode == 1 and b"is one of the input images" in done.stderr, done.stderr
    assert image.read_bytes() == before


def test_output_that_holds_an_image_is_never_overwritten(checkpoint, tmp_path):
    image = write_photo(tmp_path / "a.png")
    other = tmp_path / "results.json"  # an image under a results-like name
    other.write_bytes(encode(smooth_rgb(20, 20, 4), "PNG"))
    before = other.read_bytes()
    done = mvit("classify", image, "--weights", checkpoint, "--format", "json", "-o", other)
    assert done.returncode == 1 and b"holds an image" in done.stderr
    assert other.read_bytes() == before


@needs_root
def test_output_to_a_device_is_refused(checkpoint, tmp_path):
    null = device_node(tmp_path / "null", 1, 3)
    done = mvit("classify", write_photo(tmp_path / "a.png"), "--weights", checkpoint, "-o", null)
    assert done.returncode == 1 and b"character device" in done.stderr


# ------------------------------------------------------------------------------------ 7. broken weights


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_with_the_tensors_name(model, tmp_path, value):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["stages.2.1.transformer.0.attn.qkv.weight"][3, 7] = value
    path = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(state, str(path), metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    from mvit_cli.checkpoints import load_checkpoint

    with pytest.raises(CheckpointError, match=r"stages\.2\.1\.transformer\.0\.attn\.qkv\.weight holds 1 "):
        load_checkpoint(path)
    result = invoke("classify", str(write_photo(tmp_path / "a.png")), "--weights", str(path))
    assert result.exit_code == 1 and "damaged" in result.output and "NaN" not in result.output.replace(
        "NaN value", "")


def test_integer_weights_are_refused(model, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.weight"] = state["classifier.weight"].to(torch.int32)
    path = tmp_path / "ints.safetensors"
    safetensors.torch.save_file(state, str(path), metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    from mvit_cli.checkpoints import load_checkpoint

    with pytest.raises(CheckpointError, match="classifier.weight holds int32 values"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------ 8. hostile names


@pytest.mark.slow
def test_control_characters_in_names_never_reach_the_terminal(checkpoint, tmp_path):
    names = ["clip\x1b]52;c;aGVsbG8=\x07.png", "red\x1b[31m.png", "two\nlines.png", "bell\x07\x9b2J.png"]
    for seed, name in enumerate(names):
        write_photo(tmp_path / "hostile" / name, seed=seed)
    (tmp_path / "hostile" / "broken\x1b[5m.png").write_bytes(b"not an image")
    for args in ((), ("--top-k", "2")):
        table = mvit("classify", tmp_path / "hostile", "--weights", checkpoint, *args)
        out = table.stdout + table.stderr
        assert table.returncode == 3
        assert b"\x1b" not in out and b"\x07" not in out and "\x9b".encode() not in out
        assert b"\\x1b]52" in table.stdout and b"two\\nlines" in table.stdout
    machine = mvit("classify", tmp_path / "hostile", "--weights", checkpoint, "--format", "json")
    paths = sorted(Path(r["path"]).name for r in json.loads(machine.stdout))  # JSON escapes them itself
    assert paths == sorted(names + ["broken\x1b[5m.png"])


# ------------------------------------------------------------------------------------ 11. a file as the cache


def test_a_cache_folder_that_is_a_file_is_one_clear_error(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("oops")
    monkeypatch.setenv("MVIT_CACHE", str(not_a_folder))
    for args in (["cache", "list"], ["cache", "clear"], ["classify", str(write_photo(tmp_path / "a.png"))],
                 ["info", "--variant", "xxs"]):
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "is a file, not a folder" in result.output and "internal error" not in result.output


# ------------------------------------------------------------------------------------ 12. library warnings


def test_library_warnings_do_not_leak_to_stderr(checkpoint, tmp_path):
    tiny = tmp_path / "tiny.tif"
    tiny.write_bytes(corrupt_exif_tiff())
    done = mvit("classify", tiny, write_photo(tmp_path / "ok.png"), "--weights", checkpoint, "--format", "jsonl")
    assert done.returncode == 3
    bad, good = map(json.loads, done.stdout.splitlines())
    assert bad["error"] and "predictions" in good
    assert b"Warning" not in done.stderr and b"warnings.warn" not in done.stderr
    assert done.stderr.decode().splitlines() == ["mvit: 1 of 2 inputs could not be classified; see their error records"]


# ------------------------------------------------------------------------------------ 14. SIGTERM


def test_sigterm_mid_run_leaves_valid_json_and_exits_143(checkpoint, tmp_path):
    for i in range(40):
        write_photo(tmp_path / "many" / f"{i:02d}.png", seed=i)
    out = tmp_path / "out.json"
    process = subprocess.Popen([str(MVIT), "classify", str(tmp_path / "many"), "--weights", str(checkpoint),
                                "--workers", "0", "--batch-size", "1", "--format", "json", "-o", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size < 200) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first records are written: the run is under way
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert err.decode().strip().splitlines()[-1] == "mvit: terminated (SIGTERM)"
    records = json.loads(out.read_text())  # the array is closed
    assert 0 < len(records) < 40


# ------------------------------------------------------------------------------------ 15. TIFF "I", link loops


def test_32_bit_integer_tiffs_are_scaled_by_their_own_range():
    values = np.full((8, 8), 1 << 30, dtype=np.int32)  # a quarter... of the signed 32-bit range: mid-grey
    values[0, 0] = (1 << 31) - 1  # white
    buffer = io.BytesIO()
    Image.fromarray(values, "I").save(buffer, "TIFF")
    decoded = np.asarray(images.decode_image(buffer.getvalue()))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[4, 4].tolist() == [128, 128, 128]  # 2^30 / (2^31 - 1) * 255 = 127.5 -> 128; was 255 (clipped)


def test_16_bit_pgm_stays_scaled_as_16_bit():
    header = b"P5\n2 1\n65535\n"
    decoded = np.asarray(images.decode_image(header + np.array([65535, 32768], ">u2").tobytes()))
    assert decoded[0].tolist() == [[255] * 3, [128] * 3]


def test_a_symlink_loop_is_named_as_such(checkpoint, tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    result = invoke("classify", str(loop), "--weights", str(checkpoint))
    assert result.exit_code == 1 and "link loop" in result.output and "no such file" not in result.output
