"""mvit: classify images with MobileViT v1 (Mehta & Rastegari, ICLR 2022) from the command line."""

__version__ = "0.1.0"
