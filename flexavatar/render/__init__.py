"""Gaussian splatting renderer: gsplat on CUDA, a pure-PyTorch tile rasterizer elsewhere.

See :func:`rasterize` for the conventions (OpenCV cameras, accumulated depth).
"""

from .rasterizer import rasterize

__all__ = ["rasterize"]
