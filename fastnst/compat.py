"""pytorch/examples' ``fast_neural_style`` helpers (``utils.py``) under their own names, with
their semantics, on fastnst's ops: replace ``import utils`` by ``from fastnst import compat as
utils`` in code written against that example.

* ``gram_matrix(y)``: y [B, C, H, W] -> [B, C, C], F Fᵀ / (C·H·W) with F = y viewed as
  [B, C, H·W]; on ``fastnst.gram_matrix`` (any strides, so also inputs ``view`` would refuse).
* ``normalize_batch(batch)``: a 0–255 RGB batch [B, 3, H, W] -> ImageNet-normalised
  (x / 255 − mean) / std. Like the original it divides ``batch`` by 255 **in place** (``div_``)
  and returns a new tensor; a leaf that requires grad is refused by PyTorch, as there.
"""

from __future__ import annotations

import torch

from fastnst.ops.gram import gram_matrix as _gram_matrix

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "gram_matrix", "normalize_batch"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gram_matrix(y: torch.Tensor) -> torch.Tensor:
    """pytorch/examples' ``utils.gram_matrix``: features [B, C, H·W] times their transpose,
    divided by C·H·W, for y [B, C, H, W]."""
    if not isinstance(y, torch.Tensor) or y.dim() != 4:
        got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"gram_matrix(y): y must be [B, C, H, W], got {got}")
    return _gram_matrix(y, normalize="chw")


def normalize_batch(batch: torch.Tensor) -> torch.Tensor:
    """pytorch/examples' ``utils.normalize_batch``: ``batch.div_(255.0)`` (in place), then
    subtract the ImageNet mean and divide by its std, per channel (dim -3)."""
    mean = batch.new_tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = batch.new_tensor(IMAGENET_STD).view(-1, 1, 1)
    batch = batch.div_(255.0)
    return (batch - mean) / std
