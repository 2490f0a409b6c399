"""Stub of torchvision.transforms.functional: the real InterpolationMode values, placeholder functions."""

from enum import Enum

from torchvision._placeholder import module_getattr


class InterpolationMode(Enum):
    # timm builds name <-> mode tables from these members at import time.
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


__getattr__ = module_getattr(__name__)
