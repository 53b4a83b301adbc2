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


def inv_std(var: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(var + eps), and 0 where var + eps = 0 (eps = 0 on a constant channel), as
    PyTorch's batch/instance norm kernels: the normalised value is then 0, not 0 / 0. Written
    so that autograd through it stays finite there too."""
    v = var + eps
    zero = v == 0
    return torch.where(zero, torch.zeros_like(v), torch.where(zero, torch.ones_like(v), v).rsqrt())


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-5, activation: str | None = None) -> torch.Tensor:
    """Instance norm in plain formulas, whose autograd is right in every layout: per (b, c)
    the mean and the biased variance over the spatial dims, normalise, then the affine
    weight/bias ([C] as nn.InstanceNorm2d, [B, C] per sample for conditional instance norm)
    and an optional ReLU. (torch 2.13's ``F.instance_norm`` returns a wrong input gradient for
    batch 1 with a channels_last upstream gradient, so it is only a benchmark provider:
    :func:`instance_norm_torch`.)"""
    b, c = x.shape[0], x.shape[1]
    flat = x.reshape(b, c, -1)
    centred = flat - flat.mean(dim=2, keepdim=True)
    var = centred.square().mean(dim=2, keepdim=True)
    y = centred * inv_std(var, eps)
    if weight is not None:
        y = y * weight.reshape(-1, c, 1)
    if bias is not None:
        y = y + bias.reshape(-1, c, 1)
    y = y.reshape(x.shape)
    return torch.relu(y) if activation == "relu" else y


def instance_norm_torch(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                        eps: float = 1e-5, activation: str | None = None) -> torch.Tensor:
    """The same as public code writes it: ``F.instance_norm`` (nn.InstanceNorm2d), per-sample
    weights applied after it, then ReLU. A benchmark baseline, not a test oracle."""
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
    b, c = content.shape[0], content.shape[1]
    flat = content.reshape(b, c, -1)
    c_mean = flat.mean(dim=2, keepdim=True)
    # (c - μ) / σ with σ = sqrt(var + eps); 0 where var + eps = 0 (see inv_std).
    c_var = flat.var(dim=2, unbiased=unbiased, keepdim=True)
    normalized = ((flat - c_mean) * inv_std(c_var, eps)).reshape(content.shape)
    out = 0
    for s, w in zip(styles, weights):
        s_mean, s_std = mean_std(s, eps if style_eps is None else style_eps, unbiased)
        out = out + w * (normalized * s_std + s_mean)
    return alpha * out + (1 - alpha) * content



def _style_patches(style: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """[n_style, C, k, k], numbered row-major over the (stride s) patch grid."""
    c = style.shape[1]
    return style.unfold(2, k, s).unfold(3, k, s).permute(0, 2, 3, 1, 4, 5).reshape(-1, c, k, k)


def _paste(patches: torch.Tensor, one_hot: torch.Tensor, s: int, out_h: int, out_w: int) -> torch.Tensor:
    """Transposed convolutions paste the chosen patches and count overlaps; 0 where none."""
    import torch.nn.functional as F

    swapped = F.conv_transpose2d(one_hot, patches, stride=s)
    overlap = F.conv_transpose2d(one_hot, torch.ones_like(patches), stride=s)
    out = torch.where(overlap > 0, swapped / overlap.clamp_min(1), torch.zeros_like(swapped))
    return F.pad(out, (0, out_w - out.shape[3], 0, out_h - out.shape[2]))


def style_swap(content: torch.Tensor, style: torch.Tensor, patch_size: int = 3, stride: int = 1,
               eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Style swap as the public PyTorch ports of Chen & Schmidt's Torch code write it: style
    patches (unfolded with the stride) divided by their norm + eps become conv filters, a
    conv2d scores every content patch against all of them, argmax, a dense one-hot, and two
    transposed convolutions paste the unnormalised patches and count the overlaps.

    Two n_style × nh × nw tensors (scores, one-hot) are materialised: this is the baseline
    fastnst's kernels avoid. Beyond the ports: a style batch of 1 or B, the output padded to
    the content's size, 0 (not 0/0) where no patch covers a pixel, and an all-zero style patch
    left at zero (not 0/0 when eps = 0).

    Returns (output [B, C, Hc, Wc], indices int64 [B, nh, nw]).
    """
    import torch.nn.functional as F

    k, s = patch_size, stride
    outs, idxs = [], []
    for b in range(content.shape[0]):
        patches = _style_patches(style[b if style.shape[0] > 1 else 0].unsqueeze(0), k, s)
        norm = patches.reshape(patches.shape[0], -1).norm(dim=1).reshape(-1, 1, 1, 1)
        normalized = torch.where(norm > 0, patches / (norm + eps), torch.zeros_like(patches))
        scores = F.conv2d(content[b:b + 1], normalized, stride=s)
        best = scores.argmax(1, keepdim=True)
        one_hot = torch.zeros_like(scores).scatter_(1, best, 1)
        outs.append(_paste(patches, one_hot, s, content.shape[2], content.shape[3]))
        idxs.append(best[:, 0])
    return torch.cat(outs), torch.cat(idxs)


def style_swap_paste(style: torch.Tensor, indices: torch.Tensor, patch_size: int, stride: int,
                     out_h: int, out_w: int) -> torch.Tensor:
    """The reconstruction half of :func:`style_swap` for given indices [B, nh, nw]."""
    k, s = patch_size, stride
    outs = []
    for b in range(indices.shape[0]):
        patches = _style_patches(style[b if style.shape[0] > 1 else 0].unsqueeze(0), k, s)
        one_hot = style.new_zeros((1, patches.shape[0]) + tuple(indices.shape[1:]))
        one_hot.scatter_(1, indices[b:b + 1].unsqueeze(1), 1)
        outs.append(_paste(patches, one_hot, s, out_h, out_w))
    return torch.cat(outs)
