"""One precision setting, ``fp32 | bf16 | fp16``, honoured the same way by every method.

Weights, the optimiser and the image being optimised stay in float32; ``bf16`` / ``fp16`` run
the forward passes under ``torch.autocast`` (convolutions and matrix products in the low
precision; fastnst's ops read it and keep float32 statistics). ``fp16`` training scales the
loss (``torch.amp.GradScaler``). A precision the device cannot run is an error, never a silent
fp32 run."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check(precision: str, device: str | torch.device) -> str:
    """``precision`` if ``device`` runs it, else a ValueError that says why."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    if precision == "fp32":
        return precision
    if dev.type == "cuda":
        if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision bf16: {torch.cuda.get_device_name(dev)} has no bfloat16 support")
        return precision
    if dev.type != "cpu":
        raise ValueError(f"precision {precision}: fastnst runs low precision on cpu and cuda, not {dev.type}")
    if precision == "fp16":
        flags = cpu_flags()
        if not flags & {"avx512_fp16", "amx_fp16"}:
            raise ValueError("precision fp16 needs a CPU with AVX512-FP16 or AMX-FP16 (this one has "
                             f"neither; its matrix ISA: {matrix_isa(flags)}): fp16 would be emulated, "
                             "slower than fp32; use bf16 or fp32")
    return precision


def matrix_isa(flags: set[str] | None = None) -> str:
    """The CPU's flags that decide the low-precision paths, e.g. "avx512f, avx512_bf16, amx_bf16"."""
    flags = cpu_flags() if flags is None else flags
    keys = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16",
            "amx_fp16", "amx_int8")
    have = [k for k in keys if k in flags]
    return ", ".join(have) if have else "none of avx2, avx512, amx"


def autocast(precision: str, device: str | torch.device):
    """The autocast context of ``precision`` on ``device`` (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: str | torch.device):
    """A GradScaler for fp16 training, else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
