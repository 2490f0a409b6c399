"""Decoding: every image a user may have becomes upright 8-bit RGB; every bad input a clear ImageDecodeError."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from image_corpus import (
    animated_gif,
    decompression_bomb_png,
    encode,
    exif_rotated_jpeg,
    in_mode,
    png_16bit_gray,
    png_16bit_rgb,
    smooth_rgb,
)
from PIL import Image

from mvit_cli.errors import ImageDecodeError
from mvit_cli.pipeline.images import decode_image, to_rgb
from mvit_cli.preprocess import Preprocessing, preprocess

WHITE = np.array([255, 255, 255])


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.int16)


def test_rgb_png_is_returned_as_is():
    image = smooth_rgb(40, 30)
    assert np.array_equal(pixels(decode_image(encode(image, "PNG"))), pixels(image))


def test_decodes_by_content_not_by_name(tmp_path):
    image = smooth_rgb(40, 30)
    (tmp_path / "really_a_png.jpg").write_bytes(encode(image, "PNG"))
    (tmp_path / "no_extension").write_bytes(encode(image, "PNG"))
    for name in ("really_a_png.jpg", "no_extension"):
        assert np.array_equal(pixels(decode_image(tmp_path / name)), pixels(image))


def test_rgba_is_composited_on_white():
    rgba = in_mode("RGBA", 64, 48)
    out = pixels(decode_image(encode(rgba, "PNG")))
    source = np.asarray(rgba, dtype=np.float64)
    alpha = source[..., 3:] / 255
    expected = source[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(out - expected).max() <= 1  # Pillow's alpha_composite rounds in integers
    assert (out[0, 0] == WHITE).all()  # alpha 0: pure background, whatever the hidden colour
    assert np.array_equal(out[-1, -1], source[-1, -1, :3])  # alpha 255: the colour itself


def test_la_is_composited_on_white_as_grey():
    la = in_mode("LA", 32, 32)
    out = pixels(decode_image(encode(la, "PNG")))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (out[0, 0] == WHITE).all()
    assert out[-1, -1, 0] == np.asarray(la)[-1, -1, 0]


def test_palette_with_transparency_turns_transparent_pixels_white():
    image = in_mode("PT", 30, 20)
    clear = np.asarray(image) == image.info["transparency"]
    out = pixels(decode_image(encode(image, "GIF")))
    assert clear.any() and (~clear).any()
    assert (out[clear] == WHITE).all()
    opaque = np.asarray(image.convert("RGB"), dtype=np.int16)[~clear]
    assert np.array_equal(out[~clear], opaque)


def test_palette_and_grayscale_and_cmyk_become_rgb():
    for mode, fmt in (("P", "PNG"), ("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("YCbCr", "JPEG")):
        source = in_mode(mode, 33, 21)
        out = decode_image(encode(source, fmt))
        assert out.mode == "RGB" and out.size == (33, 21), mode
    cmyk = in_mode("CMYK", 48, 32)
    out = pixels(decode_image(encode(cmyk, "JPEG", quality=100)))
    assert np.abs(out - pixels(cmyk.convert("RGB"))).mean() < 3  # same colours, up to JPEG noise


def test_16_bit_grey_is_scaled_not_clipped():
    data, expected = png_16bit_gray(50, 40)
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    out = pixels(decode_image(data))
    assert np.array_equal(out[..., 0], expected)
    assert expected.min() < 100 and expected.max() > 150  # a real range, which clipping would flatten to 255


def test_16_bit_rgb_keeps_its_colours():
    out = pixels(decode_image(png_16bit_rgb(30, 20)))
    assert np.array_equal(out, pixels(smooth_rgb(30, 20)))


def test_32_bit_integer_and_float_modes():
    values = np.array([[0, 257 * 100, 65535, 70000]], dtype=np.int32)
    assert pixels(to_rgb(Image.fromarray(values, "I")))[0, :, 0].tolist() == [0, 100, 255, 255]
    floats = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    assert pixels(to_rgb(Image.fromarray(floats, "F")))[0, :, 0].tolist() == [0, 128, 255, 255]


def test_animated_gif_gives_its_first_frame():
    out = pixels(decode_image(animated_gif(40, 30)))
    first_alone = pixels(decode_image(encode(smooth_rgb(40, 30, 1), "GIF")))
    assert np.array_equal(out, first_alone)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    upright = smooth_rgb(64, 48)
    data = exif_rotated_jpeg(upright, orientation)
    stored = Image.open(__import__("io").BytesIO(data)).convert("RGB")
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
    out = decode_image(data)
    assert out.size == (64, 48)
    assert np.array_equal(pixels(out), pixels(stored.transpose(undo[orientation])))
    assert np.abs(pixels(out) - pixels(upright)).mean() < 3
    kept = decode_image(data, exif_transpose=False)
    assert np.array_equal(pixels(kept), pixels(stored))


def test_tiny_and_extreme_images_preprocess():
    p = Preprocessing(284, "bicubic", 256)
    for size in ((1, 1), (4000, 10), (10, 4000), (2, 3)):
        x = preprocess(decode_image(encode(smooth_rgb(*size), "PNG")), p)
        assert x.shape == (3, 256, 256) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file"),
        (b"just some text, named like an image\n" * 10, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
        (decompression_bomb_png(), "decompression-bomb"),
    ],
    ids=["empty", "text", "png-signature-only", "bomb"],
)
def test_bad_inputs_are_decode_errors(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_files_are_decode_errors(fmt):
    data = encode(smooth_rgb(96, 64), fmt)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data[: len(data) // 2])
    assert "truncated" in str(caught.value) or "corrupt" in str(caught.value) or "not an image" in str(caught.value)


def test_unreadable_paths_are_decode_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="is a directory"):
        decode_image(tmp_path)


def test_bomb_guard_stays_on():
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0
    with pytest.raises(ImageDecodeError):
        decode_image(decompression_bomb_png())
    assert Image.MAX_IMAGE_PIXELS is not None


def test_eps_is_not_handed_to_ghostscript():
    """Pillow would run Ghostscript on EPS files; mvit does not open them at all."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(eps)


def test_decoding_on_another_thread_leaves_this_threads_warning_filters_alone():
    # Regression: decode_image scoped its filter for Pillow's size warning with warnings.catch_warnings, which is
    # not thread-safe. Once decoding ran on threads, a decode that began before another thread's catch_warnings
    # block and ended inside it put back the filter list it had saved, wiping that block's filters: the tracer's
    # silenced warnings reappeared on stderr in `classify`.
    photo = encode(smooth_rgb(1400, 1400, seed=3), "PNG")
    stop = threading.Event()

    def decode_continuously():
        while not stop.is_set():
            decode_image(photo)

    decoder = threading.Thread(target=decode_continuously)
    decoder.start()
    try:
        for _ in range(5):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                time.sleep(0.1)  # several decodes begin and end inside this block
                with pytest.raises(UserWarning):
                    warnings.warn("this block turns warnings into errors", UserWarning)
    finally:
        stop.set()
        decoder.join()


def test_decoders_on_many_threads_install_the_size_warning_filter_once():
    photo = encode(smooth_rgb(300, 200, seed=4), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # something else in front, as pytest or a user may put there
        threads = [threading.Thread(target=lambda: [decode_image(photo) for _ in range(40)]) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ours = [f for f in warnings.filters if f[0] == "ignore" and f[2] is Image.DecompressionBombWarning]
        assert len(ours) == 1 and warnings.filters[0] is ours[0]
