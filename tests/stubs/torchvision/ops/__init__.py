"""Stub of torchvision.ops (see torchvision/__init__.py)."""
