"""The generic op test suite: every public op's spec (fastnst/ops/registry.py), on every backend
present, for every sample input the spec gives, in the manner of torchvision's op testers:

* float64 parity with the op's reference over layouts (contiguous, channels_last, strided,
  a stride-0 expanded batch), and float32/float16/bfloat16 parity within the dtype's error;
* gradcheck in float64 (differentiable ops);
* ``torch.library.opcheck`` of every registered kernel op the call reaches, forward and
  backward, found by recording the calls (so a new op needs no opcheck code of its own);
* ``torch.compile(fullgraph=True)`` against eager, forward and backward.

Op-specific properties (symmetry of Gram, ties of style swap, edge semantics, errors) stay in
tests/test_<op>.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastnst  # noqa: E402,F401  (importing fastnst registers the specs)
from fastnst.ops import registry

from conftest import kernel_backends

SPECS = [registry.SPECS[n] for n in registry.SPECS]

LAYOUTS = ["contiguous", "channels_last", "strided", "expanded"]
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def _backends(spec):
    return kernel_backends(spec.name)


def _cases(with_reference=False):
    out = []
    for spec in SPECS:
        for b in _backends(spec) + (["reference"] if with_reference else []):
            out.append(pytest.param(spec, b, id=f"{spec.name}-{b}"))
    return out


def _relayout(t, layout):
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    if layout == "channels_last":
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 3:
            return t.transpose(1, 2).contiguous().transpose(1, 2)
        return t
    if layout == "strided" and t.dim() >= 3:
        wide = torch.cat([t, t], dim=-1)
        return wide[..., ::2].copy_(t)
    if layout == "expanded" and t.dim() >= 3 and t.shape[0] > 1:
        return t[:1].expand(t.shape)  # every sample the same, batch stride 0
    return t


def _args(sample, layout, dtype=None, requires_grad=False):
    out = []
    for i, a in enumerate(sample.args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            a = a.to(dtype or a.dtype)
            a = _relayout(a, layout) if a.dim() >= 3 else a
            if requires_grad and i in sample.grad:
                a = a.detach().requires_grad_(True)
        out.append(a)
    return out


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def _rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() if b.numel() else 0.0


def _skip_small(backend, sample):
    if backend == "triton" and any(isinstance(a, torch.Tensor) and a.numel() > 4000 for a in sample.args):
        pytest.skip("interpreter: small samples only")


# ---- parity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec, backend", _cases())
def test_float64_parity_with_reference(spec, backend, layout):
    for sample in spec.samples(torch.device("cpu"), torch.float64):
        _skip_small(backend, sample)
        args = _args(sample, layout)
        got = spec.function(*args, **sample.kwargs, backend=backend)
        want = spec.reference_call(*args, **sample.kwargs)
        for g, w in zip(_flat(got), _flat(want)):
            assert g.shape == w.shape and g.dtype == w.dtype, (sample.note, g.shape, w.shape)
            if g.dtype == torch.int64:
                assert torch.equal(g, w), sample.note
            else:
                assert _rel_err(g, w) < TOL[torch.float64], (sample.note, _rel_err(g, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec, backend", _cases())
def test_low_precision_parity(spec, backend, dtype):
    for sample in spec.samples(torch.device("cpu"), torch.float64):
        _skip_small(backend, sample)
        args = _args(sample, "contiguous", dtype)
        got = spec.function(*args, **sample.kwargs, backend=backend)
        # The reference in float64 on the same (rounded) inputs.
        args64 = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        want = spec.reference_call(*args64, **sample.kwargs)
        if spec.name == "style_swap":  # near-ties may pick another patch: see test_style_swap
            continue
        for g, w in zip(_flat(got), _flat(want)):
            assert g.dtype == (dtype if w.is_floating_point() else w.dtype)
            assert torch.isfinite(g.double()).all(), sample.note
            assert _rel_err(g, w) < TOL[dtype], (sample.note, _rel_err(g, w))


# ---- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, backend", [c for c in _cases(with_reference=True)
                                           if c.values[0].differentiable and c.values[1] != "triton"])
def test_gradcheck_float64(spec, backend):
    for sample in spec.samples(torch.device("cpu"), torch.float64):
        args = _args(sample, "contiguous", requires_grad=True)
        inputs = tuple(args[i] for i in sample.grad)

        def f(*ins, args=args, sample=sample):
            full = list(args)
            for i, t in zip(sample.grad, ins):
                full[i] = t
            return spec.function(*full, **sample.kwargs, backend=backend)

        assert torch.autograd.gradcheck(f, inputs), sample.note


@pytest.mark.parametrize("spec, backend", [c for c in _cases() if c.values[0].differentiable])
def test_backward_parity_channels_last(spec, backend):
    # The gradient of a channels_last input, with a channels_last upstream gradient, against
    # float64 autograd of the reference.
    for sample in spec.samples(torch.device("cpu"), torch.float64):
        _skip_small(backend, sample)
        args = _args(sample, "channels_last", requires_grad=True)
        ref_args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                    for a in args]
        out = _flat(spec.function(*args, **sample.kwargs, backend=backend))
        ref = _flat(spec.reference_call(*ref_args, **sample.kwargs))
        grads = [_relayout(torch.randn_like(o), "channels_last") for o in out]
        ins = [args[i] for i in sample.grad]
        got = torch.autograd.grad(out, ins, grads)
        want = torch.autograd.grad(ref, [ref_args[i] for i in sample.grad], grads)
        for g, w in zip(got, want):
            assert _rel_err(g, w) < TOL[torch.float64], (sample.note, _rel_err(g, w))


# ---- opcheck of the kernel ops a call reaches ------------------------------------------------
class _Recorder(TorchDispatchMode):
    """Records every fastnst kernel op call (forward and backward) with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fastnst":
            clone = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
            self.calls.append((func, tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


@pytest.mark.parametrize("spec, backend", _cases())
def test_opcheck_of_every_kernel_op_reached(spec, backend):
    samples = spec.samples(torch.device("cpu"), torch.float32)
    if backend == "triton":
        samples = samples[:1]
    seen = set()
    for sample in samples:
        for layout in ("contiguous", "channels_last"):
            args = _args(sample, layout, requires_grad=spec.differentiable)
            rec = _Recorder()
            with rec:
                out = _flat(spec.function(*args, **sample.kwargs, backend=backend))
                if spec.differentiable:
                    torch.autograd.backward([o for o in out if o.requires_grad],
                                            [torch.randn_like(o) for o in out if o.requires_grad])
            assert rec.calls, f"{spec.name} on {backend} reached no fastnst kernel op"
            for func, a, k in rec.calls:
                # The backward op's own autograd refuses double backward: check schema, fake
                # and dispatch there, not its gradient.
                utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
                if func.name().split("::")[1].split(".")[0].replace("_triton", "") not in spec.backward:
                    utils = utils + ("test_autograd_registration",)
                torch.library.opcheck(func, a, k, test_utils=utils)
                seen.add(func.name())
    names = {n.split("::")[1].split(".")[0] for n in seen}
    want = {spec.triton if backend == "triton" else spec.kernel}
    assert want <= names, (names, want)


# ---- torch.compile ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, backend", _cases())
def test_torch_compile_fullgraph(spec, backend):
    torch._dynamo.reset()
    sample = spec.samples(torch.device("cpu"), torch.float32)[0]
    args = _args(sample, "contiguous", requires_grad=spec.differentiable)

    def f(*a):
        return spec.function(*a, **sample.kwargs, backend=backend)

    got = _flat(torch.compile(f, fullgraph=True, backend="aot_eager")(*args))
    eager_args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                  for a in args]
    want = _flat(f(*eager_args))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    if spec.differentiable:
        ins = [args[i] for i in sample.grad]
        gs = [torch.ones_like(o) for o in got]
        dg = torch.autograd.grad(got, ins, gs)
        dw = torch.autograd.grad(want, [eager_args[i] for i in sample.grad], gs)
        for a, b in zip(dg, dw):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_every_public_op_has_a_spec():
    public = {"adain", "gram_matrix", "instance_norm", "mean_std", "style_swap", "style_swap_reconstruct"}
    assert public <= set(registry.SPECS)
    for name in public:
        spec = registry.get(name)
        assert spec.function is getattr(fastnst, name)
        assert spec.samples(torch.device("cpu"), torch.float32), name
    with pytest.raises(ValueError, match="unknown fastnst op 'gram'; the ops are adain, gram_matrix"):
        registry.get("gram")
