"""Autocast rules of the fastnst ops (fastnst/ops/autocast.py), on the CPU kernels and the Triton
twins (interpreter):

* every registered op has a rule, and an AutocastCPU / AutocastCUDA kernel exactly when the
  rule is not "none" (the backward ops fall through);
* each op called directly under ``torch.autocast("cpu", bf16 | fp16)`` with mixed input dtypes
  returns bit for bit the op outside autocast on the inputs the policy casts (written out here,
  independently of the rule table), in the dtypes the policy names; float64 is never cast;
* the public functions likewise, with gradients reaching float32 leaves in their own dtype;
* torch.compile(fullgraph=True) under autocast gives the eager results;
* outside autocast nothing changed (mixed dtypes are still refused where they were);
* a Gatys-style loss (bf16 features, fp32 target Gram) under autocast.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import fastnst
from fastnst.losses import GramLoss
from fastnst.ops import autocast as ac
from fastnst.ops.norm import instance_norm_pad

from conftest import kernel_backends

HAS_CPU = "cpu" in kernel_backends("gram_matrix")
HAS_TRITON = "triton" in kernel_backends("gram_matrix")
DTYPES = [torch.bfloat16, torch.float16]
OTHER = {torch.bfloat16: torch.float16, torch.float16: torch.bfloat16}  # the other 16-bit dtype
# Op name suffixes: the C++ ops (their CPU kernels) and the Triton twins.
VARIANTS = [pytest.param("", id="cpp", marks=pytest.mark.skipif(not HAS_CPU, reason="needs fastnst._C")),
            pytest.param("_triton", id="triton",
                         marks=pytest.mark.skipif(not HAS_TRITON, reason="needs triton (interpreter)"))]
BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(not HAS_CPU, reason="needs fastnst._C")),
            pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="needs triton (interpreter)"))]
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="needs fastnst._C")


def amp(dtype):
    return torch.autocast("cpu", dtype=dtype)


def _flat(out):
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def _same(got, want):
    """Same dtypes and the same bits (NaN where NaN)."""
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        assert torch.equal(g, w) or (g.is_floating_point() and torch.equal(g.isnan(), w.isnan())
                                     and torch.equal(g.nan_to_num(), w.nan_to_num())), (g - w).abs().max()


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
            for t in ts]


def _check_with_grads(fn, manual, inputs, dtype, grad_at=None):
    """fn(*inputs) under autocast against manual(*inputs) outside it: outputs bit for bit, then
    the gradients (same upstream gradient) of the floating leaves, each in its leaf's dtype."""
    a, b = _leaves(*inputs), _leaves(*inputs)
    with amp(dtype):
        got = fn(*a)
    want = manual(*b)
    _same(got, want)
    outs = [(g, w) for g, w in zip(_flat(got), _flat(want)) if g.requires_grad]
    ups = [torch.randn(g.shape).to(g.dtype) for g, _ in outs]
    idx = [i for i, t in enumerate(a) if isinstance(t, torch.Tensor) and t.requires_grad]
    idx = idx if grad_at is None else grad_at
    ga = torch.autograd.grad([g for g, _ in outs], [a[i] for i in idx], ups, allow_unused=True)
    gb = torch.autograd.grad([w for _, w in outs], [b[i] for i in idx], ups, allow_unused=True)
    for i, x, y in zip(idx, ga, gb):
        assert x is not None and x.dtype == a[i].dtype, (i, None if x is None else x.dtype, a[i].dtype)
        _same(x, y)
    return got


# ---- the rule table and its registration ---------------------------------------------------------
def _registered_ops():
    return sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastnst::"))


def test_every_registered_op_has_a_rule_and_its_kernels():
    ops = _registered_ops()
    assert set(ops) <= set(ac.POLICY), set(ops) - set(ac.POLICY)
    if HAS_CPU:
        assert set(ac.POLICY) == set(ops)
    for name in ops:
        r = ac.POLICY[name]
        assert r.kind in ("lower", "activation", "keep", "none")
        for key in ("AutocastCPU", "AutocastCUDA"):
            has = torch._C._dispatch_has_kernel_for_dispatch_key(f"fastnst::{name}", key)
            assert has == (r.kind != "none"), (name, key)


def test_the_policy():
    # Written out independently of the table, as README documents it.
    want = {"gram": ("lower", (0,)), "style_swap_match": ("lower", (0, 1)),
            "instance_norm": ("activation", (0,)), "instance_norm_pad": ("activation", (0, 5)),
            "mean_std": ("keep", ()), "style_swap_reconstruct": ("keep", ()),
            "conv3x3_winograd": ("keep", ()),
            "gram_backward": ("none", ()), "mean_std_backward": ("none", ()),
            "instance_norm_backward": ("none", ())}
    for name, (kind, cast) in want.items():
        for n in (name, name + "_triton"):
            if n in ac.POLICY:
                assert (ac.POLICY[n].kind, ac.POLICY[n].cast) == (kind, cast), n
    assert ac.rule("fastnst::gram_triton") is ac.POLICY["gram"]


# ---- the registered ops, called directly -------------------------------------------------------
def _op(name, suffix):
    return getattr(torch.ops.fastnst, name + suffix)


def _direct(name, suffix, args, cast, dtype):
    """The op under autocast == the op outside autocast on args[i].to(dtype) for i in cast."""
    op = _op(name, suffix)
    with amp(dtype):
        got = op(*args)
    manual = [a.to(dtype) if i in cast else a for i, a in enumerate(args)]
    _same(got, op(*manual))
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", VARIANTS)
def test_gram_op_runs_in_the_autocast_dtype(suffix, dtype):
    for x in (torch.randn(2, 5, 42), torch.randn(2, 5, 42).to(OTHER[dtype]), torch.randn(1, 3, 8).to(dtype)):
        g = _direct("gram", suffix, (x, 0.25), (0,), dtype)
        assert g.dtype == dtype
    x = torch.randn(2, 3, 10, dtype=torch.float64)  # float64 is never cast
    with amp(dtype):
        g = _op("gram", suffix)(x, 0.5)
    _same(g, _op("gram", suffix)(x, 0.5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", VARIANTS)
def test_style_swap_ops(suffix, dtype):
    content, style = torch.randn(1, 3, 6, 7).to(OTHER[dtype]), torch.randn(1, 3, 5, 5)  # mixed
    idx = _direct("style_swap_match", suffix, (content, style, 3, 1, 1e-8), (0, 1), dtype)
    assert idx.dtype == torch.int64
    out = _direct("style_swap_reconstruct", suffix, (style, idx, 3, 1, 6, 7), (), dtype)
    assert out.dtype == torch.float32  # the style's dtype
    with amp(dtype):  # float64 stays float64
        i64 = _op("style_swap_match", suffix)(content.double(), style.double(), 3, 1, 1e-8)
    _same(i64, _op("style_swap_match", suffix)(content.double(), style.double(), 3, 1, 1e-8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", VARIANTS)
def test_mean_std_op_keeps_the_input_dtype(suffix, dtype):
    for x in (torch.randn(2, 4, 30), torch.randn(2, 4, 30).to(dtype), torch.randn(2, 4, 30).double()):
        m, s = _direct("mean_std", suffix, (x, 1e-5, True), (), dtype)
        assert m.dtype == s.dtype == x.dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", VARIANTS)
def test_instance_norm_op_casts_the_activation_only(suffix, dtype):
    b, c = 2, 5
    cases = [(torch.randn(b, c, 40), torch.randn(c), torch.randn(c), 0),                       # affine fp32
             (torch.randn(b, c, 40).to(OTHER[dtype]), torch.randn(b, c), torch.randn(b, c).to(dtype), 1),  # CIN
             (torch.randn(b, c, 40).to(dtype), None, torch.randn(c).double(), 1)]
    for x, w, bias, act in cases:
        y, mean, rstd = _direct("instance_norm", suffix, (x, w, bias, 1e-5, False, 0.0, act), (0,), dtype)
        assert y.dtype == dtype and mean.dtype == rstd.dtype == torch.float32
    x = torch.randn(b, c, 40, dtype=torch.float64)
    y, mean, _ = _direct("instance_norm", suffix, (x, torch.randn(c, dtype=torch.float64), None, 1e-5, True, 0.3, 0),
                         (), dtype)
    assert y.dtype == mean.dtype == torch.float64


@needs_cpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_instance_norm_pad_op_casts_x_and_residual(dtype):
    x, res = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6).to(OTHER[dtype])
    w, b = torch.randn(4), torch.randn(4)
    out = _direct("instance_norm_pad", "", (x, w, b, 1e-5, 1, res, 2, 1), (0, 5), dtype)
    assert out.dtype == dtype and out.shape == (2, 4, 12, 14)
    out = _direct("instance_norm_pad", "", (x, None, b, 1e-5, 0, None, 1, 0), (0,), dtype)
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", VARIANTS)
def test_backward_ops_fall_through(suffix, dtype):
    # No rule: under autocast they run on the dtypes they are given, float32 included.
    for t in (torch.float32, dtype):
        x, g = torch.randn(2, 4, 30).to(t), torch.randn(2, 4, 4).to(t)
        _same(_direct("gram_backward", suffix, (g, x, 0.5), (), dtype), _op("gram_backward", suffix)(g, x, 0.5))
        m, s = _op("mean_std", suffix)(x, 1e-5, True)
        out = _direct("mean_std_backward", suffix, (torch.randn_like(m), torch.randn_like(s), x, m, s, True), (),
                      dtype)
        assert out.dtype == t
        w = torch.randn(4)
        y, mean, rstd = _op("instance_norm", suffix)(x, w, None, 1e-5, False, 0.0, 1)
        dx, dw, db = _direct("instance_norm_backward", suffix,
                             (torch.randn_like(y), x, y, w, mean, rstd, False, 0.0, 1, True), (), dtype)
        assert dx.dtype == t and dw.dtype == torch.float32


def test_cuda_autocast_leaves_cpu_tensors_alone():
    # The AutocastCUDA rules never see CPU tensors (and a CPU-only torch disables cuda autocast):
    # a smoke test that registering them changed nothing for CPU code inside such a region.
    x = torch.randn(2, 3, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast("cuda", dtype=torch.float16):
            g = fastnst.gram_matrix(x)
            y = fastnst.instance_norm(x)
    assert g.dtype == y.dtype == torch.float32


# ---- the public functions ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_matrix_and_gram_loss(backend, dtype):
    x = torch.randn(2, 6, 5, 7)
    g = _check_with_grads(lambda x: fastnst.gram_matrix(x, "hw", backend),
                          lambda x: fastnst.gram_matrix(x.to(dtype), "hw", backend), (x,), dtype)
    assert g.dtype == dtype
    target = torch.randn(1, 6, 6)  # fp32: compared unrounded, in fp32 (mse_loss is an fp32 op)
    for xx in (x, x.to(dtype)):
        loss = _check_with_grads(lambda x, t: fastnst.gram_loss(x, t, backend=backend),
                                 lambda x, t: F.mse_loss(fastnst.gram_matrix(x.to(dtype), backend=backend).float(),
                                                         t.expand(2, 6, 6)),
                                 (xx, target), dtype)
        assert loss.dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_std(backend, dtype):
    for x in (torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7).to(dtype)):
        m, s = _check_with_grads(lambda x: fastnst.mean_std(x, backend=backend),
                                 lambda x: fastnst.mean_std(x, backend=backend), (x,), dtype)
        assert m.dtype == s.dtype == x.dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_norm(backend, dtype):
    b, c = 2, 6
    for x, w, bias in ((torch.randn(b, c, 5, 7), torch.randn(c), torch.randn(c)),  # fp32 everything
                       (torch.randn(b, c, 5, 7).to(dtype), torch.randn(b, c), torch.randn(b, c)),  # CIN, bf16 x
                       (torch.randn(b, c, 5, 7).to(OTHER[dtype]), torch.randn(c), None)):
        x = x.contiguous(memory_format=torch.channels_last)
        y = _check_with_grads(lambda x, w, bias: fastnst.instance_norm(x, w, bias, activation="relu", backend=backend),
                              lambda x, w, bias: fastnst.instance_norm(x.to(dtype), w, bias, activation="relu",
                                                                       backend=backend),
                              (x, w, bias), dtype)
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)


def _adain_by_policy(content, style, alpha, dtype, backend):
    # adain outside autocast on the policy's inputs: the style's statistics in its own dtype
    # (mean_std keeps it), the norm on the content cast to the autocast dtype.
    m, s = fastnst.mean_std(style, backend=backend)
    b, c = content.shape[:2]
    m, s = (m.flatten(1) * 1.0).expand(b, c), (s.flatten(1) * 1.0).expand(b, c)
    op = torch.ops.fastnst.instance_norm if backend == "cpu" else torch.ops.fastnst.instance_norm_triton
    y, _, _ = op(content.to(dtype).flatten(2), s * alpha, m * alpha, 1e-5, True, 1.0 - alpha, 0)
    return y.view(content.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adain_mixed_content_and_style(backend, dtype):
    for content, style in ((torch.randn(2, 4, 6, 5).to(dtype), torch.randn(1, 4, 7, 6)),  # bf16 content, fp32 style
                           (torch.randn(2, 4, 6, 5), torch.randn(2, 4, 7, 6)),             # both fp32
                           (torch.randn(2, 4, 6, 5), torch.randn(1, 4, 7, 6).to(OTHER[dtype]))):
        out = _check_with_grads(lambda c, s: fastnst.adain(c, s, alpha=0.7, backend=backend),
                                lambda c, s: _adain_by_policy(c, s, 0.7, dtype, backend), (content, style), dtype)
        assert out.dtype == dtype
        # ... and within the dtype's error of the float64 reference on the same inputs
        want = fastnst.adain(content.to(dtype).double(), style.double(), alpha=0.7, backend="reference")
        assert ((out.double() - want).abs().max() / want.abs().max()).item() < 2e-2
    with amp(dtype):  # several styles of several dtypes
        out = fastnst.adain(torch.randn(1, 4, 6, 5), [torch.randn(1, 4, 5, 5), torch.randn(1, 4, 6, 6).to(dtype)],
                            style_weights=[1, 3], backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_style_swap_mixed_content_and_style(backend, dtype):
    content, style = torch.randn(2, 3, 7, 8).to(dtype), torch.randn(1, 3, 6, 6)
    with amp(dtype):
        out, idx = fastnst.style_swap(content, style, return_indices=True, backend=backend)
        again = fastnst.style_swap_reconstruct(style, idx, (7, 8), backend=backend)
    _, want_idx = fastnst.style_swap(content.to(dtype), style.to(dtype), return_indices=True, backend=backend)
    want = fastnst.style_swap_reconstruct(style, want_idx, (7, 8), backend=backend)
    _same((out, idx), (want, want_idx))
    _same(again, want)
    assert out.dtype == torch.float32  # the style's dtype
    with amp(dtype):  # both fp32: matched in the autocast dtype, pasted from the fp32 style
        out, idx = fastnst.style_swap(content.float(), style, stride=2, return_indices=True, backend=backend)
    _, want_idx = fastnst.style_swap(content.to(dtype), style.to(dtype), stride=2, return_indices=True,
                                     backend=backend)
    _same(idx, want_idx)
    with amp(dtype), pytest.raises(TypeError, match="style must have the content's dtype torch.float64"):
        fastnst.style_swap(content.double(), style, backend=backend)  # float64 is not cast: still mixed


@needs_cpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_instance_norm_pad_fused_and_composite(dtype):
    x, res = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)  # fp32 activations
    w, b = torch.randn(4), torch.randn(4)
    with amp(dtype):
        fused = instance_norm_pad(x, w, b, 1e-5, "relu", res, 2, 1)  # no grad: the fused kernel
    want = torch.ops.fastnst.instance_norm_pad(x.to(dtype), w, b, 1e-5, 1, res.to(dtype), 2, 1)
    _same(fused, want)
    assert fused.dtype == dtype
    # With a gradient to compute: the composite, the same values in the same dtype; the
    # gradients reach the fp32 leaves.
    comp = _check_with_grads(lambda x, w, b, r: instance_norm_pad(x, w, b, 1e-5, "relu", r, 2, 1),
                             lambda x, w, b, r: F.pad(F.interpolate(
                                 fastnst.instance_norm(x.to(dtype), w, b, activation="relu") + r.to(dtype),
                                 scale_factor=2), (1,) * 4, mode="reflect"),
                             (x, w, b, res), dtype)
    assert comp.dtype == dtype
    torch.testing.assert_close(comp.float(), fused.float(), rtol=0, atol=0)


@needs_cpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_float64_runs_in_float64_under_autocast(dtype):
    x, s = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    fns = [lambda: fastnst.gram_matrix(x), lambda: fastnst.mean_std(x), lambda: fastnst.instance_norm(x, w, w),
           lambda: fastnst.adain(x, s), lambda: fastnst.style_swap(x, s)]
    for fn in fns:
        with amp(dtype):
            got = fn()
        _same(got, fn())
        assert all(t.dtype == torch.float64 for t in _flat(got))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    with amp(dtype):
        assert torch.autograd.gradcheck(lambda x, w: fastnst.instance_norm(x, w, None, activation="relu"), (xg, wg))
        assert torch.autograd.gradcheck(lambda x: fastnst.gram_matrix(x), (xg,))


@needs_cpu
def test_outside_autocast_nothing_changed():
    bf = torch.bfloat16
    c, s = torch.randn(1, 3, 6, 6).to(bf), torch.randn(1, 3, 6, 6)
    with pytest.raises(TypeError, match="style must have the content's dtype torch.bfloat16, got torch.float32"):
        fastnst.adain(c, s)
    with pytest.raises(TypeError, match="style must have the content's dtype torch.bfloat16, got torch.float32"):
        fastnst.style_swap(c, s)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        instance_norm_pad(c, residual=s)
    x = torch.randn(2, 3, 20)
    assert fastnst.gram_matrix(x).dtype == fastnst.instance_norm(x).dtype == torch.float32
    target = torch.randn(1, 3, 3)
    loss = fastnst.gram_loss(x.to(bf), target)  # outside autocast the target is rounded to G's dtype
    assert loss.dtype == bf
    _same(loss, F.mse_loss(fastnst.gram_matrix(x.to(bf)), target.to(bf).expand(2, 3, 3)))


@needs_cpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_inside_the_autocast_region(dtype):
    x, w = torch.randn(2, 4, 5, 5, requires_grad=True), torch.randn(4, requires_grad=True)
    s = torch.randn(1, 4, 6, 6, requires_grad=True)

    def loss():
        y = fastnst.instance_norm(x, w, None, activation="relu")
        return (fastnst.gram_matrix(y).float().square().sum() + fastnst.adain(y, s).float().sum()
                + sum(t.sum() for t in fastnst.mean_std(s)))

    with amp(dtype):
        inside = torch.autograd.grad(loss(), (x, w, s))
    with amp(dtype):
        out = loss()
    outside = torch.autograd.grad(out, (x, w, s))
    for a, b, leaf in zip(inside, outside, (x, w, s)):
        assert a.dtype == leaf.dtype
        _same(a, b)


# ---- torch.compile -----------------------------------------------------------------------------
def _program(x, w, b, s, dtype, backend):
    with amp(dtype):
        g = fastnst.gram_matrix(x, backend=backend)
        y = fastnst.instance_norm(x, w, b, activation="relu", backend=backend)
        a = fastnst.adain(y, s, alpha=0.5, backend=backend)
        m, sd = fastnst.mean_std(s, backend=backend)
        ss = fastnst.style_swap(y.detach(), s.detach(), backend=backend)
        direct = torch.ops.fastnst.gram(x.flatten(2), 0.5) if backend == "cpu" else g
        loss = fastnst.gram_loss(a, fastnst.gram_matrix(s.detach().float()).float(), backend=backend)
    return g, y, a, m, sd, ss, direct, loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_under_autocast(backend, dtype):
    torch._dynamo.reset()
    ins = (torch.randn(2, 4, 6, 6), torch.randn(4), torch.randn(4), torch.randn(1, 4, 5, 5))
    a, b = _leaves(*ins), _leaves(*ins)
    got = torch.compile(_program, fullgraph=True, backend="aot_eager")(*a, dtype, backend)
    want = _program(*b, dtype, backend)
    _same(got, want)
    assert [t.dtype for t in got[:3]] == [dtype] * 3 and got[5].dtype == torch.float32
    ga = torch.autograd.grad(got[-1] + got[0].float().sum(), a)
    gb = torch.autograd.grad(want[-1] + want[0].float().sum(), b)
    for x, y, leaf in zip(ga, gb, a):
        assert x.dtype == leaf.dtype
        _same(x, y)


@needs_cpu
def test_torch_compile_inductor_autocast_around_the_call():
    # The autocast context outside the compiled function; Inductor's own code around the ops.
    torch._dynamo.reset()

    def f(x, w, target):
        y = fastnst.instance_norm(x, w, None)
        return y, fastnst.gram_loss(y, target)

    x, w, t = torch.randn(2, 4, 6, 6), torch.randn(4), torch.randn(1, 4, 4)
    with amp(torch.bfloat16):
        got = torch.compile(f, fullgraph=True)(x, w, t)
        want = f(x, w, t)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    _same(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=0)


# ---- end to end --------------------------------------------------------------------------------
@needs_cpu
def test_gatys_style_loss_under_autocast():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    style = torch.rand(1, 3, 16, 16)
    loss_fn = GramLoss("relu1_1", weight=1e3)
    loss_fn.set_target(torch.relu(conv(style)))  # fp32 target Gram, outside autocast
    assert loss_fn.target.dtype == torch.float32
    img = torch.rand(1, 3, 16, 16, requires_grad=True)
    with amp(torch.bfloat16):
        feats = torch.relu(conv(img))  # bf16 features
        assert feats.dtype == torch.bfloat16
        loss = loss_fn(feats)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert img.grad.dtype == torch.float32 and torch.isfinite(img.grad).all()
    img32 = img.detach().clone().requires_grad_()
    loss32 = loss_fn(torch.relu(conv(img32)))
    loss32.backward()
    torch.testing.assert_close(loss, loss32, rtol=5e-2, atol=0)
    cos = F.cosine_similarity(img.grad.flatten(), img32.grad.flatten(), dim=0)
    assert cos > 0.99, cos
