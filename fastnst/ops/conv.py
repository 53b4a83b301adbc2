"""3x3, stride-1 convolution for network inference: ``fastnst::conv3x3_winograd``.

    conv3x3(x, weight, bias, upsample, pad):
        F.conv2d(F.pad(F.interpolate(x, scale_factor=upsample, mode="nearest"), [pad] * 4,
                       mode="reflect"), weight, bias)
    (the networks' [upsample ->] reflection pad -> 3x3 conv layers; the kernel reads the
    upsampled, padded input through index maps and never forms it)

On the CPU's avx512 path, in float32, without autograd, outside torch.compile and autocast, with
input and output channels multiples of 16, it runs Winograd's F(4x4, 3x3) (maths and layout in
csrc/cpu/conv_winograd.cpp): 4x fewer multiply-adds than the direct convolution, 2.5-4x faster
than oneDNN's at the networks' 64-128-channel shapes here (equal at 32), at ~10-30x a direct
fp32 convolution's rounding error (~1e-5 of the output's scale). Anything else runs
``F.conv2d``. ``FASTNST_CONV=aten`` (or ``use_winograd(False)``) keeps every call on
``F.conv2d``; ``route(x, weight)`` says which path a call takes and why.
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

__all__ = ["conv3x3", "route", "use_winograd"]

_ENV = "FASTNST_CONV"
_STATE = threading.local()


def _env_choice() -> str:
    v = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if v not in ("auto", "winograd", "aten"):
        raise ValueError(f"{_ENV} must be auto, winograd or aten, got {os.environ.get(_ENV)!r}")
    return v


@contextlib.contextmanager
def use_winograd(enabled: bool = True):
    """Within the block, conv3x3 may use (True) or never uses (False) the Winograd kernel."""
    old = getattr(_STATE, "enabled", None)
    _STATE.enabled = bool(enabled)
    try:
        yield
    finally:
        _STATE.enabled = old


@functools.lru_cache(maxsize=None)  # the C++ side reads FASTNST_CPU_ISA once per process too
def _cpu_isa() -> str:
    return _ext.build_info().get("cpu_isa", "generic") if _ext.available() else "none"


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, upsample: int = 1,
          pad: int = 0) -> tuple[str, str]:
    """``("winograd" | "aten", why)``: the path ``conv3x3(x, weight, bias, upsample, pad)`` takes."""
    if torch.compiler.is_compiling():
        return "aten", "under torch.compile (Inductor plans the convolution)"
    choice = _env_choice()
    if getattr(_STATE, "enabled", None) is False or choice == "aten":
        return "aten", f"switched off ({_ENV}=aten or use_winograd(False))"
    if not _ext.available():
        return "aten", "fastnst's C++ extension is not built"
    if x.device.type != "cpu":
        return "aten", f"a {x.device.type} tensor (the kernel is CPU-only)"
    if _cpu_isa() not in ("avx512", "avx512bf16", "amx"):
        return "aten", f"the CPU path is {_cpu_isa()} (the kernel needs avx512)"
    if torch.is_autocast_enabled("cpu"):
        return "aten", "under autocast (the convolution runs in the autocast dtype)"
    tensors = [x, weight] + ([bias] if bias is not None else [])
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "aten", "a gradient is needed (the kernel has no backward)"
    if any(t.dtype != torch.float32 for t in tensors):
        return "aten", "not float32"
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3) or weight.shape[1] != x.shape[1]:
        return "aten", "not a [B, C, H, W] input with a [Co, C, 3, 3] weight"
    if x.shape[1] % 16 or weight.shape[0] % 16:
        return "aten", "channels not multiples of 16"
    if x.shape[2] * upsample + 2 * pad < 3 or x.shape[3] * upsample + 2 * pad < 3:
        return "aten", "smaller than 3 x 3"
    return "winograd", "Winograd F(4x4, 3x3) on AVX-512"


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, upsample: int = 1,
            pad: int = 0) -> torch.Tensor:
    """The convolution of the module docstring: a 3x3 weight, stride 1, on x upsampled (nearest,
    an integer factor >= 1) and reflection-padded by ``pad`` (0 <= pad < the upsampled sides).
    See the module docstring for when the Winograd kernel serves it. The Winograd result is
    channels_last; ``F.conv2d``'s follows x's layout, as aten decides."""
    for name, v, lo in (("upsample", upsample, 1), ("pad", pad, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"conv3x3: {name} must be an integer >= {lo}, got {v!r}")
    if x.dim() == 4 and (pad >= x.shape[2] * upsample or pad >= x.shape[3] * upsample):
        raise ValueError(f"conv3x3: reflection padding {pad} must be smaller than the (upsampled) height and "
                         f"width {x.shape[2] * upsample} x {x.shape[3] * upsample}")
    path, why = route(x, weight, bias, upsample, pad)
    if path == "winograd":
        return torch.ops.fastnst.conv3x3_winograd(x, weight, bias, upsample, pad)
    if not torch.compiler.is_compiling() and _env_choice() == "winograd":
        raise RuntimeError(f"conv3x3: {_ENV}=winograd, but the Winograd kernel cannot serve this call: {why}")
    return F.conv2d(resample(x, upsample, pad), weight, bias)


def _fake(x, weight, bias, upsample=1, pad=0):
    for name, t in (("weight", weight), ("bias", bias)):
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"fastnst::conv3x3_winograd: {name} must be on x's device {x.device}, got {t.device}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError("fastnst::conv3x3_winograd: x must be [B, C, H, W] and weight [Co, C, 3, 3]")
    b, _, h, w = x.shape
    h, w = h * upsample + 2 * pad, w * upsample + 2 * pad
    return x.new_empty(b, weight.shape[0], h - 2, w - 2).contiguous(memory_format=torch.channels_last)


def _no_backward(ctx, grad):
    raise RuntimeError("fastnst::conv3x3_winograd is inference-only (no backward); call "
                       "fastnst.ops.conv.conv3x3, which takes aten's convolution when a gradient is needed")


if _ext.available():
    torch.library.register_fake("fastnst::conv3x3_winograd")(_fake)
    torch.library.register_autograd("fastnst::conv3x3_winograd", _no_backward,
                                    setup_context=lambda ctx, inputs, output: None)
