"""Modules over fastnst's ops, and ``accelerate(model)``.

* ``InstanceNorm2d``: drop-in for ``nn.InstanceNorm2d`` without running statistics (same
  constructor arguments, same state_dict keys: ``weight``/``bias`` when affine).
* ``InstanceNormReLU``: the same followed by a ReLU, fused (the mask is recomputed in the
  backward from the output).
* ``ConditionalInstanceNorm2d(num_styles, channels)``: one γ/β per style (Dumoulin et al.
  2017); pick a style per sample by index, or mix styles with a weight vector per sample.
* ``AdaIN``: ``fastnst.adain`` as a module.
* ``StyleSwap``: ``fastnst.style_swap`` as a module.
* ``accelerate(model)``: rebuilds every ``nn.InstanceNorm2d`` it can serve as a fastnst
  module — and fuses an ``nn.ReLU`` that directly follows one inside an ``nn.Sequential`` —
  copying parameters, like ``nn.SyncBatchNorm.convert_sync_batchnorm``. No monkey-patching.
  Then a ``torch.fx`` trace fuses the ReLUs a forward calls itself after a norm (returning a
  GraphModule with the model's state_dict keys), where the forward can be traced.
"""

from __future__ import annotations

import copy
import logging
import numbers
from typing import Sequence

import torch
import torch.fx
import torch.nn as nn

from fastnst.ops.norm import adain, instance_norm
from fastnst.ops.style_swap import style_swap

log = logging.getLogger("fastnst")


class InstanceNorm2d(nn.Module):
    """Instance norm over [B, C, H, W] (or unbatched [C, H, W]) on fastnst's fused kernel."""

    activation: str | None = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device=None, dtype=None):
        super().__init__()
        if track_running_stats:
            raise ValueError("fastnst InstanceNorm2d normalises with each sample's own statistics: "
                             "track_running_stats=True is not supported (keep nn.InstanceNorm2d)")
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.track_running_stats = False
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: input must be [B, {self.num_features}, H, W], "
                             f"got {list(x.shape)}")
        y = instance_norm(x, self.weight, self.bias, self.eps, self.activation)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class InstanceNormReLU(InstanceNorm2d):
    """InstanceNorm2d followed by ReLU, in one fused pass (forward and backward)."""

    activation = "relu"


class ConditionalInstanceNorm2d(nn.Module):
    """Conditional instance norm: ``num_styles`` sets of (γ, β) over ``channels``.

    ``forward(x, style)``: style is an int (every sample), a LongTensor [B] of indices, or a
    float tensor [B, num_styles] (or [num_styles]) of mixing weights — mixing styles mixes γ/β.
    """

    def __init__(self, num_styles: int, channels: int, eps: float = 1e-5, activation: str | None = None):
        super().__init__()
        self.num_styles, self.channels, self.eps, self.activation = num_styles, channels, eps, activation
        self.weight = nn.Parameter(torch.ones(num_styles, channels))
        self.bias = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, style) -> torch.Tensor:
        w, bb = self.affine(style, x.shape[0])
        return instance_norm(x, w, bb, self.eps, self.activation)

    def affine(self, style, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-sample (γ, β), each [b, channels], that ``style`` (as ``forward`` takes it)
        selects or mixes for a batch of ``b``."""
        n = self.num_styles
        if isinstance(style, bool) or (isinstance(style, torch.Tensor) and style.dtype == torch.bool):
            raise TypeError("style must be an int index, a LongTensor [B] of indices or a float tensor "
                            "of mixing weights, got a bool")
        if isinstance(style, numbers.Integral):
            if not 0 <= style < n:
                raise ValueError(f"style index must be in [0, {n}), got {style}")
            w, bb = self.weight[int(style)].expand(b, -1), self.bias[int(style)].expand(b, -1)
        elif isinstance(style, torch.Tensor) and not style.is_floating_point():
            if style.is_complex():
                raise TypeError(f"style weights must be a real float tensor, got {style.dtype}")
            if style.shape != (b,):
                raise ValueError(f"style indices must be [B] = [{b}], got {list(style.shape)}")
            if style.device.type != "meta" and style.numel():
                lo, hi = int(style.min()), int(style.max())
                if lo < 0 or hi >= n:  # no negative indexing from the end, no raw IndexError
                    raise ValueError(f"style indices must be in [0, {n}), got values in [{lo}, {hi}]")
            w, bb = self.weight[style], self.bias[style]
        elif isinstance(style, torch.Tensor):
            mix = style.expand(b, -1) if style.dim() == 1 else style
            if mix.shape != (b, self.num_styles):
                raise ValueError(f"style weights must be [B, num_styles] = [{b}, {self.num_styles}] "
                                 f"or [num_styles], got {list(style.shape)}")
            mix = mix.to(self.weight.dtype)
            w, bb = mix @ self.weight, mix @ self.bias
        else:
            raise TypeError(f"style must be an int, a LongTensor [B] or a float tensor of weights, "
                            f"got {type(style).__name__}")
        return w, bb

    def extra_repr(self) -> str:
        return f"num_styles={self.num_styles}, channels={self.channels}, eps={self.eps}"


class AdaIN(nn.Module):
    """``fastnst.adain`` as a module: forward(content, style[, style_weights])."""

    def __init__(self, alpha: float = 1.0, eps: float = 1e-5, unbiased: bool = True,
                 style_eps: float | None = None):
        super().__init__()
        self.alpha, self.eps, self.unbiased, self.style_eps = alpha, eps, unbiased, style_eps

    def forward(self, content, style, style_weights: Sequence[float] | None = None):
        return adain(content, style, self.alpha, self.eps, self.unbiased, style_weights, self.style_eps)


class StyleSwap(nn.Module):
    """``fastnst.style_swap`` as a module: forward(content, style) -> swapped features
    (or (features, indices) with ``return_indices=True``). No parameters."""

    def __init__(self, patch_size: int = 3, stride: int = 1, eps: float = 1e-8,
                 return_indices: bool = False):
        super().__init__()
        self.patch_size, self.stride, self.eps, self.return_indices = patch_size, stride, eps, return_indices

    def forward(self, content, style):
        return style_swap(content, style, self.patch_size, self.stride, self.return_indices, eps=self.eps)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, stride={self.stride}, eps={self.eps}"


# ---- accelerate -------------------------------------------------------------------------------
def _convert(m: nn.Module, cls) -> InstanceNorm2d:
    """A fastnst norm of class ``cls`` in place of ``m`` (an nn or fastnst InstanceNorm2d)."""
    new = cls(m.num_features, m.eps, m.momentum, m.affine)
    if m.affine:
        new.weight = m.weight  # the same Parameter objects: optimisers keep working
        new.bias = m.bias
    new.train(m.training)
    return new


def _servable(m: nn.Module) -> str | None:
    """None if fastnst can replace m, else why not."""
    if type(m) is not nn.InstanceNorm2d:
        return "not an nn.InstanceNorm2d"
    if m.track_running_stats:
        return "track_running_stats=True (it normalises with running statistics in eval mode)"
    return None


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with fastnst's own modules kept whole (like torch.nn's)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__ == __name__ or super().is_leaf_module(m, qualname)


_RELU_FUNCTIONS = (torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu_)


def _relu_of(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True if ``node`` is a ReLU of its first argument and nothing else: ``nn.ReLU()`` (also
    in-place), ``F.relu(x[, inplace])``, ``torch.relu(x)``, ``x.relu()`` and their ``_`` forms."""
    if node.op == "call_module":
        ok = type(modules.get(node.target)) is nn.ReLU
    elif node.op == "call_function":
        ok = node.target in _RELU_FUNCTIONS
    elif node.op == "call_method":
        ok = node.target in ("relu", "relu_")
    else:
        return False
    if node.target is torch.nn.functional.relu:  # F.relu(x, inplace=...)
        return len(node.args) in (1, 2) and set(node.kwargs) <= {"inplace"}
    return ok and len(node.args) == 1 and not node.kwargs


def _fx_fusions(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> dict[str, list[torch.fx.Node]]:
    """{path of a plain fastnst InstanceNorm2d: the ReLU nodes to fold into it} for each norm
    every call of which feeds exactly one node, a ReLU (a norm whose output is used by anything
    else, or one called once with and once without a ReLU, is not fused)."""
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and type(modules.get(node.target)) is InstanceNorm2d:
            calls.setdefault(node.target, []).append(node)
    fused = {}
    for path, nodes in calls.items():
        relus = []
        for node in nodes:
            users = list(node.users)
            if len(users) != 1 or not _relu_of(users[0], modules) or users[0].args[0] is not node:
                break
            relus.append(users[0])
        else:
            fused[path] = relus
    return fused


def _mirror(m: nn.Module, swaps: dict[str, nn.Module], prefix: str = "") -> nn.Module:
    """``m`` with the modules at the paths in ``swaps`` replaced, without touching ``m``: the
    containers on the way are shallow copies (same class, parameters, buffers and hooks, so the
    same state_dict keys in the same order), everything else is shared."""
    if prefix in swaps:
        return swaps[prefix]
    if not any(p.startswith(prefix) for p in swaps):
        return m
    c = copy.copy(m)
    for k, v in vars(m).items():
        if isinstance(v, (dict, set)):
            c.__dict__[k] = copy.copy(v)
    for name, child in m._modules.items():
        if child is not None:
            c._modules[name] = _mirror(child, swaps, f"{prefix}{name}.")
    return c


def _fx_accelerate(model: nn.Module, changed: dict[str, str]) -> tuple[nn.Module | None, str]:
    """Trace ``model`` (whose norms are already fastnst's) and fuse the ReLUs its forward applies
    to a plain norm. Returns (GraphModule or None if there was nothing to fuse, what it did)."""
    before = set(vars(model))
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001  (any failure to trace means: keep module replacement)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"modules (torch.fx could not trace forward: {type(e).__name__}: {reason})"
    finally:  # the tracer stores the tensor constants of forward on the model: take them back
        added = {k: model.__dict__.pop(k) for k in set(vars(model)) - before}
    modules = dict(model.named_modules())
    fused = _fx_fusions(graph, modules)
    if not fused:
        return None, "modules (traced with torch.fx: no ReLU left to fuse)"
    for path, relus in fused.items():
        for relu in relus:
            relu.replace_all_uses_with(relu.args[0])
            graph.erase_node(relu)
        changed[path] = f"{path} + the ReLU its forward applies: InstanceNorm2d + ReLU -> InstanceNormReLU (fx)"
    graph.lint()
    root = _mirror(model, {f"{p}.": _convert(modules[p], InstanceNormReLU) for p in fused})
    root.__dict__.update(added)  # a copy (the swaps are below it): the model stays as it was
    gm = torch.fx.GraphModule(root, graph, class_name=type(model).__name__)
    # The model's own hierarchy and state (GraphModule keeps only what the graph reads, and
    # makes every tensor a persistent buffer): the same state_dict keys, in the same order.
    gm.__dict__["_modules"] = dict(root._modules)
    gm.__dict__["_parameters"] = dict(model._parameters)
    gm.__dict__["_buffers"] = dict(model._buffers)
    gm.__dict__["_non_persistent_buffers_set"] = set(model._non_persistent_buffers_set)
    for name, value in added.items():  # forward's constants: follow .to(), stay out of state_dict
        if isinstance(value, torch.Tensor):
            gm.register_buffer(name, value, persistent=False)
        else:
            setattr(gm, name, value)
    gm.train(model.training)
    n = sum(len(r) for r in fused.values())
    return gm, (f"fx (traced with torch.fx: fused the ReLU that forward applies after {len(fused)} "
                f"norms, {n} calls; returns a torch.fx.GraphModule)")


def accelerate(model: nn.Module, verbose: bool = False, trace: bool = True) -> nn.Module:
    """Replace, in place, every ``nn.InstanceNorm2d`` without running statistics by
    fastnst's fused ``InstanceNorm2d`` (sharing its parameters), and fuse an ``nn.ReLU`` that
    directly follows one inside an ``nn.Sequential`` into ``InstanceNormReLU`` (the ReLU's slot
    becomes ``nn.Identity``, so state_dict keys do not change). A module may also list, in a
    ``fastnst_relu_after`` attribute, the names of its instance norms whose output goes
    through a ReLU in its forward (which must then skip the ReLU for an InstanceNormReLU, as
    fastnst.models.transformer.TransformerNet does).

    Then, with ``trace=True``, it traces the forward with ``torch.fx`` to find the ReLUs a
    forward applies itself (``self.relu(self.in1(x))``, ``F.relu``, ``torch.relu``,
    ``x.relu()``, in-place or not) to a norm whose output feeds nothing else. If there are any,
    it returns a ``torch.fx.GraphModule`` with those pairs fused: the model's modules (shared,
    the fused norms sharing their parameters), the same state_dict keys in the same order, but
    only ``forward`` of the model's methods; ``model`` itself stays accelerated as above.
    Otherwise (nothing more to fuse, ``trace=False``, or a forward that fx cannot trace, e.g.
    with data-dependent control flow) it returns ``model``.

    What was changed and what was left (with the reason), and the method ("fx" or "modules"),
    is logged on the "fastnst" logger, printed with ``verbose=True``, and kept in
    ``accelerate.last_report`` (and ``accelerate.last_method``).
    """
    changed: dict[str, str] = {}
    left: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        names = list(parent._modules.keys())
        for i, name in enumerate(names):
            child = parent._modules[name]
            if child is None:
                continue
            path = f"{prefix}{name}"
            if isinstance(child, nn.InstanceNorm2d):
                why = _servable(child)
                if why is not None:
                    left.append(f"{path}: {why}")
                    continue
                nxt = parent._modules.get(names[i + 1]) if i + 1 < len(names) else None
                if name in getattr(parent, "fastnst_relu_after", ()):
                    # The parent declares that a ReLU follows (and skips it once fused).
                    parent._modules[name] = _convert(child, InstanceNormReLU)
                    changed[path] = f"{path} + its ReLU: InstanceNorm2d + ReLU -> InstanceNormReLU"
                elif isinstance(parent, nn.Sequential) and type(nxt) is nn.ReLU:
                    parent._modules[name] = _convert(child, InstanceNormReLU)
                    parent._modules[names[i + 1]] = nn.Identity()
                    changed[path] = f"{path} + {prefix}{names[i + 1]}: InstanceNorm2d + ReLU -> InstanceNormReLU"
                else:
                    parent._modules[name] = _convert(child, InstanceNorm2d)
                    changed[path] = f"{path}: InstanceNorm2d -> fastnst InstanceNorm2d"
            elif isinstance(child, (nn.InstanceNorm1d, nn.InstanceNorm3d)):
                left.append(f"{path}: {type(child).__name__} (only 2-D instance norm is served)")
            else:
                visit(child, path + ".")

    if isinstance(model, nn.InstanceNorm2d):
        raise ValueError("accelerate(model) rebuilds the modules inside a model; wrap a lone "
                         "InstanceNorm2d in a container, or construct fastnst.nn.InstanceNorm2d")
    visit(model, "")
    result, method = model, "modules (trace=False)"
    if trace:
        gm, method = _fx_accelerate(model, changed)
        result = model if gm is None else gm
    report = [f"replaced {len(changed)}, left {len(left)}", f"  method: {method}"] + \
             [f"  replaced {c}" for c in changed.values()] + [f"  left {x}" for x in left]
    accelerate.last_report = report
    accelerate.last_method = method.split(" ", 1)[0]
    for line in report:
        log.info(line)
    if verbose:
        print("\n".join(report))
    return result


accelerate.last_report = []
accelerate.last_method = None
