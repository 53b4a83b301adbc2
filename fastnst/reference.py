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
