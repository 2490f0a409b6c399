"""`mvit classify` against what real file systems and shells hand it: names that are not UTF-8, folders it may
not read, an --output that is one of the inputs, patterns that match nothing, a closed stdin, Ctrl-C.
Each case: the other images still get their results, and the user gets one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from image_corpus import write_photo

MVIT = Path(sys.executable).with_name("mvit")
pytestmark = pytest.mark.usefixtures("offline_empty_cache")


@pytest.fixture(scope="module")
def checkpoint(xxs_checkpoint) -> Path:
    return xxs_checkpoint.path


def mvit(*args, checkpoint: Path, unprivileged: bool = False, **kwargs) -> subprocess.CompletedProcess:
    command = [str(MVIT), "classify", *map(os.fsdecode, args), "--weights", str(checkpoint), "--workers", "0"]
    if unprivileged and os.geteuid() == 0:  # root reads everything: drop the capabilities that allow it
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to test permissions as root")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *command]
    return subprocess.run(command, capture_output=True, timeout=300, **kwargs)


def test_file_names_that_are_not_utf8_still_give_valid_json(tmp_path, checkpoint):
    folder = tmp_path / "latin"
    write_photo(folder / "ok.png")
    write_photo(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")), seed=1)  # Latin-1 name: legal on Linux
    done = mvit(folder, "--format", "json", checkpoint=checkpoint)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout.decode("utf-8"))  # strict UTF-8
    assert sorted(Path(r["path"]).name for r in records) == ["caf\\xe9.png", "ok.png"]
    assert all("predictions" in r for r in records)


def test_unreadable_folder_is_an_error_record_and_the_rest_is_classified(tmp_path, checkpoint):
    good = write_photo(tmp_path / "photos" / "a.png")
    locked = tmp_path / "photos" / "locked"
    write_photo(locked / "b.png")
    locked.chmod(0)
    try:
        done = mvit(tmp_path / "photos", "--format", "json", checkpoint=checkpoint, unprivileged=True)
        explicit = mvit(good, locked / "b.png", "--format", "json", checkpoint=checkpoint, unprivileged=True)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 3, done.stderr
    records = {Path(r["path"]).name: r for r in json.loads(done.stdout)}
    assert "predictions" in records["a.png"] and "permission denied" in records["locked"]["error"]
    assert explicit.returncode == 3, explicit.stderr  # a file inside it, named explicitly
    a, b = json.loads(explicit.stdout)
    assert "predictions" in a and "permission denied" in b["error"]


def test_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, checkpoint):
    image = write_photo(tmp_path / "victim.png")
    before = image.read_bytes()
    done = mvit(image, "--format", "json", "--output", image, checkpoint=checkpoint)
    assert done.returncode == 1
    assert b"is one of the input images" in done.stderr and b"Traceback" not in done.stderr
    assert image.read_bytes() == before


def test_output_into_a_missing_folder_is_a_usage_error(tmp_path, checkpoint):
    image = write_photo(tmp_path / "a.png")
    done = mvit(image, "--output", tmp_path / "nowhere" / "out.json", checkpoint=checkpoint)
    assert done.returncode == 1 and b"does not exist" in done.stderr


def test_pattern_matching_nothing_is_named_on_stderr(tmp_path, checkpoint):
    image = write_photo(tmp_path / "a.png")
    done = mvit(image, str(tmp_path / "*.jgp"), "--format", "jsonl", checkpoint=checkpoint)
    assert done.returncode == 0
    assert b"matched no images" in done.stderr and b"*.jgp" in done.stderr
    assert len(done.stdout.splitlines()) == 1


def test_closed_stdin_is_a_usage_error(checkpoint):
    done = mvit("-", checkpoint=checkpoint, preexec_fn=lambda: os.close(0))
    assert done.returncode == 1
    assert b"stdin is closed" in done.stderr and b"Traceback" not in done.stderr


def test_ctrl_c_says_interrupted_and_exits_130(tmp_path, checkpoint):
    for i in range(40):
        write_photo(tmp_path / "many" / f"{i:02d}.png", seed=i)
    process = subprocess.Popen(
        [str(MVIT), "classify", str(tmp_path / "many"), "--weights", str(checkpoint), "--workers", "0",
         "--batch-size", "1", "--format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()  # the first result is out: the run is under way
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=120)
    assert json.loads(first)["path"].endswith("00.png")
    assert process.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "mvit: interrupted"
