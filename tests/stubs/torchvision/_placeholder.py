"""Placeholders for the torchvision names timm imports but never uses when only building models."""

from __future__ import annotations

from typing import Any, Callable


def placeholder(qualname: str) -> type:
    """A class named like the torchvision one that refuses to be instantiated (usable as a base class)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{qualname} is not available: tests/stubs/torchvision is a stub")

    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": refuse, "__module__": qualname.rsplit(".", 1)[0]})


def module_getattr(module_name: str) -> Callable[[str], type]:
    """A PEP 562 module `__getattr__`: every public name of the module resolves to a placeholder."""

    def getattr_(name: str) -> type:
        if name.startswith("__"):  # keep Python's own protocol lookups (__path__, __file__, ...) honest
            raise AttributeError(name)
        return placeholder(f"{module_name}.{name}")

    return getattr_


placeholder_getattr = module_getattr("torchvision")
