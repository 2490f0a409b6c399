"""Random weights that behave like trained ones, for benchmarks (`mvit bench` without weights) and tests.

Randomise every parameter and buffer of a model, keeping activations in a realistic range. Default
initialisation hides mapping mistakes (BatchNorm stats of 0/1, LayerNorm affine of 1/0, zero
biases make swapped weight/bias or q/k/v pairs look equal) and transformers' default init produces denormal
floats that are slow and hide errors (some CPUs run several times slower on them, which would misreport the
speed of real weights). Here every tensor gets distinct random values whose scale keeps each layer's output
near unit variance, so logits spread widely but stay finite.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def random_model(variant: str, seed: int = 0) -> nn.Module:
    """A MobileViT of `variant` with realistic random weights (`randomize_`), in eval mode."""
    from mvit_cli.model import build_model

    return randomize_(build_model(variant), seed=seed).eval()


def synthetic_photo(width: int, height: int, seed: int = 0):
    """A PIL RGB picture closer to a photo than noise (a smooth colour field with fine texture), for benchmarks
    that need image files where no real photos are at hand."""
    from PIL import Image

    size = max(width, height)
    pixels = structured_images(1, size, seed=seed)[0, :, :height, :width]
    return Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype("uint8"), "RGB")


def structured_images(n: int = 8, size: int = 256, seed: int = 0) -> torch.Tensor:
    """[n, 3, size, size] in [0, 1]: smooth colour fields with edges, closer to photos than white noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=gen)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images = images + 0.1 * torch.rand(n, 3, size, size, generator=gen)
    return images.clamp(0, 1)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, calibrate: bool = True) -> nn.Module:
    """Random values for every parameter and buffer.

    With `calibrate`, BatchNorm running statistics are first measured on structured images (so every
    layer sees normalised activations and the logits depend on the image, as with trained weights) and then
    perturbed randomly, so they are still distinct, non-default values.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64).mul_(std).add_(mean).to(t.dtype))

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_((torch.rand(t.shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(t.dtype))

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            normal(module.weight, math.sqrt(1.0 / fan_in))
            if module.bias is not None:
                normal(module.bias, 0.1)
        elif isinstance(module, nn.BatchNorm2d):
            uniform(module.weight, 0.5, 1.5)
            normal(module.bias, 0.2)
            normal(module.running_mean, 0.2)
            uniform(module.running_var, 0.5, 2.0)
        elif isinstance(module, nn.LayerNorm):
            uniform(module.weight, 0.5, 1.5)
            normal(module.bias, 0.2)
    if calibrate:
        calibrate_batchnorm(model, structured_images(seed=seed))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(0.05 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.mul_(torch.empty(module.running_var.shape).uniform_(0.8, 1.25, generator=gen))
    # Anything not covered above (a parameter of an unfamiliar module type) must still be random.
    for name, p in model.named_parameters():
        if p.dim() == 0 or bool((p == p.flatten()[0]).all()):
            normal(p, 0.1)
    return model


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of `images` passing through `model` (one pass)."""
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration pass
    # Only the BatchNorms in training mode: dropout (transformers' configs have some) must stay off, or the
    # statistics would depend on the global RNG and differ from run to run (and from eval-time activations).
    model.eval()
    for m in norms:
        m.train()
    model(images)
    for m in norms:
        m.momentum = 0.1
    model.train(was_training)
