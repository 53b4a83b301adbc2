"""One spec per public op: its public name, the registered kernel ops per backend, its
plain-PyTorch reference, and sample inputs for the tests.

Everything that needs to know about an op reads it from here: ``fastnst.backend.resolve``
(which backend serves an input, and the error naming the public op), ``fastnst info`` (the
op × backend table), the benchmarks (which fastnst backends to time) and the generic op test
suite (``tests/test_ops.py``, which runs every spec's sample inputs through parity with the
reference, gradcheck, opcheck and torch.compile). Each op module (``fastnst/ops/<op>.py``)
registers the specs of the public functions it defines.

This module imports nothing else of fastnst, so the backend layer can read it without cycles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

__all__ = ["OpSpec", "Sample", "SPECS", "get", "register"]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One call of a public op: ``function(*args, **kwargs)``; ``grad`` lists the indices of
    args that are differentiable tensors (for gradcheck); ``note`` says what edge it covers."""

    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    grad: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """A public op, ``fastnst.<name>``.

    kernel: the registered C++ op (``torch.ops.fastnst.<kernel>``) whose CPU and CUDA kernels
        serve it; its availability decides the cpu and cuda backends.
    triton: the Triton twin (``torch.ops.fastnst.<triton>``).
    backward: the registered backward ops (kernel names), for opcheck; empty if none.
    function: the public function; reference: the executable specification, called with the
        same arguments as ``function`` minus ``backend`` (see ``reference_call``).
    samples: ``samples(device, dtype) -> [Sample]``, inputs every backend must get right.
    differentiable: gradients flow to the inputs listed in each Sample's ``grad``.
    """

    name: str
    kernel: str
    triton: str
    function: Callable[..., Any]
    reference_call: Callable[..., Any]
    samples: Callable[[torch.device, torch.dtype], Sequence[Sample]]
    differentiable: bool = True
    backward: tuple[str, ...] = ()
    doc: str = ""

    def kernel_op(self, backend: str):
        """The registered op that ``backend`` ("cpu", "cuda" or "triton") runs."""
        if backend == "triton":
            return getattr(torch.ops.fastnst, self.triton)
        if backend in ("cpu", "cuda"):
            return getattr(torch.ops.fastnst, self.kernel)
        raise ValueError(f"{self.name}: backend {backend!r} has no registered kernel op")


SPECS: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in SPECS:
        raise ValueError(f"fastnst op {spec.name!r} is registered twice")
    SPECS[spec.name] = spec
    return spec


def get(op: "str | OpSpec") -> OpSpec:
    """The spec of a public op, by name (``"gram_matrix"``) or the spec itself."""
    if isinstance(op, OpSpec):
        return op
    # The op modules register themselves on import (importing any fastnst module imports them).
    try:
        return SPECS[op]
    except KeyError:
        raise ValueError(f"unknown fastnst op {op!r}; the ops are {', '.join(sorted(SPECS))}") from None
