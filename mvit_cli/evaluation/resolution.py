"""Resolution studies: another input size, crop fraction or resampling filter than the weight source's protocol.

timm's rule, the one its published figures use: resize the shorter side to floor(input_size / crop_pct), then
centre-crop input_size. Whatever is not overridden comes from the weight source's protocol (its crop fraction,
its filter, its crop rounding). A figure published for the weights is comparable only when the result equals
the source's own protocol exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mvit_cli import manifest
from mvit_cli.errors import InvalidValueError
from mvit_cli.preprocess import Preprocessing

INTERPOLATIONS = ("bicubic", "bilinear")
MIN_INPUT_SIZE = 32  # the network's output stride: below it the last feature map has no pixel
MAX_INPUT_SIZE = 2048
MIN_CROP_PCT = 0.1  # the centre tenth of the picture; below, the resized image alone outgrows any use


@dataclass(frozen=True)
class Resolution:
    """What the user overrides; None keeps the weight source's value."""

    input_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None

    def check(self) -> None:
        """Raise InvalidValueError for values no protocol can have (before any work is done)."""
        if self.input_size is not None and not MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE:
            raise InvalidValueError("input_size", self.input_size,
                                    f"must be {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels")
        if self.crop_pct is not None and not MIN_CROP_PCT <= self.crop_pct <= 1.0:
            raise InvalidValueError("crop_pct", f"{self.crop_pct:g}", f"must be {MIN_CROP_PCT} to 1 (the crop's share "
                                    "of the resized shorter side)")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise InvalidValueError("interpolation", self.interpolation, f"expected {' or '.join(INTERPOLATIONS)}")


@dataclass(frozen=True)
class PreprocessingChoice:
    """The preprocessing a run uses, and how it relates to the published one."""

    preprocessing: Preprocessing
    crop_pct: float  # input_size / resized shorter side, as timm states it (0.9 for timm's MobileViT)
    published: bool  # equal to the weight source's own protocol, the one its figures were measured with

    @property
    def input_size(self) -> int:
        return self.preprocessing.crop_size

    @property
    def interpolation(self) -> str:
        return self.preprocessing.interpolation

    def describe(self) -> str:
        p = self.preprocessing
        return f"{p.crop_size} px, crop {self.crop_pct:g} (shorter side {p.resize_shorter}), {p.interpolation}"


def protocol_for(source: str, wanted: Resolution) -> PreprocessingChoice:
    """The preprocessing for weights of `source` with the overrides in `wanted`."""
    base = manifest.preprocessing(source)
    nominal = manifest.preprocessing_crop_pct(source)  # e.g. timm 0.9; None: stated as sizes (apple: 288 -> 256)
    size = wanted.input_size or base.crop_size
    if wanted.crop_pct is not None:
        crop_pct, resize = wanted.crop_pct, math.floor(size / wanted.crop_pct)  # timm: math.floor(size / crop_pct)
    elif nominal is not None:
        crop_pct, resize = nominal, math.floor(size / nominal)
    else:  # keep the source's ratio exactly, in integers (256/288 is no exact float)
        crop_pct, resize = base.crop_size / base.resize_shorter, size * base.resize_shorter // base.crop_size
    chosen = replace(base, crop_size=size, resize_shorter=resize,
                     interpolation=wanted.interpolation or base.interpolation)
    return PreprocessingChoice(chosen, round(crop_pct, 4), chosen == base)
