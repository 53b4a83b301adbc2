"""Gram matrix: public API, backend choice, autograd and fake (meta) registration.

    G[b] = F[b] F[b]ᵀ / divisor,  F[b] = x[b] viewed as (C, H·W)

``normalize`` picks the divisor: "chw" → C·H·W (Johnson et al., pytorch/examples),
"hw" → H·W (pastiche, pystiche), "none" → 1.

Ops (schemas of the C++ ones in csrc/registration.cpp):
  fastnst::gram(Tensor x, float scale)                           cpu (csrc/cpu/gram.cpp), cuda (csrc/cuda/gram.cu)
  fastnst::gram_backward(Tensor grad, Tensor x, float scale)
  fastnst::gram_triton / fastnst::gram_backward_triton           triton (kernels/gram.py)
All take x as [B, C, L] with any strides and return G as a contiguous [B, C, C] in x's dtype
(accumulated in float32, or float64 for float64 input). The backward is one GEMM,
dF = scale · (dG + dGᵀ) F; dF keeps x's layout when x is channels-innermost (a channels_last
image), else it is contiguous.
"""

from __future__ import annotations

import torch

from fastnst import _ext, reference
from fastnst.backend import resolve
from fastnst.ops import autocast
from fastnst.ops._common import check_same_device, check_tensor, grad_strides
from fastnst.ops.registry import OpSpec, Sample, register

NORMALIZE = ("chw", "hw", "none")
_OP = "gram_matrix"


# ---- layout rule shared by every backend's backward ----------------------------------------
def _empty_grad(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(tuple(x.shape), grad_strides(x), dtype=x.dtype, device=x.device)


# ---- Triton ops ------------------------------------------------------------------------------
@torch.library.custom_op("fastnst::gram_triton", mutates_args=())
def gram_triton(x: torch.Tensor, scale: float) -> torch.Tensor:
    from fastnst.kernels import gram as k

    return k.gram_forward(x, scale)


@torch.library.custom_op("fastnst::gram_backward_triton", mutates_args=())
def gram_backward_triton(grad: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
    from fastnst.kernels import gram as k

    out = _empty_grad(x)
    k.gram_backward(grad, x, scale, out)
    return out


# ---- fake kernels (shapes for torch.compile / meta tensors) ----------------------------------
def _gram_fake(x: torch.Tensor, scale: float) -> torch.Tensor:
    b, c, _ = x.shape
    return x.new_empty((b, c, c))


def _gram_backward_fake(grad: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
    # A call mixing a meta tensor with real ones lands here: refuse it rather than return
    # uninitialised memory.
    if grad.device != x.device:
        raise ValueError(f"fastnst::gram_backward: grad must be on x's device {x.device}, got {grad.device}")
    return _empty_grad(x)


torch.library.register_fake("fastnst::gram_triton")(_gram_fake)
torch.library.register_fake("fastnst::gram_backward_triton")(_gram_backward_fake)


# ---- autograd --------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, scale = inputs
    ctx.save_for_backward(x)
    ctx.scale = scale


def _make_backward(backward_op):
    def _backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        return backward_op(grad, x, ctx.scale), None

    return _backward


# Double backward. out = s (G + Gᵀ) F with G = grad; for an upstream v shaped like F:
#   d/dF = s (G + Gᵀ) v        (the same op, applied to v)
#   d/dG = s (v Fᵀ + F vᵀ)     (small C x C: plain, differentiable torch)
def _setup_context_bwd(ctx, inputs, output):
    grad, x, scale = inputs
    ctx.save_for_backward(grad, x)
    ctx.scale = scale


def _make_double_backward(backward_op):
    def _double_backward(ctx, v):
        grad, x = ctx.saved_tensors
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:
            vf = torch.bmm(v, x.transpose(1, 2))
            d_grad = (vf + vf.transpose(1, 2)) * ctx.scale
        if ctx.needs_input_grad[1]:
            d_x = backward_op(grad, v, ctx.scale)
        return d_grad, d_x, None

    return _double_backward


def _register_autograd(op: str, backward_op, backward_name: str) -> None:
    torch.library.register_autograd(op, _make_backward(backward_op), setup_context=_setup_context)
    torch.library.register_autograd(backward_name, _make_double_backward(backward_op),
                                    setup_context=_setup_context_bwd)


_register_autograd("fastnst::gram_triton", torch.ops.fastnst.gram_backward_triton,
                   "fastnst::gram_backward_triton")

if _ext.available():
    torch.library.register_fake("fastnst::gram")(_gram_fake)
    torch.library.register_fake("fastnst::gram_backward")(_gram_backward_fake)
    _register_autograd("fastnst::gram", torch.ops.fastnst.gram_backward, "fastnst::gram_backward")


# ---- public API -----------------------------------------------------------------------------
def _divisor(x: torch.Tensor, normalize: str) -> float:
    c, l = x.shape[1], x[0, 0].numel()
    if normalize == "chw":
        return float(c * l)
    if normalize == "hw":
        return float(l)
    return 1.0


def gram_matrix(x: torch.Tensor, normalize: str = "chw", backend: str = "auto") -> torch.Tensor:
    """Gram matrix of feature maps: G[b] = F[b] F[b]ᵀ / divisor.

    Args:
        x: [B, C, H, W] or [B, C, L] features; float32, float16 or bfloat16 (float64 on the
            CPU); any strides (channels_last is read in place).
        normalize: "chw" (divide by C·H·W), "hw" (by H·W) or "none".
        backend: "auto", "cpu", "cuda", "triton" or "reference" (see fastnst.use_backend).

    Returns:
        [B, C, C] in x's dtype, accumulated in float32 (float64 for float64 input).
        Differentiable; the backward is a single GEMM.

    Limitations: float64 only on the CPU; the triton backend runs CPU tensors only under
    TRITON_INTERPRET=1 (slow, for testing).
    """
    check_tensor(_OP, "x", x, (3, 4), "[B, C, H, W] or [B, C, L]")
    if normalize not in NORMALIZE:
        raise ValueError(f"{_OP}: normalize must be 'chw', 'hw' or 'none', got {normalize!r}")
    divisor = _divisor(x, normalize)
    name = resolve(GRAM, x, backend)
    if name == "reference":
        return reference.gram_matrix(x, divisor)
    x3 = x.flatten(2) if x.dim() == 4 else x
    return GRAM.kernel_op(name)(x3, 1.0 / divisor)


def gram_loss(x: torch.Tensor, target: torch.Tensor, normalize: str = "chw",
              backend: str = "auto") -> torch.Tensor:
    """Style loss: mean squared error between gram_matrix(x) and a target Gram [B or 1, C, C]."""
    check_tensor("gram_loss", "x", x, (3, 4), "[B, C, H, W] or [B, C, L]")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"gram_loss: target must be a torch.Tensor [B, C, C], got {type(target).__name__}")
    check_same_device("gram_loss", "x", x, "target", target)
    b, c = x.shape[0], x.shape[1]
    if target.dim() != 3 or target.shape[1:] != (c, c) or target.shape[0] not in (1, b):
        raise ValueError(f"gram_loss: target must be [{b}, {c}, {c}] or [1, {c}, {c}] for x of "
                         f"{c} channels, got [{', '.join(map(str, target.shape))}]")
    g = gram_matrix(x, normalize, backend)
    if not autocast.enabled(g.device.type):  # under autocast mse_loss is an fp32 op: the target stays unrounded
        target = target.to(g.dtype)
    return torch.nn.functional.mse_loss(g, target.expand_as(g))


def _gram_samples(device: torch.device, dtype: torch.dtype) -> list[Sample]:
    def mk(*shape):
        return torch.randn(shape, device=device, dtype=dtype)

    return [Sample((mk(1, 1, 5, 5),), note="minimal", grad=(0,)),
            Sample((mk(3, 8, 7, 9),), {"normalize": "hw"}, "B > 1, odd H*W", (0,)),
            Sample((mk(2, 70, 6, 5),), {"normalize": "none"}, "C not a multiple of the tile", (0,)),
            Sample((mk(2, 3, 50),), note="rank 3", grad=(0,))]


GRAM = register(OpSpec(
    name="gram_matrix", kernel="gram", triton="gram_triton", function=gram_matrix,
    reference_call=lambda *a, **k: gram_matrix(*a, backend="reference", **k), samples=_gram_samples,
    backward=("gram_backward",), doc="G = F F^T / divisor"))
