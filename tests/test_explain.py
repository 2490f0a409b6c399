"""Grad-CAM (mvit_cli/explain.py) against oracles that do not share its code.

1. the same map computed here with a forward hook and torch.autograd.grad, for several layers and classes;
2. the closed form at final_conv: the head is GAP + linear, so alpha_k = W[c, k] / (h * w) exactly;
3. a model whose class evidence is, by construction, only in one quadrant of the image;
4. the model is left as it was (weights, hooks, flags), also under no_grad and inference_mode;
5. overlay, colour map and rendering; 6. errors.
"""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mvit_cli import explain
from mvit_cli.explain import DEFAULT_LAYER, INFERNO, colorize, gradcam, overlay, render_explanation, upsample
from mvit_cli.model import build_model
from mvit_cli.random_weights import randomize_, structured_images
from image_corpus import smooth_rgb

SIZE = 256
GIVEN_CLASS = 417  # any class; the random model's top-1 for the test image is a different one (asserted)


@pytest.fixture(scope="module")
def model():
    """A random XXS model with realistic activations; tests that change it work on a deep copy."""
    return randomize_(build_model("xxs"), seed=11)


@pytest.fixture(scope="module")
def image():
    return structured_images(1, size=SIZE, seed=4)[0]  # [3, 256, 256] in [0, 1]


@pytest.fixture(scope="module")
def explained(model, image):
    """The default explanation (top-1 class, DEFAULT_LAYER); test 1 checks it against the direct computation."""
    return gradcam(model, image)


def reference_gradcam(model, image, layer, class_index=None):
    """Grad-CAM written out directly: hook the layer, differentiate the logit, pool, weight, ReLU."""
    module = dict(model.named_modules())[layer]
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = model(image[None].clone())[0]
    finally:
        handle.remove()
    c = int(logits.argmax()) if class_index is None else class_index
    activation = captured[0]  # [1, C, h, w]
    (grad,) = torch.autograd.grad(logits[c], activation)
    alpha = grad[0].sum(dim=(1, 2)) / (grad.shape[2] * grad.shape[3])  # [C]
    cam = torch.clamp((alpha[:, None, None] * activation[0]).sum(dim=0), min=0)  # [h, w]
    return c, cam.detach().numpy(), logits.detach()


def assert_maps_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding, relative to the map's peak (sums of hundreds of products)."""
    assert actual.shape == expected.shape
    assert expected.max() > 0  # a vacuous all-zero comparison proves nothing
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.max()))


# 1. A direct autograd computation ---------------------------------------------------------------------------


STRIDES = {"final_conv": 32, "stages.4": 32, "stages.3": 16}


@pytest.mark.parametrize("layer", list(STRIDES))
@pytest.mark.parametrize("class_index", [None, GIVEN_CLASS])
def test_map_matches_direct_autograd(model, image, explained, layer, class_index):
    c, expected, logits = reference_gradcam(model, image, layer, class_index)
    if class_index is None and layer == DEFAULT_LAYER:
        result = explained  # the shared fixture: checked here once, trusted by the tests below
    else:
        result = gradcam(model, image, class_index=class_index, layer=layer)
    assert result.class_index == c
    assert result.layer == layer
    assert result.heatmap.shape == (SIZE // STRIDES[layer],) * 2
    assert_maps_close(result.raw, expected)
    assert_maps_close(result.heatmap, expected / expected.max())
    assert result.heatmap.dtype == result.raw.dtype == np.float32
    torch.testing.assert_close(result.logits, logits, rtol=1e-6, atol=1e-5)
    if class_index is None:
        assert c != GIVEN_CLASS  # so the two parametrisations explain different classes


# 2. Closed form at final_conv -------------------------------------------------------------------------------


@pytest.mark.parametrize("class_index", [None, GIVEN_CLASS])
def test_final_conv_map_is_class_activation_map(model, image, class_index):
    """logit_c = b_c + sum_k W[c, k] mean_ij A_k(i, j), so dlogit_c / dA_k(i, j) = W[c, k] / (h * w) everywhere."""
    result = gradcam(model, image, class_index=class_index)  # DEFAULT_LAYER is final_conv
    with torch.no_grad():
        features = model.forward_features(image[None])[0].double()  # [F, h, w]
        logits = model(image[None])[0]
    c = int(logits.argmax()) if class_index is None else class_index
    h, w = features.shape[1:]
    assert result.layer == "final_conv"
    weights = model.classifier.weight[c].detach().double()  # [F]
    expected = torch.relu(torch.einsum("k,khw->hw", weights, features)) / (h * w)
    assert result.class_index == c
    assert_maps_close(result.raw, expected.float().numpy())


# 3. Evidence in a known region ------------------------------------------------------------------------------

QUADRANT = SIZE // 2
PATCH_MARGIN = 16  # the textured patch is the quadrant minus this margin on every side
CELL = 32  # final_conv's stride: one map cell per 32 x 32 pixels


def patch_image(row: int, col: int) -> torch.Tensor:
    """Flat grey, with a textured 96 x 96 patch in quadrant (row, col)."""
    image = torch.full((3, SIZE, SIZE), 0.5)
    side = QUADRANT - 2 * PATCH_MARGIN
    texture = torch.from_numpy(np.asarray(smooth_rgb(side, side, seed=row * 2 + col), dtype=np.float32) / 255)
    y, x = row * QUADRANT + PATCH_MARGIN, col * QUADRANT + PATCH_MARGIN
    image[:, y : y + side, x : x + side] = texture.permute(2, 0, 1)  # [side, side, 3] -> [3, side, side]
    return image


def model_looking_at(model, image: torch.Tensor, row: int, col: int, class_index: int):
    """A copy of `model` whose class `class_index` scores only the cells of quadrant (row, col).

    Its classifier row is the mean final_conv feature of the cells fully inside the patch, projected onto the
    orthogonal complement of the features of every cell outside the quadrant (48 vectors in R^320, so the
    projection exists). Then W[c] . A(i, j) is 0 up to rounding at every cell outside the quadrant and has a
    positive mean over the patch cells: the true map is known exactly, with no margin to tune, so the test
    cannot be flaky. The bias makes the class the top-1 (it does not change the map).
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        features = model.forward_features(image[None])[0].double()  # [F, 8, 8]
    cells = torch.zeros(features.shape[1:], dtype=torch.bool)  # [8, 8]
    q = QUADRANT // CELL  # 4 cells per quadrant side
    inside = (slice(row * q, (row + 1) * q), slice(col * q, (col + 1) * q))
    cells[inside] = True
    patch = torch.zeros_like(cells)  # the 2 x 2 cells fully covered by the patch
    patch[row * q + 1 : row * q + 3, col * q + 1 : col * q + 3] = True
    flat = features.flatten(1)  # [F, 8, 8] -> [F, 64]
    outside = flat[:, ~cells.flatten()]  # [F, 48]
    basis, _ = torch.linalg.qr(outside)  # [F, 48], orthonormal columns spanning the outside features
    target = flat[:, patch.flatten()].mean(dim=1)  # [F]
    weight = target - basis @ (basis.T @ target)
    with torch.no_grad():
        model.classifier.weight[class_index] = weight.float()
        logits = model(image[None])[0]
        model.classifier.bias[class_index] += logits.max() - logits[class_index] + 1.0
    return model


@pytest.mark.parametrize(("row", "col"), [(0, 1), (1, 0)], ids=["top-right", "bottom-left"])
def test_heat_lies_where_the_evidence_is(model, row, col):
    """Off-diagonal quadrants: a transposed, flipped (either axis) or rotated map puts the heat elsewhere."""
    image = patch_image(row, col)
    looking = model_looking_at(model, image, row, col, GIVEN_CLASS)
    result = gradcam(looking, image, layer="final_conv")  # where the construction makes the map exact
    assert result.class_index == GIVEN_CLASS
    heat = upsample(result.heatmap, (SIZE, SIZE))  # [256, 256]

    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert (y // QUADRANT, x // QUADRANT) == (row, col)

    patch = np.zeros(heat.shape, dtype=bool)
    y0, x0 = row * QUADRANT + PATCH_MARGIN, col * QUADRANT + PATCH_MARGIN
    patch[y0 : y0 + QUADRANT - 2 * PATCH_MARGIN, x0 : x0 + QUADRANT - 2 * PATCH_MARGIN] = True
    assert heat[patch].mean() > 5 * heat[~patch].mean()

    # Beyond half a cell from the quadrant, bilinear interpolation only mixes cells outside it: no heat.
    far = np.ones(heat.shape, dtype=bool)
    near = (slice(max(row * QUADRANT - CELL // 2, 0), (row + 1) * QUADRANT + CELL // 2),
            slice(max(col * QUADRANT - CELL // 2, 0), (col + 1) * QUADRANT + CELL // 2))
    far[near] = False
    assert heat[far].max() < 1e-4


# 4. The model is left as it was -----------------------------------------------------------------------------


def hooks_of(model) -> list[str]:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [f"{name}.{kind}" for name, m in model.named_modules() for kind in kinds if getattr(m, kind, None)]


@pytest.mark.parametrize("frozen_params", ["none", "mixed", "all"])
def test_model_is_unchanged(model, image, explained, frozen_params):
    frozen = copy.deepcopy(model)
    if frozen_params == "all":  # model.requires_grad_(False), common for inference: gradients must still flow
        frozen.requires_grad_(False)
    elif frozen_params == "mixed":  # including a frozen final_conv and classifier
        for i, p in enumerate(frozen.parameters()):
            p.requires_grad_(i % 2 == 0)
        frozen.final_conv.requires_grad_(False)
        frozen.classifier.requires_grad_(False)
    flags = [p.requires_grad for p in frozen.parameters()]
    state = {k: v.clone() for k, v in frozen.state_dict().items()}

    result = gradcam(frozen, image)

    assert hooks_of(frozen) == []
    assert [p.requires_grad for p in frozen.parameters()] == flags
    assert all(p.grad is None for p in frozen.parameters())
    after = frozen.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert result.class_index == explained.class_index
    assert_maps_close(result.raw, explained.raw)  # frozen parameters: still the same map


def test_training_mode_is_restored_and_batchnorm_statistics_kept(model, image, explained):
    training = copy.deepcopy(model).train()
    training.stages[2].eval()  # mixed modes must come back as they were, module by module
    modes = [m.training for m in training.modules()]
    stats = {k: v.clone() for k, v in training.state_dict().items() if "running" in k or "num_batches" in k}
    result = gradcam(training, image)
    assert [m.training for m in training.modules()] == modes
    assert all(torch.equal(training.state_dict()[k], v) for k, v in stats.items())
    assert_maps_close(result.raw, explained.raw)  # computed in eval mode


def test_hook_is_removed_when_the_layer_is_not_spatial(model, image):
    with pytest.raises(ValueError, match=re.escape("'classifier'")):
        gradcam(model, image, layer="classifier")  # [1, 1000]: no map
    assert hooks_of(model) == []


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_works_without_grad_mode(model, image, explained, context):
    expected = explained
    with context():
        inner = image.clone()  # under inference_mode: an inference tensor, unusable by autograd as it is
        result = gradcam(model, inner)
        assert hooks_of(model) == []
    assert result.class_index == expected.class_index
    np.testing.assert_array_equal(result.raw, expected.raw)
    assert not result.logits.requires_grad


def test_all_zero_map_when_nothing_is_positive(model, image):
    """A class with a zero classifier row has zero gradients: the map is all zeros, not 0 / 0 = NaN."""
    blind = copy.deepcopy(model)
    with torch.no_grad():
        blind.classifier.weight[GIVEN_CLASS] = 0.0
    result = gradcam(blind, image, class_index=GIVEN_CLASS)
    assert not result.raw.any() and not result.heatmap.any()
    assert result.heatmap.dtype == np.float32


# 5. Overlay, colour map, rendering --------------------------------------------------------------------------


def test_colour_map_is_inferno_and_rises_in_luminance():
    positions = np.array([index for index, _ in INFERNO]) / 255
    expected = np.rint(np.array([rgb for _, rgb in INFERNO]) * 255)
    np.testing.assert_array_equal(colorize(positions), expected)
    # Matplotlib's inferno at 0, 0.5 (entry 128) and 1, 8-bit: dark, a red-purple, pale yellow.
    reference = [[0, 0, 4], [188, 55, 84], [252, 255, 164]]
    np.testing.assert_array_equal(colorize(np.array([0.0, 128 / 255, 1.0])), reference)
    # The greyscale a reader sees (Pillow's ITU-R 601 luma) never falls and spans almost the whole range.
    strip = Image.fromarray(colorize(np.linspace(0, 1, 256))[None], "RGB")  # [1, 256, 3]
    luma = np.asarray(strip.convert("L"), dtype=int)[0]
    assert (np.diff(luma) >= 0).all()
    assert luma[0] < 5 and luma[-1] > 240
    # Values outside [0, 1] are clipped, not wrapped or extrapolated.
    np.testing.assert_array_equal(colorize(np.array([-3.0, 7.0])), colorize(np.array([0.0, 1.0])))


def test_upsample_size_order_range_and_orientation():
    heatmap = np.zeros((4, 8), dtype=np.float32)
    heatmap[0, 7] = 1.0  # top-right cell
    big = upsample(heatmap, (80, 40))  # (width, height), like Image.size
    assert big.shape == (40, 80) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0
    y, x = np.unravel_index(np.argmax(big), big.shape)
    assert y < 10 and x >= 70
    np.testing.assert_allclose(upsample(np.full((3, 5), 0.25, np.float32), (50, 30)), 0.25, rtol=1e-6)


def test_overlay_blends_the_colour_map_over_the_image():
    image = smooth_rgb(200, 150, seed=1)  # not square: a swapped width/height would show
    heatmap = np.zeros((6, 8), dtype=np.float32)
    heatmap[1, 6] = 1.0
    blended = overlay(image, heatmap, alpha=0.5)
    assert blended.mode == "RGB" and blended.size == image.size

    hot = (150 * 1 // 6 + 12, 200 * 6 // 8 + 12)  # (y, x): the centre of the hot cell
    original = np.asarray(image, dtype=int)
    pixels = np.asarray(blended, dtype=int)
    assert (pixels[hot] != original[hot]).any()
    hot_colour = colorize(upsample(heatmap, image.size)[hot])
    np.testing.assert_allclose(pixels[hot], (original[hot] + hot_colour) / 2, atol=1)

    assert np.array_equal(np.asarray(overlay(image, heatmap, alpha=0.0)), original)
    only_colour = np.asarray(overlay(image, heatmap, alpha=1.0))
    np.testing.assert_array_equal(only_colour, colorize(upsample(heatmap, image.size)))
    assert overlay(image.convert("L"), heatmap).mode == "RGB"
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heatmap, alpha=1.5)


def bar_lengths(rendered: Image.Image) -> list[int]:
    """Lengths of the probability bars, top to bottom: runs of rows that contain the bar colour."""
    mask = (np.asarray(rendered) == explain.BAR_COLOR).all(axis=2)  # [H, W]
    per_row = mask.sum(axis=1)
    lengths, previous = [], 0
    for count in per_row:
        if count and not previous:
            lengths.append(int(count))
        previous = count
    return lengths


def test_render_puts_the_overlay_beside_bars_of_the_probabilities(image, explained):
    result = explained
    picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))  # [H, W, 3]
    predictions = [("Egyptian cat", 0.6), ("tabby, tabby cat", 0.3), ("tiger cat", 0.075), ("lynx", 0.0)]
    rendered = render_explanation(picture, result, predictions)
    assert rendered.mode == "RGB"
    assert rendered.width > picture.width and rendered.height >= picture.height
    left = np.asarray(rendered)[: picture.height, : picture.width]
    np.testing.assert_array_equal(left, np.asarray(overlay(picture, result.heatmap)))

    lengths = bar_lengths(rendered)
    assert len(lengths) == 3  # a zero probability draws no bar
    assert lengths[0] / lengths[1] == pytest.approx(2, abs=0.02)  # 0.6 / 0.3, to a pixel
    assert lengths[1] / lengths[2] == pytest.approx(4, abs=0.1)  # 0.3 / 0.075


def test_render_fits_a_small_image_and_long_labels(explained):
    result = explained
    picture = smooth_rgb(40, 30)
    predictions = [("a label far too long to fit in the panel beside the picture " * 3, 0.5)] * 5
    rendered = render_explanation(picture, result, predictions, title="custom")
    assert rendered.mode == "RGB"
    assert rendered.height > picture.height  # the panel needs more room than the image gives
    assert len(bar_lengths(rendered)) == 5
    rendered.save(io.BytesIO(), "PNG")


# 6. Errors --------------------------------------------------------------------------------------------------


def test_unknown_layer_is_named(model, image):
    with pytest.raises(ValueError, match=re.escape("'stages.9'")):
        gradcam(model, image, layer="stages.9")
    assert hooks_of(model) == []


@pytest.mark.parametrize("class_index", [1000, -1, 10**6])
def test_class_index_out_of_range(model, image, class_index):
    with pytest.raises(ValueError, match=f"class_index {class_index} out of range"):
        gradcam(model, image, class_index=class_index)


@pytest.mark.parametrize("bad", [True, 2.0, "3"])
def test_class_index_must_be_an_integer(model, image, bad):
    with pytest.raises(ValueError, match="class_index must be an integer"):
        gradcam(model, image, class_index=bad)


def test_class_index_accepts_numpy_integers(model):
    small = structured_images(1, size=64, seed=1)[0]
    assert gradcam(model, small, class_index=np.int64(GIVEN_CLASS)).class_index == GIVEN_CLASS


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (64, 64), (4, 64, 64)])
def test_image_must_be_one_rgb_tensor(model, shape):
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        gradcam(model, torch.zeros(shape))
