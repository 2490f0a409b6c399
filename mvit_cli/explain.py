"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, arXiv 1610.02391): where in the image the evidence for a class is.

For a layer with activations A [C, h, w] and a class c, the map is ReLU(sum_k alpha_k A_k) with
alpha_k = mean over (h, w) of d logit_c / dA_k.

Default layer: `final_conv`, the 1x1 expansion to the F pooled features ([F, H/32, W/32]), the last spatial
map before global average pooling. The Grad-CAM paper recommends the last convolutional layer, and here the
head after it is linear (GAP, then `classifier`), so alpha_k = W[c, k] / (h * w) exactly and the map is
ReLU(CAM) / (h * w), CAM being Zhou et al.'s class activation map (2016): before the ReLU, its sum over
positions is the logit minus its bias, an exact decomposition of the class score over image regions. The other
candidate, the last MobileViT block's output (`stages.4`, [C5, H/32, W/32]), has the same resolution, so it
gains no detail, and its gradients pass through final_conv's BatchNorm and SiLU, which makes alpha only a
first-order estimate of each channel's effect on the score.
Any module path of `model.named_modules()` whose output is a [1, C, h, w] map can be chosen with `layer`.

Library code: no printing. Colours come from a small lookup table of matplotlib's 'inferno' (see `INFERNO`).
"""

from __future__ import annotations

import operator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from mvit_cli.model import MobileViT

DEFAULT_LAYER = "final_conv"

# 17 of the 256 entries of matplotlib's 'inferno' (lib/matplotlib/_cm_listed.py, `_inferno_data`, CC0; by
# Smith & van der Walt), as (index in the 256-entry table, sRGB in [0, 1]). Linear interpolation between them
# stays within 7/255 of the full table. Inferno rises monotonically in lightness from black to pale yellow,
# so brighter always means more heat, also in greyscale and for colour-blind readers. Each point's luma is
# higher than the previous one's, and luma is linear in sRGB values, so the interpolated map is monotone too.
INFERNO: tuple[tuple[int, tuple[float, float, float]], ...] = (
    (0, (0.001462, 0.000466, 0.013866)),
    (16, (0.042253, 0.028139, 0.141141)),
    (32, (0.129285, 0.047293, 0.290788)),
    (48, (0.238273, 0.036621, 0.396353)),
    (64, (0.341500, 0.062325, 0.429425)),
    (80, (0.441207, 0.099338, 0.431594)),
    (96, (0.540920, 0.134729, 0.415123)),
    (112, (0.640135, 0.171438, 0.381065)),
    (128, (0.735683, 0.215906, 0.330245)),
    (143, (0.817341, 0.270954, 0.270390)),
    (159, (0.890341, 0.347957, 0.198286)),
    (175, (0.944285, 0.442772, 0.120354)),
    (191, (0.977092, 0.550850, 0.039050)),
    (207, (0.987945, 0.667748, 0.058329)),
    (223, (0.976108, 0.789974, 0.196018)),
    (239, (0.948683, 0.910473, 0.395289)),
    (255, (0.988362, 0.998364, 0.644924)),
)

# render_explanation layout, in pixels.
PANEL_WIDTH = 320
MARGIN = 12
FONT_SIZE = 13
BAR_HEIGHT = 10
BAR_COLOR = (230, 97, 1)  # distinct from the text and track colours (the tests count its pixels)
TRACK_COLOR = (232, 232, 232)
TEXT_COLOR = (33, 33, 33)
BACKGROUND = (255, 255, 255)


@dataclass(eq=False)  # arrays have no single truth value: compare fields explicitly
class Explanation:
    class_index: int
    heatmap: np.ndarray  # [h, w] float32 in [0, 1]: `raw` divided by its max (all zeros if the max is 0)
    raw: np.ndarray  # [h, w] float32 >= 0: the ReLU'd map before normalisation
    layer: str  # module path the map was taken from, e.g. "final_conv"
    logits: torch.Tensor  # [num_classes] float32 logits of the image


def gradcam(
    model: MobileViT, image: torch.Tensor, class_index: int | None = None, layer: str = DEFAULT_LAYER
) -> Explanation:
    """Grad-CAM of one preprocessed image [3, H, W] for `class_index` (None: the top-1 class) at `layer`.

    The model is left as it was: its hook is removed afterwards, BatchNorm runs in eval mode for the call
    (training flags are restored), parameters' requires_grad and .grad are untouched. Works under no_grad
    and inference_mode: gradients are switched on locally.
    """
    module = _find_layer(model, layer)
    _check_image(image)
    if class_index is not None:
        class_index = check_class_index(class_index, model.cfg.num_classes)
    param = next(model.parameters())
    with torch.inference_mode(False), torch.enable_grad(), _eval_mode(model), _capture_outputs(module) as outputs:
        # A clone made outside inference mode is a normal tensor, usable by autograd even when `image` is an
        # inference tensor. It requires grad so that the activations are in the graph even if every
        # parameter of the model is frozen.
        x = image.detach().clone().to(param.device, param.dtype).requires_grad_(True)
        logits = model(x[None])[0]  # [1, 3, H, W] -> [1, K] -> [K]
        activation = _single_feature_map(outputs, layer)  # [1, C, h, w]
        if class_index is None:
            class_index = int(logits.argmax())
        (gradient,) = torch.autograd.grad(logits[class_index], activation)  # leaves parameters' .grad alone
    raw = _cam(activation.detach()[0], gradient[0])
    return Explanation(
        class_index=class_index,
        heatmap=_normalise(raw),
        raw=raw,
        layer=layer,
        logits=logits.detach().float().cpu(),
    )


def _cam(activation: torch.Tensor, gradient: torch.Tensor) -> np.ndarray:
    """[C, h, w] activations and gradients -> [h, w] ReLU(sum_k alpha_k A_k), float32."""
    alpha = gradient.mean(dim=(1, 2))  # [C]: global-average-pooled gradients
    cam = torch.relu(torch.einsum("c,chw->hw", alpha, activation))
    return cam.float().cpu().numpy()


def _normalise(raw: np.ndarray) -> np.ndarray:
    peak = float(raw.max())
    if peak <= 0.0:  # no positive evidence anywhere: an all-zero map rather than 0 / 0
        return np.zeros_like(raw, dtype=np.float32)
    return (raw / peak).astype(np.float32)


def _find_layer(model: nn.Module, layer: str) -> nn.Module:
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(
            f"unknown layer {layer!r}: use a module path from model.named_modules(), "
            f"e.g. 'final_conv', 'stages.4' or 'stages.3.1.fusion'"
        )
    return module


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected one preprocessed image [3, H, W], got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"expected a floating-point image, got {image.dtype}")


def check_class_index(class_index: int, num_classes: int) -> int:
    """`class_index` as an int, or ValueError when it is not an integer in 0 .. num_classes - 1."""
    if isinstance(class_index, bool):  # an int subclass, but never meant as a class
        raise ValueError(f"class_index must be an integer, got {class_index!r}")
    try:
        index = operator.index(class_index)  # int, numpy integer, 0-d integer tensor
    except TypeError:
        raise ValueError(f"class_index must be an integer, got {class_index!r}") from None
    if not 0 <= index < num_classes:
        raise ValueError(f"class_index {index} out of range: the model has classes 0..{num_classes - 1}")
    return index


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (a training-mode BatchNorm would update its running statistics)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:  # per module: a caller may have mixed modes
            m.training = training


@contextmanager
def _capture_outputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Every output of `module` during the block; the hook is removed on the way out, even on errors."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def _single_feature_map(outputs: list, layer: str) -> torch.Tensor:
    if len(outputs) != 1:
        raise ValueError(f"layer {layer!r} ran {len(outputs)} times in one forward pass; Grad-CAM needs one output")
    (output,) = outputs
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"layer {layer!r} outputs {shape}, not a spatial feature map [1, C, h, w]")
    return output


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] map -> [height, width] float32, bilinear (Pillow); `size` is (width, height) like Image.size.

    Pillow's bilinear filter has non-negative weights that sum to 1, so values stay within the map's range.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"expected a 2-d heatmap, got shape {heatmap.shape}")
    resized = Image.fromarray(heatmap).resize(tuple(size), Image.Resampling.BILINEAR)  # mode "F"
    return np.asarray(resized, dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """[...] values in [0, 1] (clipped) -> [..., 3] uint8 sRGB through the interpolated 'inferno' table."""
    positions = np.array([index for index, _ in INFERNO], dtype=np.float64) / 255.0
    colours = np.array([rgb for _, rgb in INFERNO], dtype=np.float64)  # [17, 3]
    t = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(t, positions, colours[:, k]) for k in range(3)]  # 3 x [...]
    return np.rint(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`heatmap` ([h, w] in [0, 1]) upsampled to `image`, coloured, blended: (1 - alpha) image + alpha colour.

    Pass the image the model saw (after resize and crop), so that map and pixels line up.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    colours = Image.fromarray(colorize(upsample(heatmap, rgb.size)), "RGB")
    return Image.blend(rgb, colours, alpha)


def render_explanation(
    image: Image.Image,
    explanation: Explanation,
    predictions: list[tuple[str, float]],
    alpha: float = 0.5,
    title: str | None = None,
) -> Image.Image:
    """The overlay, with a panel on its right: a title, then one bar per (label, probability), and a colour key.

    `predictions` are drawn in the order given (usually the top-k, most probable first). Returns RGB.
    """
    left = overlay(image, explanation.heatmap, alpha)
    font = _font(FONT_SIZE)
    line = _line_height(font)
    title = title or f"Grad-CAM: class {explanation.class_index} at {explanation.layer}"
    row = line + BAR_HEIGHT + MARGIN // 2  # label line, bar, gap
    panel_height = MARGIN + line + MARGIN + len(predictions) * row + MARGIN + line + BAR_HEIGHT + MARGIN
    canvas = Image.new("RGB", (left.width + PANEL_WIDTH, max(left.height, panel_height)), BACKGROUND)
    canvas.paste(left, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0, y = left.width + MARGIN, MARGIN
    width = PANEL_WIDTH - 2 * MARGIN
    draw.text((x0, y), _fit(draw, title, font, width), fill=TEXT_COLOR, font=font)
    y += line + MARGIN
    for label, probability in predictions:
        _draw_prediction(draw, (x0, y), width, label, probability, font)
        y += row
    _draw_colour_key(canvas, draw, (x0, y + MARGIN), width, font)
    return canvas


def _draw_prediction(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    width: int,
    label: str,
    probability: float,
    font: ImageFont.ImageFont,
) -> None:
    """The label and percentage on one line, a bar of length proportional to the probability below them."""
    x, y = origin
    percent = f"{100.0 * probability:.1f}%"
    percent_width = int(draw.textlength(percent, font=font))
    draw.text((x, y), _fit(draw, label, font, width - percent_width - MARGIN), fill=TEXT_COLOR, font=font)
    draw.text((x + width - percent_width, y), percent, fill=TEXT_COLOR, font=font)
    bar_y = y + _line_height(font)
    draw.rectangle((x, bar_y, x + width - 1, bar_y + BAR_HEIGHT - 1), fill=TRACK_COLOR)
    length = round(width * min(max(float(probability), 0.0), 1.0))
    if length > 0:
        draw.rectangle((x, bar_y, x + length - 1, bar_y + BAR_HEIGHT - 1), fill=BAR_COLOR)


def _draw_colour_key(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, origin: tuple[int, int], width: int, font: ImageFont.ImageFont
) -> None:
    """'low ... high' over a strip of the colour map, so the overlay's colours can be read."""
    x, y = origin
    draw.text((x, y), "low", fill=TEXT_COLOR, font=font)
    draw.text((x + width - int(draw.textlength("high", font=font)), y), "high", fill=TEXT_COLOR, font=font)
    strip = colorize(np.linspace(0.0, 1.0, width))  # [width, 3]
    strip = np.broadcast_to(strip[None], (BAR_HEIGHT, width, 3))  # [BAR_HEIGHT, width, 3]
    canvas.paste(Image.fromarray(np.ascontiguousarray(strip), "RGB"), (x, y + _line_height(font)))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # the fixed bitmap font


def _line_height(font: ImageFont.ImageFont) -> int:
    bottom = font.getbbox("Ag")[3]  # "A" reaches the top, "g" the bottom of the line
    return bottom + 4


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text`, cut and ended with '...' if it is wider than `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."
