"""The executable specification: every fastnst op in plain PyTorch, written the way public
style-transfer code writes it.

Tests compare the kernels against these functions (in float64), benchmarks use them (eager
and under ``torch.compile``) as the baseline, and ``backend="reference"`` runs them.
"""

from __future__ import annotations

import torch


def gram_matrix(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """G = F Fᵀ / divisor with F = x viewed as (B, C, H·W), as in Johnson's and
    pytorch/examples' ``gram_matrix``: one ``torch.bmm`` in the input dtype."""
    b, c = x.shape[0], x.shape[1]
    features = x.reshape(b, c, -1)
    return torch.bmm(features, features.transpose(1, 2)) / divisor


def gram_matrix_backward(grad: torch.Tensor, x: torch.Tensor, divisor: float) -> torch.Tensor:
    """dF = (dG + dGᵀ) F / divisor, shaped like x."""
    b, c = x.shape[0], x.shape[1]
    features = x.reshape(b, c, -1)
    return (torch.bmm(grad + grad.transpose(1, 2), features) / divisor).reshape(x.shape)


def mean_std(x: torch.Tensor, eps: float = 1e-5, unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (b, c) mean and sqrt(var + eps) over the spatial dims, as the AdaIN port's
    ``calc_mean_std`` writes it (torch.var, then torch.mean). Shapes [B, C, 1, ...]."""
    b, c = x.shape[0], x.shape[1]
    flat = x.reshape(b, c, -1)
    view = (b, c) + (1,) * (x.dim() - 2)
    std = (flat.var(dim=2, unbiased=unbiased) + eps).sqrt().view(view)
    return flat.mean(dim=2).view(view), std


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-5, activation: str | None = None) -> torch.Tensor:
    """nn.InstanceNorm2d (affine [C] weights) or conditional instance norm ([B, C] weights,
    applied after a plain instance norm), then an optional ReLU."""
    import torch.nn.functional as F

    per_channel = lambda t: t is None or t.dim() == 1  # noqa: E731
    if per_channel(weight) and per_channel(bias):
        y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    else:
        y = F.instance_norm(x, eps=eps)
        view = (x.shape[0] if weight is not None and weight.dim() == 2 else 1, x.shape[1]) + (1,) * (x.dim() - 2)
        if weight is not None:
            y = y * weight.reshape(weight.shape[0] if weight.dim() == 2 else 1, x.shape[1], *view[2:])
        if bias is not None:
            y = y + bias.reshape(bias.shape[0] if bias.dim() == 2 else 1, x.shape[1], *view[2:])
    return torch.relu(y) if activation == "relu" else y


def adain(content: torch.Tensor, styles, alpha: float = 1.0, eps: float = 1e-5, unbiased: bool = True,
          style_weights=None, style_eps: float | None = None) -> torch.Tensor:
    """AdaIN as the PyTorch port writes it (normalise, scale, shift, then mix with the
    content by alpha); several styles interpolate the AdaIN outputs by weight."""
    if isinstance(styles, torch.Tensor):
        styles = [styles]
    weights = style_weights or [1.0 / len(styles)] * len(styles)
    c_mean, c_std = mean_std(content, eps, unbiased)
    normalized = (content - c_mean) / c_std
    out = 0
    for s, w in zip(styles, weights):
        s_mean, s_std = mean_std(s, eps if style_eps is None else style_eps, unbiased)
        out = out + w * (normalized * s_std + s_mean)
    return alpha * out + (1 - alpha) * content
