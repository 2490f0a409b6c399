"""`mvit explain` end to end: the map it prints is the Grad-CAM the test computes itself (hook + autograd on the
same model, on pixels the test decodes and preprocesses itself), it peaks where a constructed model's evidence
is, the PNG shows it, and its outputs are checked like every other output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
from image_corpus import encode, smooth_rgb
from PIL import Image
from test_explain import GIVEN_CLASS, assert_maps_close, model_looking_at, patch_image, reference_gradcam
from test_preprocess_parity import timm_eval_reference

from cli_helpers import invoke
from mvit_cli.labels import CLASSES

pytestmark = pytest.mark.usefixtures("offline_empty_cache")




def crop_tensor(path: Path):
    """The model's input for `path`, made here: Pillow decode, timm's eval transform written out in the test."""
    return timm_eval_reference(Image.open(path).convert("RGB"), 256, 0.9, "bicubic", (0.0,) * 3, (1.0,) * 3)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("explain") / "photo.png"
    smooth_rgb(200, 150, seed=31).save(path)
    return path


def explain_json(photo: Path, checkpoint: Path, *extra) -> dict:
    result = invoke("explain", photo, "--weights", checkpoint, "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def explained(photo, xxs_checkpoint) -> tuple[dict, Path]:
    """One run of `explain PHOTO --format json --output PNG`: the map, and the picture of the same run."""
    picture = photo.parent / "explained.png"
    return explain_json(photo, xxs_checkpoint.path, "--output", picture), picture


def test_json_map_is_the_grad_cam_computed_directly(photo, xxs_checkpoint, explained):
    data, picture = explained
    c, cam, logits = reference_gradcam(xxs_checkpoint.model, crop_tensor(photo), "final_conv")
    assert (data["class"]["index"], data["class"]["rank"], data["layer"], data["method"]) == \
        (c, 1, "final_conv", "gradcam")
    assert (data["map"]["height"], data["map"]["width"], data["map"]["cell_pixels"], data["input_size"]) == \
        (8, 8, 32, 256)
    assert_maps_close(np.array(data["map"]["raw"], dtype=np.float32), cam)
    assert_maps_close(np.array(data["map"]["heatmap"], dtype=np.float32), cam / cam.max())
    peak = data["map"]["peak"]
    assert (peak["row"], peak["col"]) == np.unravel_index(np.argmax(cam), cam.shape)
    # The top-k are classify's, digit for digit.
    classified = invoke("classify", photo, "--weights", xxs_checkpoint.path, "--format", "json")
    assert data["predictions"] == json.loads(classified.stdout)[0]["predictions"]
    assert [p["index"] for p in data["predictions"]] == logits.topk(5).indices.tolist()
    assert data["output"] == str(picture)


def test_class_option_names_a_class_by_wnid_index_or_name():
    from mvit_cli.cli.explain import _class_index

    info = CLASSES[GIVEN_CLASS]
    assert _class_index(info.wnid) == _class_index(str(GIVEN_CLASS)) == _class_index(info.name.upper()) == GIVEN_CLASS


def test_class_option_explains_that_class(photo, xxs_checkpoint):
    wnid = CLASSES[GIVEN_CLASS].wnid
    data = explain_json(photo, xxs_checkpoint.path, "--class", wnid)
    c, cam, logits = reference_gradcam(xxs_checkpoint.model, crop_tensor(photo), "final_conv", GIVEN_CLASS)
    assert (data["class"]["index"], data["class"]["wnid"]) == (GIVEN_CLASS, wnid)
    assert data["class"]["rank"] == int((logits > logits[GIVEN_CLASS]).sum()) + 1 > 1  # not the top-1
    assert_maps_close(np.array(data["map"]["raw"], dtype=np.float32), cam)


def test_the_map_peaks_where_a_constructed_models_evidence_is(xxs_checkpoint, tmp_path):
    """A model whose class scores only a patch in the top-right quadrant (test_explain's construction, made on
    the crop the pipeline will see): explain must put the heat there and say so."""
    image = patch_image(0, 1)  # flat grey, textured patch top right
    path = tmp_path / "patch.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    looking = model_looking_at(xxs_checkpoint.model, crop_tensor(path), 0, 1, GIVEN_CLASS)
    checkpoint = tmp_path / "looking.safetensors"
    safetensors.torch.save_file(looking.state_dict(), str(checkpoint),
                                metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    data = explain_json(path, checkpoint)
    assert data["class"]["index"] == GIVEN_CLASS
    raw = np.array(data["map"]["raw"])
    assert data["map"]["peak"]["row"] < 4 <= data["map"]["peak"]["col"]
    assert raw[:4, 4:].sum() > 0.99 * raw.sum()  # outside the quadrant: nothing, up to rounding

    result = invoke("explain", path, "--weights", checkpoint, "--output", tmp_path / "patch.gradcam.png")
    assert result.exit_code == 0, result.output
    assert "strongest evidence: the top right of the crop" in result.stdout


def test_picture_is_the_crop_with_the_map_and_the_top_k(photo, xxs_checkpoint, explained):
    from mvit_cli import explain

    data, written = explained
    picture = Image.open(written)
    assert picture.format == "PNG" and picture.info["Software"].startswith("mvit explain")
    assert picture.size[0] == 256 + explain.PANEL_WIDTH and picture.size[1] >= 256  # the panel may be taller
    tensor = crop_tensor(photo)
    _, cam, _ = reference_gradcam(xxs_checkpoint.model, tensor, "final_conv")
    crop = Image.fromarray((tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    expected = np.asarray(explain.overlay(crop, cam / cam.max()), dtype=np.float64)
    left = np.asarray(picture.convert("RGB"), dtype=np.float64)[:256, :256]
    assert np.abs(left - expected).max() <= 2  # lossless PNG: only the map's float rounding differs


def test_table_output_and_the_default_picture_name(photo, xxs_checkpoint, explained, tmp_path, monkeypatch):
    data, _ = explained
    monkeypatch.chdir(tmp_path)
    result = invoke("explain", photo, "--weights", xxs_checkpoint.path)
    assert result.exit_code == 0, result.output
    written = tmp_path / "photo.gradcam.png"  # the default: IMAGE's name, in the current folder
    assert written.exists() and f"heatmap: {written.name}" in result.stdout
    text = " ".join(result.stdout.split())
    assert all(f"{p['label']} ({p['wnid']}) {100 * p['probability']:.2f}%" in text for p in data["predictions"])

    # Running again replaces explain's own picture; another image is never overwritten.
    assert invoke("explain", photo, "--weights", xxs_checkpoint.path).exit_code == 0
    smooth_rgb(20, 20).save(tmp_path / "mine.png")
    before = (tmp_path / "mine.png").read_bytes()
    refused = invoke("explain", photo, "--weights", xxs_checkpoint.path, "-o", tmp_path / "mine.png")
    assert refused.exit_code == 1 and "did not make" in refused.stderr
    assert (tmp_path / "mine.png").read_bytes() == before


def test_stdin_and_hostile_names_get_plain_default_names(photo, xxs_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("explain", "-", "--weights", xxs_checkpoint.path, input=photo.read_bytes())
    assert result.exit_code == 0, result.output
    assert (tmp_path / "stdin.gradcam.png").exists()
    hostile = tmp_path / "in" / "a b<c>'\n.png"
    hostile.parent.mkdir()
    hostile.write_bytes(photo.read_bytes())
    assert invoke("explain", hostile, "--weights", xxs_checkpoint.path).exit_code == 0
    assert (tmp_path / "a_b_c___.gradcam.png").exists()


@pytest.mark.parametrize("case", ["undecodable", "folder", "wnid", "index", "name", "ambiguous", "not-png",
                                  "the-input", "device"])
def test_mistakes_are_one_line_and_write_nothing(case, photo, xxs_checkpoint, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    as_png = tmp_path / "input.png"
    as_png.write_bytes(encode(smooth_rgb(40, 30), "PNG"))
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.png", "b.png"):
        (two / name).write_bytes(as_png.read_bytes())
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    args, code, needle = {
        "undecodable": ([broken], 3, "broken.png"),
        "folder": ([two], 1, "one image"),
        "wnid": ([photo, "--class", "n99999999"], 1, "not one of the 1000"),
        "index": ([photo, "--class", "1000"], 1, "0 to 999"),
        "name": ([photo, "--class", "unicorn"], 1, "expected a WordNet id"),
        "ambiguous": ([photo, "--class", "crane"], 1, "n02012849"),
        "not-png": ([photo, "-o", tmp_path / "x.jpg"], 1, ".png"),
        "the-input": ([as_png, "-o", as_png], 1, "the image being explained"),
        "device": ([photo, "-o", fifo], 1, "FIFO"),
    }[case]
    before = as_png.read_bytes()
    result = invoke("explain", *args, "--weights", xxs_checkpoint.path, "--format", "json")
    assert result.exit_code == code, result.output
    message = result.stderr.strip()
    assert message.startswith("mvit:") and "\n" not in message and "Traceback" not in message and needle in message
    assert result.stdout == "" and as_png.read_bytes() == before
