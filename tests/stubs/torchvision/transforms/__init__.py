"""Stub of torchvision.transforms: every transform class is a placeholder (see torchvision/__init__.py)."""

from torchvision._placeholder import module_getattr
from torchvision.transforms.functional import InterpolationMode  # noqa: F401  (re-exported, as torchvision does)

__getattr__ = module_getattr(__name__)
