"""Autocast rules of the fastnst ops, registered at the dispatcher (AutocastCPU, AutocastCUDA).

Under ``torch.autocast(device_type, dtype=D)`` every forward op follows one rule, in the manner
of PyTorch's own autocast op lists, whether it is reached through the public functions, called
as ``torch.ops.fastnst.<op>`` or traced by torch.compile:

=======================  ===========  ========================================================
op (+ its _triton twin)  rule         under autocast
=======================  ===========  ========================================================
gram                     lower        x cast to D; G in D (accumulated in fp32 inside)
style_swap_match         lower        content and style cast to D (products accumulated in fp32)
instance_norm            activation   x cast to D; weight/bias as given (read in place, fp32
                                      stays fp32, gradients in their dtype); mean/rstd fp32;
                                      y in D
instance_norm_pad        activation   x and residual cast to D; weight/bias as given; out in D
                                      (C++ only)
mean_std                 keep         x in its own dtype; statistics in x's dtype
style_swap_reconstruct   keep         the style's dtype
conv3x3_winograd         keep         float32 only (C++ only); fastnst.ops.conv.conv runs
                                      aten's convolution under autocast
conv_winograd_split      keep         as conv3x3_winograd
conv2d_direct            keep         as conv3x3_winograd
*_backward               (none)       autocast's fallthrough, as PyTorch's backward ops: they
                                      run on the dtypes the forward saved
=======================  ===========  ========================================================

"Cast" follows ``torch.autocast``: floating tensors on the autocast device, float64 excepted
(float64 runs in float64, in or out of autocast); other arguments are left alone. The op then
runs with autocast off for its device. mean_std keeps x's dtype as PyTorch's reductions do: it
is memory-bound and accumulates in fp32 already, so a cast down would lose precision for no
speed and a cast up would cost a pass for no precision. Autocast-specific consequences in the
public functions: adain's styles need not share the content's dtype (their statistics are taken
in their own dtype and read by the norm in place), style_swap's content and style need only
agree after the cast, instance_norm_pad's composite path (autograd, torch.compile) keeps y's
dtype through the upsample and the reflection pad (an fp32 op under CPU autocast), as its fused
kernel does, and gram_loss compares against the target without rounding it to G's dtype
(mse_loss is an fp32 op under autocast). ``backend="reference"`` is plain PyTorch and follows
PyTorch's own autocast lists instead.

The rules are Python kernels at the Autocast keys: outside autocast they cost nothing; under
it, about 10 us a call.
"""

from __future__ import annotations

import dataclasses

import torch

from fastnst import _ext

__all__ = ["DEVICE_TYPES", "POLICY", "Rule", "cast_dtype", "enabled", "register", "rule"]

DEVICE_TYPES = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class Rule:
    """kind: "lower" (every floating input cast), "activation" (the activations only, the
    affine parameters as given), "keep" (nothing cast) or "none" (no rule registered: autocast
    falls through). cast: the indices of the arguments cast to the autocast dtype."""

    kind: str
    cast: tuple[int, ...] = ()


_FORWARD = {
    "gram": Rule("lower", (0,)),
    "style_swap_match": Rule("lower", (0, 1)),
    "instance_norm": Rule("activation", (0,)),
    "instance_norm_pad": Rule("activation", (0, 5)),  # x, residual
    "mean_std": Rule("keep"),
    "style_swap_reconstruct": Rule("keep"),
    "conv3x3_winograd": Rule("keep"),  # float32 only; fastnst.ops.conv.conv takes aten's conv under autocast
    "conv_winograd_split": Rule("keep"),  # likewise
    "conv2d_direct": Rule("keep"),  # likewise
}
_BACKWARD = ("gram_backward", "mean_std_backward", "instance_norm_backward")

_NO_TRITON = ("instance_norm_pad", "conv3x3_winograd", "conv_winograd_split", "conv2d_direct")  # C++ only

# Every fastnst op, C++ (no suffix) and Triton (``_triton``), with its rule.
POLICY: dict[str, Rule] = {}
for _name, _rule in list(_FORWARD.items()) + [(b, Rule("none")) for b in _BACKWARD]:
    POLICY[_name] = _rule
    if _name not in _NO_TRITON:
        POLICY[_name + "_triton"] = _rule


def rule(op: str) -> Rule:
    """The rule of ``op`` (``"gram"``, ``"fastnst::gram_triton"``, ...)."""
    return POLICY[op.split("::")[-1]]


def enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (False for a device type without autocast)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def cast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a cast of an autocast rule gives ``t`` here (``t.dtype`` outside autocast)."""
    if t.is_floating_point() and t.dtype != torch.float64 and enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def _cast(a, device_type: str, dtype: torch.dtype):
    if (isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64
            and a.device.type == device_type):
        return a.to(dtype)
    return a


def _kernel(op: torch._ops.OpOverload, key: str, device_type: str, cast: tuple[int, ...]):
    below = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def run(*args, **kwargs):
        if kwargs:  # by position, with the schema's defaults for any not given
            rest = op._schema.arguments[len(args):]
            args = args + tuple(kwargs[a.name] if a.name in kwargs else a.default_value for a in rest)
        if cast:
            dtype = torch.get_autocast_dtype(device_type)
            args = tuple(_cast(a, device_type, dtype) if i in cast else a for i, a in enumerate(args))
        with torch._C._ExcludeDispatchKeyGuard(below):  # the op itself runs without autocast
            return op(*args)

    return run


_LIB: torch.library.Library | None = None  # kept alive: it owns the registrations


def register() -> None:
    """Register the rules (once; fastnst.ops calls it when every op module is imported)."""
    global _LIB
    if _LIB is not None:
        return
    _LIB = torch.library.Library("fastnst", "IMPL")
    for name, r in POLICY.items():
        if r.kind == "none" or (not name.endswith("_triton") and not _ext.available()):
            continue
        op = getattr(torch.ops.fastnst, name).default
        for device_type in DEVICE_TYPES:
            if not torch.amp.is_autocast_available(device_type):
                continue
            key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
            run = _kernel(op, key, device_type, r.cast)
            # The C++ dispatch table (eager calls), and the Python dispatcher's table (tracing),
            # as torch.library.register_autocast does.
            _LIB.impl(name, lambda _keyset, *args, _run=run, **kwargs: _run(*args, **kwargs), key, with_keyset=True)
            dk = getattr(torch._C.DispatchKey, key)
            op.py_kernels.pop(dk, None)
            op.py_impl(dk)(run)

