"""Stub of torchvision.ops.misc: FrozenBatchNorm2d is only used by timm's isinstance checks and freezing."""

from torchvision._placeholder import module_getattr

__getattr__ = module_getattr(__name__)
