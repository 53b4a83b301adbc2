"""Instance statistics, instance norm (plain, affine, conditional, + ReLU) and AdaIN.

    mean_std(x):       mean, std = sqrt(var + eps) per (b, c) over H·W (var over H·W − 1 if unbiased)
    instance_norm(x):  act(w (x − μ) / σ + b),   σ = sqrt(biased var + eps)
    adain(c, s):       α (σ_s (c − μ_c) / σ_c + μ_s) + (1 − α) c        (Huang & Belongie 2017)

All run on two registered kernels (schemas and maths in csrc/registration.cpp):
``fastnst::mean_std`` and ``fastnst::instance_norm`` — the fused normalisation
y = act(w·(x − μ)·rstd + b + x_scale·x) that carries instance norm (w, b of shape [C]),
conditional instance norm (w, b of shape [B, C]) and AdaIN (w = α σ_s, b = α μ_s,
x_scale = 1 − α) — with their backward ops; Triton versions are ``fastnst::<op>_triton``.
The ReLU's mask is recomputed from the output in the backward, never stored.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
import torch

from fastnst import _ext, reference
from fastnst.backend import resolve
from fastnst.ops import autocast
from fastnst.ops._common import check_same_device, check_tensor, grad_strides, resample, shape_str
from fastnst.ops.registry import OpSpec, Sample, register

ACTIVATIONS = {None: 0, "relu": 1}


def _empty_rule(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty_strided(tuple(x.shape), grad_strides(x), dtype=dtype or x.dtype, device=x.device)


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics and weight gradients: float32, float64 for float64 x (gradcheck needs float64
    all the way)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _same_device(op: str, x: torch.Tensor, **tensors) -> None:
    """Every tensor argument on x's device. A call that mixes a meta tensor with CPU tensors is
    dispatched to the fake kernels, so they check this too (else they would return
    uninitialised memory)."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"fastnst::{op}: {name} must be on x's device {x.device}, got {t.device}")


# ---- Triton ops ------------------------------------------------------------------------------
@torch.library.custom_op("fastnst::mean_std_triton", mutates_args=())
def _mean_std_triton(x: torch.Tensor, eps: float, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from fastnst.kernels import norm as k

    return k.mean_std(x, eps, unbiased)


@torch.library.custom_op("fastnst::mean_std_backward_triton", mutates_args=())
def _mean_std_backward_triton(grad_mean: torch.Tensor, grad_std: torch.Tensor, x: torch.Tensor,
                              mean: torch.Tensor, std: torch.Tensor, unbiased: bool) -> torch.Tensor:
    from fastnst.kernels import norm as k

    out = _empty_rule(x)
    k.mean_std_backward(grad_mean, grad_std, x, mean, std, unbiased, out)
    return out


@torch.library.custom_op("fastnst::instance_norm_triton", mutates_args=())
def _instance_norm_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          eps: float, unbiased: bool, x_scale: float, activation: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from fastnst.kernels import norm as k

    b, c, _ = x.shape
    y = _empty_rule(x)
    mean = torch.empty(b, c, device=x.device, dtype=_stats_dtype(x))
    rstd = torch.empty(b, c, device=x.device, dtype=_stats_dtype(x))
    k.instance_norm(x, weight, bias, eps, unbiased, x_scale, activation, y, mean, rstd)
    return y, mean, rstd


@torch.library.custom_op("fastnst::instance_norm_backward_triton", mutates_args=())
def _instance_norm_backward_triton(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                                   weight: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
                                   unbiased: bool, x_scale: float, activation: int, weight_grads: bool
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from fastnst.kernels import norm as k

    b, c, _ = x.shape
    dx = _empty_rule(x)
    shape = (b, c) if weight_grads else (0,)
    dw = torch.empty(shape, device=x.device, dtype=_stats_dtype(x))
    db = torch.empty(shape, device=x.device, dtype=_stats_dtype(x))
    k.instance_norm_backward(grad, x, y, weight, mean, rstd, unbiased, x_scale, activation, dx,
                             dw if weight_grads else None, db if weight_grads else None)
    return dx, dw, db


# ---- fake kernels ------------------------------------------------------------------------------
def _mean_std_fake(x, eps, unbiased):
    b, c, _ = x.shape
    return x.new_empty((b, c)), x.new_empty((b, c))


def _mean_std_backward_fake(grad_mean, grad_std, x, mean, std, unbiased):
    _same_device("mean_std_backward", x, grad_mean=grad_mean, grad_std=grad_std, mean=mean, std=std)
    return _empty_rule(x)


def _instance_norm_fake(x, weight, bias, eps, unbiased, x_scale, activation):
    _same_device("instance_norm", x, weight=weight, bias=bias)
    b, c, _ = x.shape
    stats = x.new_empty((b, c), dtype=_stats_dtype(x))
    return _empty_rule(x), stats, stats.new_empty((b, c))


def _instance_norm_backward_fake(grad, x, y, weight, mean, rstd, unbiased, x_scale, activation, weight_grads):
    _same_device("instance_norm_backward", x, grad=grad, y=y, weight=weight, mean=mean, rstd=rstd)
    b, c, _ = x.shape
    shape = (b, c) if weight_grads else (0,)
    sd = _stats_dtype(x)
    return _empty_rule(x), x.new_empty(shape, dtype=sd), x.new_empty(shape, dtype=sd)


# ---- autograd ----------------------------------------------------------------------------------
def _mean_std_setup(ctx, inputs, output):
    x, eps, unbiased = inputs
    mean, std = output
    ctx.save_for_backward(x, mean, std)
    ctx.unbiased = unbiased


def _mean_std_bwd(backward_op):
    def bwd(ctx, g_mean, g_std):
        x, mean, std = ctx.saved_tensors
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        g_std = torch.zeros_like(std) if g_std is None else g_std
        return backward_op(g_mean, g_std, x, mean, std, ctx.unbiased), None, None

    return bwd


def _in_setup(ctx, inputs, output):
    x, weight, bias, eps, unbiased, x_scale, activation = inputs
    y, mean, rstd = output
    ctx.save_for_backward(x, y if activation == 1 else None, weight, mean, rstd)
    ctx.args = (unbiased, x_scale, activation)
    ctx.shapes = (None if weight is None else (weight.shape, weight.dtype),
                  None if bias is None else (bias.shape, bias.dtype))
    ctx.mark_non_differentiable(mean, rstd)


def _in_bwd(backward_op):
    def bwd(ctx, g, g_mean, g_rstd):
        x, y, weight, mean, rstd = ctx.saved_tensors
        unbiased, x_scale, activation = ctx.args
        wants_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if y is None:
            y = x  # unused without the ReLU
        dx, dw, db = backward_op(g, x, y, weight, mean, rstd, unbiased, x_scale, activation, wants_w)
        d_weight = d_bias = None
        if ctx.needs_input_grad[1]:
            shape, dtype = ctx.shapes[0]
            d_weight = (dw.sum(0) if len(shape) == 1 else dw).to(dtype)
        if ctx.needs_input_grad[2]:
            shape, dtype = ctx.shapes[1]
            d_bias = (db.sum(0) if len(shape) == 1 else db).to(dtype)
        return (dx if ctx.needs_input_grad[0] else None), d_weight, d_bias, None, None, None, None

    return bwd


def _no_double_backward(name):
    def bwd(ctx, *grads):
        raise NotImplementedError(f"fastnst.{name}: double backward is not supported")

    return bwd


def _register(op: str, fwd_fake, bwd_fake, setup, make_bwd, backward_op, backward_name: str) -> None:
    torch.library.register_fake(op)(fwd_fake)
    torch.library.register_fake(backward_name)(bwd_fake)
    torch.library.register_autograd(op, make_bwd(backward_op), setup_context=setup)
    torch.library.register_autograd(backward_name, _no_double_backward(op.split("::")[1]),
                                    setup_context=lambda ctx, inputs, output: None)


_register("fastnst::mean_std_triton", _mean_std_fake, _mean_std_backward_fake, _mean_std_setup, _mean_std_bwd,
          torch.ops.fastnst.mean_std_backward_triton, "fastnst::mean_std_backward_triton")
_register("fastnst::instance_norm_triton", _instance_norm_fake, _instance_norm_backward_fake, _in_setup, _in_bwd,
          torch.ops.fastnst.instance_norm_backward_triton, "fastnst::instance_norm_backward_triton")
if _ext.available():
    _register("fastnst::mean_std", _mean_std_fake, _mean_std_backward_fake, _mean_std_setup, _mean_std_bwd,
              torch.ops.fastnst.mean_std_backward, "fastnst::mean_std_backward")
    _register("fastnst::instance_norm", _instance_norm_fake, _instance_norm_backward_fake, _in_setup, _in_bwd,
              torch.ops.fastnst.instance_norm_backward, "fastnst::instance_norm_backward")


def _instance_norm_pad_fake(x, weight, bias, eps, activation, residual, upsample, pad):
    _same_device("instance_norm_pad", x, weight=weight, bias=bias, residual=residual)
    b, c, h, w = x.shape
    return x.new_empty(b, c, h * upsample + 2 * pad, w * upsample + 2 * pad).contiguous(
        memory_format=torch.channels_last)


def _instance_norm_pad_no_backward(ctx, grad):
    raise RuntimeError("fastnst::instance_norm_pad is inference-only (no backward); call "
                       "fastnst.ops.norm.instance_norm_pad, which takes differentiable aten ops when a "
                       "gradient is needed")


if _ext.available():
    torch.library.register_fake("fastnst::instance_norm_pad")(_instance_norm_pad_fake)
    torch.library.register_autograd("fastnst::instance_norm_pad", _instance_norm_pad_no_backward,
                                    setup_context=lambda ctx, inputs, output: None)


# ---- public API ----------------------------------------------------------------------------
def _check_eps(op: str, eps, name: str = "eps") -> float:
    """A finite real number >= 0 (Python or NumPy scalars; not bool)."""
    if isinstance(eps, (bool, torch.Tensor)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{op}: {name} must be a finite number >= 0, got {eps!r}")
    value = float(eps)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{op}: {name} must be a finite number >= 0, got {eps!r}")
    return value


def _check_bool(op: str, name: str, v) -> bool:
    """True or False (also NumPy's bool_); never a truthy int or None."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{op}: {name} must be True or False, got {v!r}")


def check_style_weights(op: str, weights, n: int, name: str = "style_weights") -> list[float]:
    """One finite weight >= 0 per style with a finite positive sum; returned normalised to sum 1."""
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be a sequence of {n} numbers, got {weights!r}") from None
    if len(values) != n:
        raise ValueError(f"{op}: {name} must have one weight per style ({n}), got {len(values)}")
    try:
        total = math.fsum(values) if all(math.isfinite(w) for w in values) else math.nan
    except OverflowError:  # e.g. [1e308, 1e308]
        total = math.inf
    if any(not math.isfinite(w) or w < 0 for w in values) or not (0 < total < math.inf):
        raise ValueError(f"{op}: {name} must be finite and >= 0 with a finite positive sum, got {values}")
    return [w / total for w in values]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2) if x.dim() == 4 else x


def _stats_op(x3: torch.Tensor, eps: float, unbiased: bool, backend: str):
    name = resolve(MEAN_STD, x3, backend)
    if name == "reference":
        return None
    op = MEAN_STD.kernel_op(name)
    return op(x3, eps, unbiased)


def mean_std(x: torch.Tensor, eps: float = 1e-5, unbiased: bool = True,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std = sqrt(var + eps) over the spatial dims.

    Args:
        x: [B, C, H, W] or [B, C, L]; float32, float16, bfloat16 (float64 on the CPU); any strides.
        eps: added to the variance (>= 0).
        unbiased: variance over H·W − 1 (True, as torch.var and the AdaIN port) or H·W.

    Returns (mean, std), each [B, C, 1, 1] (or [B, C, 1] for 3-D input) in x's dtype,
    accumulated in float32 or better in one pass (stable for a large mean). Differentiable.
    """
    check_tensor("mean_std", "x", x, (3, 4), "[B, C, H, W] or [B, C, L]")
    eps = _check_eps("mean_std", eps)
    unbiased = _check_bool("mean_std", "unbiased", unbiased)
    x3 = _flat(x)
    if unbiased and x3.shape[2] < 2:
        raise ValueError(f"mean_std: the unbiased variance needs at least 2 values per channel, "
                         f"got x of {shape_str(x)}")
    out = _stats_op(x3, eps, unbiased, backend)
    if out is None:
        return reference.mean_std(x, eps, unbiased)
    view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    return out[0].view(view), out[1].view(view)


def _check_affine(op: str, name: str, t, x: torch.Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor of shape [C] or [B, C], got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"{op}: {name} must be a float tensor (float32, float16, bfloat16 or float64), "
                        f"got {t.dtype}")
    b, c = x.shape[0], x.shape[1]
    if not ((t.dim() == 1 and t.shape[0] == c) or (t.dim() == 2 and tuple(t.shape) == (b, c))):
        raise ValueError(f"{op}: {name} must be [C] = [{c}] or [B, C] = [{b}, {c}], got {shape_str(t)}")
    check_same_device(op, "x", x, name, t)


def _check_norm_args(op: str, x, ranks, layout: str, weight, bias, eps, activation) -> float:
    """The contract of the normalising ops: x's rank and dtype, more than one value per channel,
    eps, the activation, the affine tensors; returns eps as a float."""
    check_tensor(op, "x", x, ranks, layout)
    if _flat(x).shape[2] < 2:
        # As nn.InstanceNorm2d: a single value per channel normalises to 0 whatever it is.
        raise ValueError(f"{op}: x must have more than 1 spatial element per channel, got {shape_str(x)}")
    eps = _check_eps(op, eps)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    _check_affine(op, "weight", weight, x)
    _check_affine(op, "bias", bias, x)
    return eps


def _norm(x: torch.Tensor, weight, bias, eps: float, unbiased: bool, x_scale: float,
          activation: int, name: str) -> torch.Tensor:
    x3 = _flat(x)
    op = INSTANCE_NORM.kernel_op(name)  # AdaIN's kernel too
    y, _, _ = op(x3, weight, bias, eps, unbiased, x_scale, activation)
    return y.view(x.shape) if x.dim() == 4 else y


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-5, activation: str | None = None, backend: str = "auto") -> torch.Tensor:
    """Fused instance norm: act(weight · (x − μ) / sqrt(var + eps) + bias), biased variance.

    ``weight``/``bias``: None, [C] (affine, as nn.InstanceNorm2d) or [B, C] (per sample:
    conditional instance norm). ``activation``: None or "relu". x: [B, C, H, W] or [B, C, L],
    any strides (channels_last stays channels_last). Forward and backward are fused; the
    ReLU's mask is recomputed from the output in the backward.
    """
    eps = _check_norm_args("instance_norm", x, (3, 4), "[B, C, H, W] or [B, C, L]", weight, bias, eps, activation)
    name = resolve(INSTANCE_NORM, x, backend)
    if name == "reference":
        return reference.instance_norm(x, weight, bias, eps, activation)
    return _norm(x, weight, bias, eps, False, 0.0, ACTIVATIONS[activation], name)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def instance_norm_pad(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                      eps: float = 1e-5, activation: str | None = None, residual: torch.Tensor | None = None,
                      upsample: int = 1, pad: int = 0) -> torch.Tensor:
    """``F.pad(F.interpolate(instance_norm(x, weight, bias, eps, activation) + residual,
    scale_factor=upsample, mode="nearest"), [pad] * 4, mode="reflect")``: a network's
    norm -> [upsample ->] reflection pad -> conv stage up to the convolution.

    Without autograd, on the CPU, it is one kernel (``fastnst::instance_norm_pad``) that writes
    the normalised values straight into the padded (upsampled) result, channels_last: bit for
    bit the composite's values (instance_norm's y, the residual added in x's dtype), without
    the intermediate tensors or their copies. With a gradient to compute, under torch.compile
    (Inductor fuses the composite itself) and on other devices it is the composite of
    differentiable ops. x: [B, C, H, W]; residual: None or x's shape and dtype; upsample an
    integer >= 1; 0 <= pad < the upsampled height and width.
    """
    eps = _check_norm_args("instance_norm_pad", x, (4,), "[B, C, H, W]", weight, bias, eps, activation)
    for name, v, lo in (("upsample", upsample, 1), ("pad", pad, 0)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
            raise ValueError(f"instance_norm_pad: {name} must be an integer >= {lo}, got {v!r}")
    h, w = x.shape[2] * upsample, x.shape[3] * upsample
    if pad >= h or pad >= w:
        raise ValueError(f"instance_norm_pad: reflection padding {pad} must be smaller than the "
                         f"(upsampled) height and width {h} x {w}")
    if residual is not None:
        if (not isinstance(residual, torch.Tensor) or residual.shape != x.shape
                or autocast.cast_dtype(residual) != autocast.cast_dtype(x)):  # x's dtype, after autocast's casts
            got = shape_str(residual) if isinstance(residual, torch.Tensor) else type(residual).__name__
            got += f" {residual.dtype}" if isinstance(residual, torch.Tensor) else ""
            raise ValueError(f"instance_norm_pad: residual must have x's shape {shape_str(x)} and dtype "
                             f"{autocast.cast_dtype(x)}, got {got}")
        check_same_device("instance_norm_pad", "x", x, "residual", residual)
    if (_ext.available() and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _needs_grad(x, weight, bias, residual)):
        return torch.ops.fastnst.instance_norm_pad(x, weight, bias, eps, ACTIVATIONS[activation], residual,
                                                   int(upsample), int(pad))
    y = instance_norm(x, weight, bias, eps, activation)
    if residual is not None:
        y = y + residual.to(y.dtype)  # a no-op outside autocast (same dtypes)
    return resample(y, upsample, pad)  # y's dtype, as the fused kernel's



def adain(content: torch.Tensor, style: torch.Tensor | Sequence[torch.Tensor], alpha: float = 1.0,
          eps: float = 1e-5, unbiased: bool = True, style_weights: Sequence[float] | None = None,
          style_eps: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017), fused:

        out = α · (σ_s · (c − μ_c) / σ_c + μ_s) + (1 − α) · c

    Args:
        content: [B, C, H, W] (or [B, C, L]) features.
        style: features [B or 1, C, H', W'] of any spatial size, or a list of them; several
            styles interpolate their statistics with ``style_weights`` (normalised to sum 1).
        alpha: content–style trade-off in [0, 1].
        eps, unbiased: σ = sqrt(var + eps), var over H·W − 1 if unbiased. Defaults reproduce
            the AdaIN PyTorch port; the Torch original is ``unbiased=False, style_eps=0``.
        style_eps: eps for the style's σ (default: ``eps``).

    Gradients flow to content and style. The normalisation, scale, shift and mix are one
    pass over the content (after one statistics pass per tensor).
    """
    op = "adain"
    check_tensor(op, "content", content, (3, 4), "[B, C, H, W] or [B, C, L]")
    styles = [style] if isinstance(style, torch.Tensor) else list(style)
    if not styles:
        raise ValueError(f"{op}: style must be a tensor or a non-empty list of tensors")
    b, c = content.shape[0], content.shape[1]
    for i, s in enumerate(styles):
        nm = "style" if len(styles) == 1 else f"style[{i}]"
        check_tensor(op, nm, s, (content.dim(),), "[B, C, H, W]" if content.dim() == 4 else "[B, C, L]")
        if s.shape[1] != c:
            raise ValueError(f"{op}: {nm} must have the content's {c} channels, got {shape_str(s)}")
        if s.shape[0] not in (1, b):
            raise ValueError(f"{op}: {nm} must have batch 1 or the content's {b}, got {shape_str(s)}")
        check_same_device(op, "content", content, nm, s)
        if s.dtype != content.dtype and not autocast.enabled(content.device.type):
            # Under autocast any float style serves: its statistics are taken in its own dtype
            # and the norm reads them in place (fastnst/ops/autocast.py).
            raise TypeError(f"{op}: {nm} must have the content's dtype {content.dtype}, got {s.dtype}")
    if style_weights is None:
        weights = [1.0 / len(styles)] * len(styles)
    else:
        weights = check_style_weights(op, style_weights, len(styles))
    if isinstance(alpha, (bool, torch.Tensor)) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{op}: alpha must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{op}: alpha must be in [0, 1], got {alpha}")
    eps = _check_eps(op, eps)
    style_eps = eps if style_eps is None else _check_eps(op, style_eps, "style_eps")
    unbiased = _check_bool(op, "unbiased", unbiased)
    if unbiased:
        for nm, t in [("content", content)] + [("style" if len(styles) == 1 else f"style[{i}]", s)
                                                for i, s in enumerate(styles)]:
            if _flat(t).shape[2] < 2:
                raise ValueError(f"{op}: the unbiased variance needs at least 2 values per channel, "
                                 f"got {nm} of {shape_str(t)}")
    name = resolve(ADAIN, content, backend)
    if name == "reference":
        return reference.adain(content, styles, alpha, eps, unbiased, weights, style_eps)

    s_mean = s_std = None
    for s, w in zip(styles, weights):
        m, sd = mean_std(s, style_eps, unbiased, backend=name)
        m, sd = m.flatten(1) * w, sd.flatten(1) * w
        s_mean = m if s_mean is None else s_mean + m
        s_std = sd if s_std is None else s_std + sd
    s_mean, s_std = s_mean.expand(b, c), s_std.expand(b, c)
    return _norm(content, s_std * alpha, s_mean * alpha, eps, unbiased, 1.0 - alpha, 0, name)


# ---- specs -------------------------------------------------------------------------------------
def _mk(device, dtype, *shape, offset=0.0):
    return torch.randn(shape, device=device, dtype=dtype) + offset


def _mean_std_samples(device: torch.device, dtype: torch.dtype) -> list[Sample]:
    mk = lambda *shape, **kw: _mk(device, dtype, *shape, **kw)  # noqa: E731
    return [Sample((mk(1, 1, 5, 5),), note="minimal", grad=(0,)),
            Sample((mk(3, 8, 7, 9),), {"unbiased": False}, "biased, odd H*W", (0,)),
            Sample((mk(2, 130, 6, 5, offset=100.0),), {"eps": 0.0}, "large mean, eps 0", (0,)),
            Sample((mk(2, 3, 50),), note="rank 3", grad=(0,))]


def _instance_norm_samples(device: torch.device, dtype: torch.dtype) -> list[Sample]:
    mk = lambda *shape, **kw: _mk(device, dtype, *shape, **kw)  # noqa: E731
    return [Sample((mk(1, 1, 5, 5),), note="minimal, no affine", grad=(0,)),
            Sample((mk(3, 8, 7, 9), mk(8), mk(8)), note="affine [C]", grad=(0, 1, 2)),
            Sample((mk(2, 6, 5, 4), mk(2, 6), mk(2, 6)), {"activation": "relu"}, "conditional [B, C] + ReLU",
                   (0, 1, 2)),
            Sample((mk(2, 70, 6, 5, offset=50.0), None, mk(70)), {"eps": 1e-3}, "large mean, bias only", (0, 2)),
            Sample((mk(2, 3, 50),), note="rank 3", grad=(0,))]


def _adain_samples(device: torch.device, dtype: torch.dtype) -> list[Sample]:
    mk = lambda *shape, **kw: _mk(device, dtype, *shape, **kw)  # noqa: E731
    return [Sample((mk(1, 2, 5, 5), mk(1, 2, 4, 6)), note="minimal", grad=(0, 1)),
            Sample((mk(3, 8, 7, 9), mk(1, 8, 6, 6)), {"alpha": 0.7}, "style batch 1, alpha", (0, 1)),
            Sample((mk(2, 6, 5, 4), mk(2, 6, 9, 3)), {"unbiased": False, "style_eps": 0.0},
                   "Torch original's convention", (0, 1)),
            Sample((mk(2, 3, 50), mk(2, 3, 20)), note="rank 3", grad=(0, 1))]


MEAN_STD = register(OpSpec(
    name="mean_std", kernel="mean_std", triton="mean_std_triton", function=mean_std,
    reference_call=lambda *a, **k: mean_std(*a, backend="reference", **k), samples=_mean_std_samples,
    backward=("mean_std_backward",), doc="per (b, c) mean and sqrt(var + eps)"))
INSTANCE_NORM = register(OpSpec(
    name="instance_norm", kernel="instance_norm", triton="instance_norm_triton", function=instance_norm,
    reference_call=lambda *a, **k: instance_norm(*a, backend="reference", **k),
    samples=_instance_norm_samples, backward=("instance_norm_backward",),
    doc="act(w (x - mean) / sqrt(var + eps) + b)"))
ADAIN = register(OpSpec(
    name="adain", kernel="instance_norm", triton="instance_norm_triton", function=adain,
    reference_call=lambda *a, **k: adain(*a, backend="reference", **k), samples=_adain_samples,
    backward=("instance_norm_backward", "mean_std_backward"),
    doc="alpha (sigma_s (c - mu_c) / sigma_c + mu_s) + (1 - alpha) c"))
