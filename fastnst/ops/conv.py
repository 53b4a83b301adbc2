"""Convolutions for network inference: ``fastnst::conv3x3_winograd``, ``conv_winograd_split`` and
``conv2d_direct``.

    conv(x, weight, bias, stride, upsample, pad):
        F.conv2d(F.pad(F.interpolate(x, scale_factor=upsample, mode="nearest"), [pad] * 4,
                       mode="reflect"), weight, bias, stride=stride)
    (the networks' [upsample ->] reflection pad -> conv layers; fastnst's kernels read the
    upsampled, padded input through index maps and never form it); conv3x3(x, weight, bias,
    upsample, pad) is conv with stride 1.

On the CPU's avx512 path, in float32, without autograd, outside torch.compile and autocast, a
call takes the first of these that serves it:

* ``winograd``: a 3x3 stride-1 weight with input and output channels multiples of 16: Winograd's
  F(4x4, 3x3) (maths and layout in csrc/cpu/conv_winograd.cpp), 4x fewer multiply-adds than the
  direct convolution, 2.5-4x faster than oneDNN's at the networks' 64-128-channel shapes here
  (equal at 32), at ~10-30x a direct fp32 convolution's rounding error (~1e-5 of the output's
  scale). A stride-1 k x k weight with k a multiple of 3 (the 9x9 RGB input layers) and output
  channels multiples of 16: the sum of its (k/3)^2 3x3 blocks' convolutions of the shifted
  input, each by F(4x4, 3x3) (``fastnst::conv_winograd_split``), 2.2x the direct kernel on the
  3-channel 9x9 layers, at the same rounding. Result channels_last.
* ``direct``: any other square weight and stride: fastnst's direct convolution
  (csrc/cpu/conv_direct.cpp), one fp32 FMA per product, 1.2-3x faster than oneDNN's at the
  networks' 9x9 RGB, stride-2 and few-channel layers here. Result channels_last for more than
  8 output channels, contiguous (NCHW) for 8 or fewer.

Anything else runs ``F.conv2d``. ``FASTNST_CONV=auto`` (the default) is that order;
``FASTNST_CONV=winograd`` or ``=direct`` keeps only that kernel (a ``conv``/``conv3x3`` call it
cannot serve raises, naming why); ``FASTNST_CONV=aten`` keeps every call on ``F.conv2d``.
Within a block, ``use_winograd(False)`` / ``use_direct(False)`` switch one kernel off.
``route(x, weight, bias, upsample, pad, stride)`` says which path a call takes and why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch
import torch.nn.functional as F

from fastnst import _ext
from fastnst.ops._common import resample

__all__ = ["conv", "conv3x3", "route", "use_direct", "use_winograd"]

_ENV = "FASTNST_CONV"
_CHOICES = ("auto", "winograd", "direct", "aten")
_STATE = threading.local()


def _env_choice() -> str:
    v = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if v not in _CHOICES:
        raise ValueError(f"{_ENV} must be auto, winograd, direct or aten, got {os.environ.get(_ENV)!r}")
    return v


@contextlib.contextmanager
def _switch(name: str, enabled: bool):
    old = getattr(_STATE, name, None)
    setattr(_STATE, name, bool(enabled))
    try:
        yield
    finally:
        setattr(_STATE, name, old)


def use_winograd(enabled: bool = True):
    """Within the block, conv / conv3x3 may use (True) or never use (False) the Winograd kernel."""
    return _switch("winograd", enabled)


def use_direct(enabled: bool = True):
    """Within the block, conv / conv3x3 may use (True) or never use (False) the direct kernel."""
    return _switch("direct", enabled)


@functools.lru_cache(maxsize=None)  # the C++ side reads FASTNST_CPU_ISA once per process too
def _cpu_isa() -> str:
    return _ext.build_info().get("cpu_isa", "generic") if _ext.available() else "none"


def _kernels(choice: str, winograd: bool, direct: bool) -> tuple[bool, bool]:
    """(Winograd on, direct on) under the environment choice, the use_* switches and the
    caller's own wishes."""
    w = winograd and choice in ("auto", "winograd") and getattr(_STATE, "winograd", None) is not False
    d = direct and choice in ("auto", "direct") and getattr(_STATE, "direct", None) is not False
    return w, d


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, upsample: int = 1,
          pad: int = 0, stride: int = 1, *, winograd: bool = True, direct: bool = True) -> tuple[str, str]:
    """``("winograd" | "direct" | "aten", why)``: the path ``conv(x, weight, bias, stride,
    upsample, pad)`` takes. ``winograd`` / ``direct`` False: the caller leaves that kernel out
    (a network's ``winograd_convs`` / ``direct_convs``), on top of the switches."""
    if torch.compiler.is_compiling():
        return "aten", "under torch.compile (Inductor plans the convolution)"
    winograd_on, direct_on = _kernels(_env_choice(), winograd, direct)
    if not (winograd_on or direct_on):
        return "aten", f"switched off ({_ENV}=aten, use_winograd(False) and use_direct(False), or the caller's choice)"
    if not _ext.available():
        return "aten", "fastnst's C++ extension is not built"
    if x.device.type != "cpu":
        return "aten", f"a {x.device.type} tensor (the kernels are CPU-only)"
    if _cpu_isa() not in ("avx512", "avx512bf16", "amx"):
        return "aten", f"the CPU path is {_cpu_isa()} (the kernels need avx512)"
    if torch.is_autocast_enabled("cpu"):
        return "aten", "under autocast (the convolution runs in the autocast dtype)"
    tensors = [x, weight] + ([bias] if bias is not None else [])
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "aten", "a gradient is needed (the kernels have no backward)"
    if any(t.dtype != torch.float32 for t in tensors):
        return "aten", "not float32"
    if (x.dim() != 4 or weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[1] != x.shape[1]
            or weight.shape[2] < 1):
        return "aten", "not a [B, C, H, W] input with a square [Co, C, k, k] weight"
    k = weight.shape[2]
    if x.shape[2] * upsample + 2 * pad < k or x.shape[3] * upsample + 2 * pad < k:
        return "aten", f"smaller than the {k} x {k} kernel"
    why_not = []
    if winograd_on:
        if k == 3 and stride == 1 and x.shape[1] % 16 == 0 and weight.shape[0] % 16 == 0:
            return "winograd", "Winograd F(4x4, 3x3) on AVX-512"
        if k % 3 == 0 and k >= 6 and stride == 1 and weight.shape[0] % 16 == 0:
            return "winograd", f"Winograd F(4x4, 3x3) on the 3x3 blocks of the {k}x{k} weight, on AVX-512"
        why_not.append("Winograd takes only stride-1 weights: 3x3 with channels multiples of 16, or k x k "
                       "(k a multiple of 3) with output channels multiples of 16")
    if direct_on:
        return "direct", "direct convolution on AVX-512"
    return "aten", "; ".join(why_not + ["the direct kernel is off"])


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
         upsample: int = 1, pad: int = 0, *, winograd: bool = True, direct: bool = True,
         _who: str = "conv") -> torch.Tensor:
    """The convolution of the module docstring: a square weight, ``stride`` >= 1, on x upsampled
    (nearest, an integer factor >= 1) and reflection-padded by ``pad`` (0 <= pad < the upsampled
    sides). See the module docstring for the kernel that serves it and its result's layout;
    ``F.conv2d``'s result follows x's layout, as aten decides. ``winograd`` / ``direct`` as
    in ``route``."""
    for name, v, lo in (("stride", stride, 1), ("upsample", upsample, 1), ("pad", pad, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{_who}: {name} must be an integer >= {lo}, got {v!r}")
    if x.dim() == 4 and (pad >= x.shape[2] * upsample or pad >= x.shape[3] * upsample):
        raise ValueError(f"{_who}: reflection padding {pad} must be smaller than the (upsampled) height and "
                         f"width {x.shape[2] * upsample} x {x.shape[3] * upsample}")
    path, why = route(x, weight, bias, upsample, pad, stride, winograd=winograd, direct=direct)
    if path == "winograd":  # (stride 1)
        if weight.shape[2] == 3:
            return torch.ops.fastnst.conv3x3_winograd(x, weight, bias, upsample, pad)
        return torch.ops.fastnst.conv_winograd_split(x, weight, bias, upsample, pad)
    if path == "direct":
        return torch.ops.fastnst.conv2d_direct(x, weight, bias, stride, upsample, pad)
    choice = _env_choice() if not torch.compiler.is_compiling() else "auto"
    if choice in ("winograd", "direct"):
        name = "Winograd" if choice == "winograd" else "direct"
        raise RuntimeError(f"{_who}: {_ENV}={choice}, but the {name} kernel cannot serve this call: {why}")
    return F.conv2d(resample(x, upsample, pad), weight, bias, stride=stride)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, upsample: int = 1,
            pad: int = 0) -> torch.Tensor:
    """``conv(x, weight, bias, 1, upsample, pad)``: the networks' 3x3 stride-1 layers."""
    return conv(x, weight, bias, 1, upsample, pad, _who="conv3x3")


def _fake_geometry(op, x, weight, bias):
    for name, t in (("weight", weight), ("bias", bias)):
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"fastnst::{op}: {name} must be on x's device {x.device}, got {t.device}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"fastnst::{op}: x must be [B, C, H, W] and weight [Co, C, k, k]")


def _fake_winograd(x, weight, bias, upsample=1, pad=0):
    _fake_geometry("conv3x3_winograd", x, weight, bias)
    b, _, h, w = x.shape
    h, w = h * upsample + 2 * pad, w * upsample + 2 * pad
    return x.new_empty(b, weight.shape[0], h - 2, w - 2).contiguous(memory_format=torch.channels_last)


def _fake_split(x, weight, bias, upsample=1, pad=0):
    _fake_geometry("conv_winograd_split", x, weight, bias)
    b, _, h, w = x.shape
    k = weight.shape[2]
    h, w = h * upsample + 2 * pad, w * upsample + 2 * pad
    return x.new_empty(b, weight.shape[0], h - k + 1, w - k + 1).contiguous(memory_format=torch.channels_last)


def _fake_direct(x, weight, bias, stride=1, upsample=1, pad=0):
    _fake_geometry("conv2d_direct", x, weight, bias)
    b, _, h, w = x.shape
    co, k = weight.shape[0], weight.shape[2]
    h, w = (h * upsample + 2 * pad - k) // stride + 1, (w * upsample + 2 * pad - k) // stride + 1
    y = x.new_empty(b, co, h, w)
    return y if co <= 8 else y.contiguous(memory_format=torch.channels_last)


def _no_backward(op):
    def backward(ctx, grad):
        raise RuntimeError(f"fastnst::{op} is inference-only (no backward); call fastnst.ops.conv.conv, "
                           "which takes aten's convolution when a gradient is needed")
    return backward


if _ext.available():
    for _op, _f in (("conv3x3_winograd", _fake_winograd), ("conv_winograd_split", _fake_split),
                    ("conv2d_direct", _fake_direct)):
        torch.library.register_fake(f"fastnst::{_op}")(_f)
        torch.library.register_autograd(f"fastnst::{_op}", _no_backward(_op),
                                        setup_context=lambda ctx, inputs, output: None)
