"""Backend selection: ``backend="auto"|"cpu"|"cuda"|"triton"|"reference"`` on every op.

Precedence: an explicit ``backend=`` argument other than "auto", then the innermost
``fastnst.use_backend(...)`` context, then the ``FASTNST_BACKEND`` environment variable,
then "auto". "auto" takes the best backend that serves the input (cpu for CPU tensors,
cuda, then triton, for CUDA tensors) and the reference only when no kernel serves it.
A backend named explicitly that cannot serve the input raises ``BackendError``: nothing is
substituted silently.

Ops are named by their public name (``"gram_matrix"``, ``"adain"``, ...); which registered
kernel decides availability comes from the op's spec in ``fastnst.ops.registry``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Iterator

import torch

from fastnst import _ext

BACKENDS = ("cpu", "cuda", "triton", "reference")
_CHOICES = ("auto",) + BACKENDS

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastnst_backend", default=None)


class BackendError(RuntimeError):
    """A backend was asked for by name and cannot serve the input."""


def _check_name(name: str, where: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(_CHOICES)}; got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every fastnst op inside the block on backend ``name`` (unless a call names one)."""
    token = _override.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _override.reset(token)


def requested(backend: str = "auto") -> str:
    """The backend a call asks for once the context manager and FASTNST_BACKEND are applied."""
    _check_name(backend, "backend")
    if backend != "auto":
        return backend
    ctx = _override.get()
    if ctx is not None and ctx != "auto":
        return ctx
    env = os.environ.get("FASTNST_BACKEND", "auto").strip() or "auto"
    return _check_name(env, "the FASTNST_BACKEND environment variable")


@functools.lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    """(importable, note). Triton runs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"triton is not installed ({type(exc).__name__})"
    return True, f"triton {triton.__version__}"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_op_registered(op: str) -> bool:
    """Whether fastnst::<op> has a CUDA kernel in the loaded extension (no CUDA init)."""
    if not _ext.available():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastnst::{op}", "CUDA")


def cpu_op_registered(op: str) -> bool:
    if not _ext.available():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastnst::{op}", "CPU")


def _kernel(op) -> str:
    from fastnst.ops import registry  # lazily: the op modules import this module

    return registry.get(op).kernel


def _public(op) -> str:
    from fastnst.ops import registry

    return registry.get(op).name


def serves(name: str, op, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when backend ``name`` serves the public op ``op`` (a name or an OpSpec) for a
    tensor on ``device`` of ``dtype``, else the reason it does not."""
    if name == "reference":
        return None
    op = _kernel(op)
    if name == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs CPU tensors, got a tensor on {device}"
        if not cpu_op_registered(op):
            return "fastnst._C is not built or failed to load (" + (_ext.import_error() or "no CPU kernel") + ")"
        return None
    if name == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs CUDA tensors, got a tensor on {device}"
        if not cuda_op_registered(op):
            return "fastnst._C was built without CUDA kernels (set FASTNST_FORCE_CUDA=1 or use a CUDA torch)"
        if dtype == torch.float64:
            return "the cuda backend takes float32, float16 or bfloat16 (float64 is CPU-only)"
        return None
    if name == "triton":
        ok, note = triton_status()
        if not ok:
            return note
        if device.type == "cuda":
            if dtype == torch.float64:
                return "the triton backend takes float32, float16 or bfloat16"
            return None
        if device.type == "cpu" and triton_interpret():
            return None
        return (f"the triton backend runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                f"got a tensor on {device}")
    raise ValueError(f"unknown backend {name!r}")


def resolve(op, x: torch.Tensor, backend: str = "auto") -> str:
    """The backend that will run the public op ``op`` (a name or an OpSpec) on ``x``; raises
    BackendError, naming the op, for an explicit backend that cannot serve it. Under
    torch.compile the choice is made once, at trace time."""
    return _resolve(_public(op), x.device, x.dtype, backend)


@torch.compiler.assume_constant_result
def _resolve(op: str, device: torch.device, dtype: torch.dtype, backend: str) -> str:
    name = requested(backend)
    if name != "auto":
        why = serves(name, op, device, dtype)
        if why is not None:
            raise BackendError(f"{op}: backend {name!r} cannot serve this input: {why}")
        return name
    order = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    for cand in order:
        if serves(cand, op, device, dtype) is None:
            return cand
    return "reference"


def availability(op) -> dict[str, str]:
    """Per backend, 'yes' or the reason the public op ``op`` is unavailable for float32 inputs
    (no CUDA init)."""
    out = {}
    cpu = torch.device("cpu")
    why = serves("cpu", op, cpu, torch.float32)
    out["cpu"] = "yes" if why is None else "no: " + why
    out["cuda"] = "yes (kernels built)" if cuda_op_registered(_kernel(op)) else "no: not built"
    ok, note = triton_status()
    if not ok:
        out["triton"] = "no: " + note
    elif triton_interpret():
        out["triton"] = "yes (interpreter: CPU tensors)"
    elif torch.version.cuda is None:
        out["triton"] = "installed; needs CUDA (CPU torch)"
    else:
        out["triton"] = "yes (CUDA tensors)"
    out["reference"] = "yes"
    return out

