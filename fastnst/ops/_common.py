"""Input validation shared by the ops (every error states the contract), and the pad/upsample
composite of the network-stage ops."""

from __future__ import annotations

import contextlib

import torch

from fastnst.ops import autocast

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(op: str, name: str, x, ranks: tuple[int, ...], layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() not in ranks:
        raise ValueError(f"{op}: {name} must be {layout}, got {shape_str(x)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float16 or bfloat16 (float64 on the CPU), got {x.dtype}")
    if x.dtype == torch.float64 and x.device.type not in ("cpu", "meta"):
        raise TypeError(f"{op}: float64 is supported on the CPU only (for gradcheck), "
                        f"got {name} on {x.device}")
    if x.numel() == 0:
        raise ValueError(f"{op}: {name} must be non-empty, got {shape_str(x)}")


def check_same_device(op: str, a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{op}: {a_name} and {b_name} must be on the same device, "
                         f"got {a.device} and {b.device}")


def grad_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """The layout rule of every [B, C, L] result of the kernels (csrc/cpu/layout.h applies the
    same): x's layout when x is channels-innermost (a channels_last image viewed as
    [B, C, H*W]), else contiguous. Used by the fake kernels."""
    _, c, l = x.shape
    if c > 1 and x.stride(1) == 1 and x.stride(2) == c:
        return (c * l, 1, c)
    return (c * l, l, 1)


def resample(y: torch.Tensor, upsample: int, pad: int) -> torch.Tensor:
    """``F.pad(F.interpolate(y, scale_factor=upsample, mode="nearest"), [pad] * 4, mode="reflect")``
    in y's dtype, under autocast too (autocast makes reflection_pad an fp32 op; both are copies,
    exact in any dtype)."""
    off = autocast.enabled(y.device.type)
    with torch.autocast(y.device.type, enabled=False) if off else contextlib.nullcontext():
        if upsample > 1:
            y = torch.nn.functional.interpolate(y, scale_factor=int(upsample), mode="nearest")
        return torch.nn.functional.pad(y, (pad,) * 4, mode="reflect") if pad else y
