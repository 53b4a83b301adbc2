"""Expanded upstream gradients (issue 13, item 7).

A loss written as ``y.sum()`` or as a weighted sum of per-channel sums hands the backward a
gradient with stride 0 along the spatial dims: strides (0, 0, 0, 0) for ``y.sum()`` and
(C, 1, 0, 0) for ``(y.sum((2, 3)) * w).sum()`` (w [B, C]) of y [B, C, H, W]; mean_std's and the Gram's
gradients are expanded scalars too (strides (0, 0), (0, 1), (1, 0); (0, 0, 0)). Every backward
reads such a gradient in place, one value per row (b, c), instead of materialising it. These
tests check, on every backend present (the Triton kernels under the interpreter, on small
shapes), in both layouts, with and without the fused ReLU, in float64/float32/bfloat16/float16:

* that the losses really hand over expanded gradients (a hook sees their strides);
* the gradients against the same backward run on the gradient made dense (bit for bit where
  the kernels compute on the same values: the channels-innermost CPU loops, a gradient of ones,
  mean_std, Triton), and against the float64 reference backend;
* that the CPU backwards make no copy the size of x (the profiler sees ATen copies made inside
  the ops: checked on a gradient that must be copied).
"""

from __future__ import annotations

import pytest
import torch

import fastnst

from conftest import kernel_backends

BACKENDS = kernel_backends("instance_norm")
HAS_CPU = "cpu" in BACKENDS

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# dx relative to the gradient's scale (max |g| |w| rstd): fp32 maths, one rounding to the dtype
# of a result up to ~6 times that scale.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2.0 ** -5, torch.float16: 2.0 ** -7}
# Weight gradients (fp32 sums; fp64 for float64 input) relative to the sums of their |terms|.
WTOL = {torch.float64: 1e-12, torch.float32: 2.0 ** -12, torch.bfloat16: 2.0 ** -12, torch.float16: 2.0 ** -12}

SHAPES = [
    (2, 5, 7, 9),      # odd L = 63: masked row tails
    (1, 1, 5, 5),      # C = 1: the row kernels even for channels_last
    (3, 4, 1, 2),      # tiny L = 2
    (2, 70, 6, 5),     # C = 70: the 64-channel loop and a 6-channel tail
    (3, 24, 17, 31),   # L = 527: two 512-blocks per row; channels_last: 64-row blocks, thread
                       # chunks that start inside a sample
    (2, 3, 50),        # rank 3
]
SMALL = [(2, 5, 7, 9), (1, 1, 5, 5), (3, 4, 1, 2), (2, 3, 50)]  # the Triton interpreter is slow
LOSSES = ["sum", "channel_sums", "mean"]  # y.mean()'s gradient is dense (torch 2.13): a control


def _cases():
    """(backend, dtype, shape, layout, act, loss): the full grid on the compiled kernels, a small
    one (float32 throughout, a few others) under the interpreter."""
    out = []
    for backend in BACKENDS:
        for dtype in DTYPES:
            for shape in SHAPES:
                for layout in ("contiguous", "channels_last"):
                    for act in (None, "relu"):
                        for loss in LOSSES:
                            if loss == "mean" and dtype in (torch.bfloat16, torch.float16):
                                continue
                            if backend == "triton" and (shape not in SMALL or loss == "mean" or (
                                    dtype != torch.float32 and (shape != SMALL[0] or layout != "channels_last"))):
                                continue
                            out.append(pytest.param(backend, dtype, shape, layout, act, loss,
                                                    id=f"{backend}-{str(dtype)[6:]}-{shape}-{layout}-{act}-{loss}"))
    return out


def _layout(x, layout):
    if layout == "contiguous":
        return x
    return (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4
            else x.transpose(1, 2).contiguous().transpose(1, 2))


def _loss(name, y, wc):
    if name == "sum":
        return y.sum()
    if name == "channel_sums":  # a sum of per-(b, c) sums, each with its own weight
        return (y.sum(tuple(range(2, y.dim()))) * wc.to(y.dtype)).sum()
    return y.mean()


def _check_expanded(name, g, c):
    """The strides the loss hands over (those of size-1 dims are arbitrary)."""
    st = [s for s, n in zip(g.stride(), g.shape) if n > 1]
    if name == "sum":
        assert all(s == 0 for s in st), g.stride()
    elif name == "channel_sums":
        assert all(s == 0 for s, n in zip(g.stride()[2:], g.shape[2:]) if n > 1), g.stride()
        assert g.shape[1] == 1 or g.stride(1) == 1, g.stride()


def _grads(fn, inputs, loss, wc):
    """(upstream gradient, gradients of the loss, gradients with that upstream gradient dense)."""
    y = fn(*inputs)
    seen = []
    y.register_hook(lambda g: seen.append(g))
    got = torch.autograd.grad(_loss(loss, y, wc), inputs, retain_graph=True)
    (g,) = seen
    dense = torch.empty_like(y).copy_(g)  # y's layout
    assert dense.stride() != g.stride() or loss == "mean"
    want = torch.autograd.grad(y, inputs, dense)
    return g, got, want


def _rel(a, b, scale):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / max(b.abs().max().item(), scale)).item()


def _flat(t):
    return t.flatten(2) if t.dim() == 4 else t


def _rstd(x64, eps=1e-5):
    f = _flat(x64)
    return 1 / (f.var(2, unbiased=False) + eps).sqrt()


def _inputs(shape, dtype, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = _layout((torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype), layout)
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    wc = torch.randn(shape[0], c, generator=gen, dtype=torch.float64)  # a weight per (b, c)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    return x, w.to(wdt), b.to(wdt), wc


# ---- instance_norm -------------------------------------------------------------------------
@pytest.mark.parametrize("backend,dtype,shape,layout,act,loss", _cases())
def test_instance_norm(backend, dtype, shape, layout, act, loss):
    x, w, b, wc = _inputs(shape, dtype, layout)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    g, got, dense = _grads(lambda x, w, b: fastnst.instance_norm(x, w, b, activation=act, backend=backend),
                           leaves, loss, wc)
    _check_expanded(loss, g, shape[1])
    assert got[0].dtype == dtype and got[0].stride() == dense[0].stride()

    # The float64 reference on the same values; its ReLU takes the kernel's mask (a value the
    # 16-bit rounding puts on the other side of 0 has a moot derivative).
    y = fastnst.instance_norm(x, w, b, activation=act, backend=backend).detach()
    mask = (y > 0).double() if act == "relu" else 1.0
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    # The reference is handed the upstream gradient's values (the kernels' loss, in x's dtype,
    # rounds y.mean()'s 1 / N and the weights of channel_sums).
    ref = torch.autograd.grad(fastnst.instance_norm(x64, w64, b64, backend="reference") * mask, (x64, w64, b64),
                              g.double())

    gmax = g.double().abs().max().item()
    scale = gmax * w.double().abs().max().item() * _rstd(x.double()).max().item()
    # weight gradients: sums over B and L of g' xhat and g'
    xhat = (_flat(x.double()) - _flat(x.double()).mean(2, keepdim=True)) * _rstd(x.double()).unsqueeze(2)
    w_scale = gmax * xhat.abs().sum((0, 2)).max().item()
    b_scale = gmax * x[0, 0].numel() * shape[0]
    exact = backend != "cpu" or loss != "channel_sums" or (layout == "channels_last" and shape[1] > 1)
    for name, a, d, r, s, tol in (("dx", got[0], dense[0], ref[0], scale, TOL[dtype]),
                                  ("dw", got[1], dense[1], ref[1], w_scale, WTOL[dtype]),
                                  ("db", got[2], dense[2], ref[2], b_scale, WTOL[dtype])):
        if exact:
            assert torch.equal(a, d), f"{name}: not the dense gradient's bits"
        else:
            assert _rel(a, d, s) < tol, f"{name} vs dense: {_rel(a, d, s):.3g}"
        assert _rel(a, r, s) < tol, f"{name} vs float64 reference: {_rel(a, r, s):.3g}"


@pytest.mark.skipif(not HAS_CPU, reason="needs fastnst's compiled CPU kernels")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_direct_call_with_another_dtype(dtype, layout):
    # The op itself may be handed an expanded gradient of another dtype: its values are rounded
    # to x's dtype, as the conversion of the materialised gradient rounds them.
    x, w, _, _ = _inputs((2, 24, 9, 11), dtype, layout)
    x3 = x.flatten(2)
    op = torch.ops.fastnst
    y, mean, rstd = op.instance_norm(x3, w, None, 1e-5, False, 0.0, 1)
    other = torch.float16 if dtype == torch.float32 else torch.float32
    for g in (torch.full((), 0.3, dtype=other).expand(x3.shape),
              (torch.randn(2, 24, 1, dtype=torch.float64) * 3).to(other).expand(x3.shape),
              torch.randn(24, 1, dtype=torch.float64).to(other).expand(x3.shape)):  # batch stride 0 too
        got = op.instance_norm_backward(g, x3, y, w, mean, rstd, False, 0.0, 1, True)
        want = op.instance_norm_backward(g.contiguous().to(dtype), x3, y, w, mean, rstd, False, 0.0, 1, True)
        scale = g.double().abs().max().item() * w.abs().max().item() * rstd.double().max().item()
        for a, d, s in zip(got, want, (scale, 1e3, 1e3)):
            assert a.dtype == d.dtype and a.stride() == d.stride()
            if layout == "channels_last":
                assert torch.equal(a, d)
            else:  # the row kernels fold the value in: fp32 rounding, then dx's own
                assert _rel(a, d, s) < (1e-6 if dtype != torch.bfloat16 else 2.0 ** -7)


# ---- adain ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("loss", ["sum", "channel_sums"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_adain(backend, dtype, layout, loss):
    shape = (2, 6, 5, 7) if backend == "triton" else (2, 40, 13, 11)
    x, _, _, wc = _inputs(shape, dtype, layout)
    style = _layout(torch.randn(1, shape[1], 6, 4, dtype=dtype) * 2 + 1, layout)
    leaves = [t.detach().requires_grad_() for t in (x, style)]
    g, got, dense = _grads(lambda c, s: fastnst.adain(c, s, 0.7, backend=backend), leaves, loss, wc)
    _check_expanded(loss, g, shape[1])
    x64, s64 = (t.detach().double().requires_grad_() for t in (x, style))
    ref = torch.autograd.grad(fastnst.adain(x64, s64, 0.7, backend="reference"), (x64, s64), g.double())
    # d content = (1 - alpha) g + alpha sigma_s rstd (g - ...): the scale of its terms; the
    # style's gradient relative to its largest value.
    sigma_s = _flat(style.double()).std(2).max().item()
    scale = g.double().abs().max().item() * (1 + sigma_s * _rstd(x.double()).max().item())
    exact = backend != "cpu" or loss == "sum" or layout == "channels_last"
    for a, d, r, s in zip(got, dense, ref, (scale, 0.0)):
        if exact:
            assert torch.equal(a, d)
        else:
            assert _rel(a, d, s) < TOL[dtype]
        assert _rel(a, r, s) < TOL[dtype], _rel(a, r, s)


# ---- mean_std ------------------------------------------------------------------------------
MS_LOSSES = {  # gradients of the [B, C] mean and std: strides (0, 0), (0, 1), (1, 0)
    "sum": lambda m, s, wb, wc: m.sum() + 2 * s.sum(),
    "batch_sums": lambda m, s, wb, wc: (m.sum(0) * wc).sum() + (s.sum(0) * wc.flip(0)).sum(),
    "channel_sums": lambda m, s, wb, wc: (m.sum(1) * wb).sum() - (s.sum(1) * wb).sum(),
    "mean_only": lambda m, s, wb, wc: m.sum(),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("loss", list(MS_LOSSES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mean_std(backend, dtype, layout, loss):
    if backend == "triton" and dtype not in (torch.float32, torch.bfloat16):
        pytest.skip("interpreter: float32 and bfloat16 are enough")
    shape = (3, 5, 6, 7) if backend == "triton" else (3, 70, 12, 11)
    x = _layout((torch.randn(shape) * 2 + 1).to(dtype), layout)
    wb = torch.randn(shape[0], 1, 1).to(dtype)
    wc = torch.randn(shape[1], 1, 1).to(dtype)
    xg = x.detach().requires_grad_()
    m, s = fastnst.mean_std(xg, backend=backend)
    seen = {}
    m.register_hook(lambda g: seen.__setitem__("m", g))
    s.register_hook(lambda g: seen.__setitem__("s", g))
    (got,) = torch.autograd.grad(MS_LOSSES[loss](m, s, wb, wc), xg, retain_graph=True)
    strides = {"sum": (0, 0), "batch_sums": (0, 1), "channel_sums": (1, 0), "mean_only": (0, 0)}[loss]
    assert seen["m"].flatten(1).stride() == strides
    outs = (m, s) if "s" in seen else (m,)
    (dense,) = torch.autograd.grad(outs, xg, [seen[k].contiguous() for k in ("m", "s")[:len(outs)]])
    assert torch.equal(got, dense)
    x64 = x.detach().double().requires_grad_()
    m64, s64 = fastnst.mean_std(x64, backend="reference")
    (ref,) = torch.autograd.grad(MS_LOSSES[loss](m64, s64, wb.double(), wc.double()), x64)
    scale = max(seen[k].double().abs().max().item() for k in seen) / x[0, 0].numel()
    assert _rel(got, ref, scale) < TOL[dtype]


# ---- gram (csrc/cpu/gram.cpp, kernels/gram.py) ---------------------------------------------
@pytest.mark.parametrize("backend", kernel_backends("gram_matrix"))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("loss", ["sum", "channel_sums"])
def test_gram(backend, layout, loss):
    shape = (2, 6, 5, 7) if backend == "triton" else (2, 40, 17, 13)
    x = _layout(torch.randn(shape), layout).requires_grad_()
    wc = torch.randn(shape[0], shape[1])
    g, got, dense = _grads(lambda x: fastnst.gram_matrix(x, backend=backend), [x], loss, wc)
    assert all(s == 0 for s in g.stride()[(0 if loss == "sum" else 2):])
    x64 = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(_loss(loss, fastnst.gram_matrix(x64, backend="reference"), wc.double()), x64)
    torch.testing.assert_close(got[0], dense[0], rtol=1e-6, atol=1e-6 * dense[0].abs().max().item())
    torch.testing.assert_close(got[0].double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


# ---- no materialisation --------------------------------------------------------------------
def _big_copies(prof, numel):
    """ATen copies (and conversions) of at least numel elements in the profile."""
    names = ("aten::copy_", "aten::_to_copy", "aten::clone")  # (aten::to, contiguous: no-ops or these)
    out = []
    for e in prof.events():
        if e.name in names:
            sizes = [s for s in e.input_shapes if isinstance(s, list) and s]
            if any(torch.Size(s).numel() >= numel for s in sizes):
                out.append((e.name, sizes))
    return out


@pytest.mark.skipif(not HAS_CPU, reason="needs fastnst's compiled CPU kernels")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_backward_does_not_materialise_the_gradient(dtype, layout):
    x, w, b, wc = _inputs((2, 16, 20, 18), dtype, layout)
    x = x.requires_grad_()
    n = x.numel()
    # The detector sees copies made inside the op: a dense gradient in the other layout is
    # converted to x's (as before; that path is unchanged).
    y = fastnst.instance_norm(x, w, b, activation="relu", backend="cpu")
    other = _layout(torch.randn(x.shape, dtype=dtype), "channels_last" if layout == "contiguous" else "contiguous")
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.autograd.grad(y, x, other)
    assert _big_copies(prof, n), "the profiler should see the layout copy of a dense gradient"

    for act in (None, "relu"):
        for loss in ("sum", "channel_sums"):
            y = fastnst.instance_norm(x, w, b, activation=act, backend="cpu")
            with torch.profiler.profile(record_shapes=True) as prof:
                torch.autograd.grad(_loss(loss, y, wc), x)
            assert _big_copies(prof, n) == [], (act, loss)
            t = fastnst.adain(x, torch.randn(1, 16, 5, 5, dtype=dtype), 0.5, backend="cpu")
            with torch.profiler.profile(record_shapes=True) as prof:
                torch.autograd.grad(_loss(loss, t, wc), x)
            assert _big_copies(prof, n) == [], ("adain", loss)
    m, s = fastnst.mean_std(x, backend="cpu")
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.autograd.grad(m.sum() + s.sum(), x)
    assert _big_copies(prof, n) == []
