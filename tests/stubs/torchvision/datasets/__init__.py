"""Stub of torchvision.datasets: timm's dataset factory imports dataset classes by name at import time."""

from torchvision._placeholder import module_getattr

__getattr__ = module_getattr(__name__)
