"""mean_std, instance_norm (affine, conditional, ReLU) and adain: float64-reference parity on
every backend present, gradients, opcheck, torch.compile and bad input."""

import pytest
import torch

import fastnst
from fastnst import reference

from conftest import kernel_backends

BACKENDS = kernel_backends("instance_norm") + ["reference"]
SMALL = {"triton"}  # the interpreter is slow

SHAPES = [
    (1, 1, 5, 5),      # minimal
    (3, 8, 7, 9),      # B > 1, odd H*W
    (2, 64, 33, 17),   # VGG-like channels
    (1, 130, 20, 20),  # C not a multiple of any vector width
    (2, 3, 50),        # rank 3
]


def _layout(x, layout):
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        return (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4
                else x.transpose(1, 2).contiguous().transpose(1, 2))
    if layout == "strided":
        return torch.cat([x, x], dim=-1)[..., ::2].copy_(x)
    if layout == "batch_slice":  # channels-innermost with a gap between samples
        big = _layout(torch.cat([x, x], 0), "channels_last")
        return big[::2].copy_(x)
    raise AssertionError(layout)


def _close(a, b, tol):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() < tol


def _skip_small(backend, shape):
    if backend in SMALL and (shape[1] > 64 or len(shape) == 4 and shape[2] * shape[3] > 1200):
        pytest.skip("interpreter: small shapes only")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "batch_slice"])
def test_forward_parity(backend, shape, layout):
    _skip_small(backend, shape)
    x = _layout(torch.randn(shape) * 2 + 0.5, layout)
    x64 = x.double()
    for unbiased in (True, False):
        if unbiased and x[0, 0].numel() < 2:
            continue
        m, s = fastnst.mean_std(x, 1e-5, unbiased, backend=backend)
        rm, rs = reference.mean_std(x64, 1e-5, unbiased)
        assert m.shape == rm.shape and m.dtype == x.dtype
        assert _close(m, rm, 1e-6) and _close(s, rs, 1e-6)
    c = shape[1]
    for w, b in [(None, None), (torch.randn(c), torch.randn(c)), (torch.randn(shape[0], c), torch.randn(shape[0], c))]:
        for act in (None, "relu"):
            y = fastnst.instance_norm(x, w, b, eps=1e-5, activation=act, backend=backend)
            ry = reference.instance_norm(x64, None if w is None else w.double(),
                                         None if b is None else b.double(), 1e-5, act)
            assert y.dtype == x.dtype and _close(y, ry, 1e-5), (w is None, act)
            if backend != "reference" and layout in ("channels_last", "batch_slice") and x.dim() == 4:
                assert y.is_contiguous(memory_format=torch.channels_last)
    style = torch.randn((1, c) + tuple(s + 3 for s in shape[2:])) * 3 + 1
    for alpha, unbiased, style_eps in [(1.0, True, None), (0.6, False, 0.0)]:
        out = fastnst.adain(x, style, alpha, 1e-5, unbiased, style_eps=style_eps, backend=backend)
        ref = reference.adain(x64, style.double(), alpha, 1e-5, unbiased, style_eps=style_eps)
        assert _close(out, ref, 1e-5)


def test_large_mean_is_stable():
    if "cpu" not in BACKENDS:
        pytest.skip("fastnst._C not built")
    for layout in ("contiguous", "channels_last"):
        x = _layout(torch.randn(2, 16, 128, 128) + 1e4, layout)  # fp32 E[x²] − E[x]² would lose it all
        _, s = fastnst.mean_std(x, backend="cpu")
        _, rs = reference.mean_std(x.double())
        assert ((s.double() - rs) / rs).abs().max() < 1e-4


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(backend, dtype):
    # Within twice the error of computing in float32 and rounding once to the dtype.
    x = torch.randn(2, 24, 19, 23).to(dtype)
    y = fastnst.instance_norm(x, activation="relu", backend=backend)
    ref = reference.instance_norm(x.double(), activation="relu")
    torch_err = (reference.instance_norm(x.float(), activation="relu").to(dtype).double() - ref).abs().max()
    assert y.dtype == dtype
    assert (y.double() - ref).abs().max() <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_parity(backend, layout):
    shape = (2, 12, 9, 7)
    x = _layout(torch.randn(shape), layout).requires_grad_()
    w = torch.randn(2, 12, requires_grad=True)
    b = torch.randn(12, requires_grad=True)
    style = torch.randn(1, 12, 6, 5, requires_grad=True)
    g1, g2 = torch.randn(shape), torch.randn(shape)

    def run(fn, x, w, b, style, rs):
        y = fn.instance_norm(x, w, b, activation="relu", **rs)
        a = fn.adain(x, style, 0.8, **rs) if fn is fastnst else reference.adain(x, style, 0.8)
        m, s = fn.mean_std(x, **rs)
        return (y * g1.to(y.dtype)).sum() + (a * g2.to(a.dtype)).sum() + (m * 3).sum() + (s * 5).sum()

    ours = torch.autograd.grad(run(fastnst, x, w, b, style, {"backend": backend}), (x, w, b, style))
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, style)]
    refs = torch.autograd.grad(run(reference, *leaves, {}), leaves)
    for o, r in zip(ours, refs):
        assert o.shape == r.shape and _close(o, r, 1e-5)


def test_double_backward_is_refused():
    if "cpu" not in BACKENDS:
        pytest.skip("fastnst._C not built")
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    y = fastnst.instance_norm(x, backend="cpu")
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g.sum().backward()


# ---- bad input ---------------------------------------------------------------------------
def _err(fn, exc=ValueError):
    with pytest.raises(exc) as info:
        fn()
    return str(info.value)


def test_bad_input_messages():
    x = torch.randn(2, 4, 5, 5)
    assert _err(lambda: fastnst.mean_std(torch.randn(4, 5))) == \
        "mean_std: x must be [B, C, H, W] or [B, C, L], got [4, 5]"
    assert _err(lambda: fastnst.adain(x, torch.randn(1, 3, 5, 5))) == \
        "adain: style must have the content's 4 channels, got [1, 3, 5, 5]"
    assert _err(lambda: fastnst.adain(x, torch.randn(3, 4, 5, 5))) == \
        "adain: style must have batch 1 or the content's 2, got [3, 4, 5, 5]"
    assert _err(lambda: fastnst.instance_norm(x, torch.randn(3))) == \
        "instance_norm: weight must be [C] = [4] or [B, C] = [2, 4], got [3]"
    assert _err(lambda: fastnst.instance_norm(x, bias=torch.randn(4, 4))) == \
        "instance_norm: bias must be [C] = [4] or [B, C] = [2, 4], got [4, 4]"
    assert _err(lambda: fastnst.instance_norm(x, eps=-1e-5)) == \
        "instance_norm: eps must be a finite number >= 0, got -1e-05"
    assert _err(lambda: fastnst.adain(x, x, eps=-1)) == "adain: eps must be a finite number >= 0, got -1"
    assert _err(lambda: fastnst.adain(x, [x, x], style_weights=[1.0])) == \
        "adain: style_weights must have one weight per style (2), got 1"
    assert _err(lambda: fastnst.adain(x, [x, x], style_weights=[1.0, -1.0])) == \
        "adain: style_weights must be finite and >= 0 with a finite positive sum, got [1.0, -1.0]"
    assert _err(lambda: fastnst.adain(x, x, alpha=1.5)) == "adain: alpha must be in [0, 1], got 1.5"
    assert _err(lambda: fastnst.instance_norm(x, activation="gelu")) == \
        "instance_norm: activation must be None or 'relu', got 'gelu'"
    assert _err(lambda: fastnst.mean_std(torch.ones(1, 2, 3, dtype=torch.int32)), TypeError) == \
        "mean_std: x must be float32, float16 or bfloat16 (float64 on the CPU), got torch.int32"
    assert _err(lambda: fastnst.adain(x, torch.randn(1, 4, 5, 5, device="meta"))) == \
        "adain: content and style must be on the same device, got cpu and meta"
    assert _err(lambda: fastnst.mean_std(torch.randn(1, 2, 1, 1))) == \
        "mean_std: the unbiased variance needs at least 2 values per channel, got x of [1, 2, 1, 1]"


def test_multi_style_interpolates_statistics():
    x = torch.randn(1, 6, 8, 8)
    s1, s2 = torch.randn(1, 6, 5, 5) * 2 + 1, torch.randn(1, 6, 7, 7) * 0.5 - 1
    out = fastnst.adain(x, [s1, s2], style_weights=[3, 1])
    m1, d1 = reference.mean_std(s1)
    m2, d2 = reference.mean_std(s2)
    cm, cd = reference.mean_std(x)
    expected = (x - cm) / cd * (0.75 * d1 + 0.25 * d2) + 0.75 * m1 + 0.25 * m2
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_large_outputs_reuse_only_free_buffers():
    # csrc/cpu/out_cache.h: a large output's storage is handed out again only once nothing
    # refers to it (not the tensor, not a view of it).
    if "cpu" not in BACKENDS:
        pytest.skip("fastnst._C not built")
    x = torch.randn(1, 64, 256, 256)  # 16 MiB output
    y1 = fastnst.instance_norm(x, backend="cpu")
    y2 = fastnst.instance_norm(x, backend="cpu")
    assert y1.data_ptr() != y2.data_ptr()  # y1 is alive
    ptr = y2.data_ptr()
    view = y2[0, :3]
    del y1, y2
    y3 = fastnst.instance_norm(x, backend="cpu")
    assert y3.data_ptr() != ptr  # the view keeps that storage alive
    expected = view.clone()
    torch.testing.assert_close(view, expected)
    ptr3 = y3.data_ptr()
    del y3, view
    y4 = fastnst.instance_norm(x, backend="cpu")
    assert y4.data_ptr() == ptr3  # free again: reused, no fresh page faults
    torch.testing.assert_close(y4, reference.instance_norm(x))


def test_large_output_streaming_path():
    """Outputs of >= 16 MiB take the CPU kernels' streaming-store path; rows of odd length start
    at unaligned addresses (masked/scalar heads before the aligned stores)."""
    if "cpu" not in BACKENDS:
        pytest.skip("no CPU kernel")
    x = (torch.randn(1, 3, 1187, 1181) * 2 + 0.5).requires_grad_()  # 16.04 MiB
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    y = fastnst.instance_norm(x, w, b, activation="relu", backend="cpu")
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    x64 = x.detach().double().requires_grad_()
    ry = reference.instance_norm(x64, w.double(), b.double(), activation="relu")
    (rdx,) = torch.autograd.grad(ry, x64, g.double())
    assert _close(y, ry, 1e-5) and _close(dx, rdx, 1e-4)


# ---- issue 9: findings of the fuzz run, one regression test each -------------------------------
KERNELS = [b for b in BACKENDS if b != "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_gradients_are_float64_exact(backend):
    # Finding 1: mean/rstd were saved in fp32 and dw/db returned in fp32.
    x = (1e5 + torch.randn(1, 2, 3, 3, dtype=torch.float64)).requires_grad_()
    w = torch.rand(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: fastnst.instance_norm(x, w, eps=1.0, backend=backend), (x, w))
    s = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: fastnst.adain(x, s, eps=1.0, backend=backend), (x, s))
    # Ordinary float64 input: dx to float64 accuracy, not 5e-8.
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    wb = torch.rand(3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    got = torch.autograd.grad(fastnst.instance_norm(x, wb, wb, backend=backend), (x, wb), g)
    want = torch.autograd.grad(reference.instance_norm(x, wb, wb), (x, wb), g)
    for a, b in zip(got, want):
        assert a.dtype == torch.float64
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-13


def test_reference_instance_norm_gradient_is_right_for_channels_last_grad():
    # Finding 4: F.instance_norm's input gradient is wrong in torch 2.13 for batch 1 with a
    # channels_last upstream gradient; the reference is plain formulas and must not be.
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    dense, = torch.autograd.grad(reference.instance_norm(x), x, g)
    cl, = torch.autograd.grad(reference.instance_norm(x), x, g.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, dense, rtol=1e-13, atol=1e-13)
    # ... and dense is the analytic gradient: (g - mean g - xhat mean(g xhat)) / sigma.
    xf = x.detach().flatten(2)
    mu, var = xf.mean(2, keepdim=True), xf.var(2, unbiased=False, keepdim=True)
    xhat, gf = (xf - mu) / (var + 1e-5).sqrt(), g.flatten(2)
    want = (gf - gf.mean(2, keepdim=True) - xhat * (gf * xhat).mean(2, keepdim=True)) / (var + 1e-5).sqrt()
    torch.testing.assert_close(dense.flatten(2), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("value", [0.0, 2.5, -1e30, 3.3e-3])
def test_eps0_constant_channel_gives_the_bias(backend, layout, value):
    # Finding 6: 1/sigma is 0 where var + eps = 0 (as PyTorch): the output is the bias.
    x = torch.randn(2, 3, 5, 7)
    x[:, 1] = value
    x = _layout(x, layout).requires_grad_()
    b = torch.tensor([0.3, -0.7, 0.2])
    w = torch.tensor([1.5, 2.0, 0.5])
    y = fastnst.instance_norm(x, w, b, eps=0.0, activation="relu", backend=backend)
    assert torch.equal(y[:, 1], torch.zeros_like(y[:, 1]))  # relu(-0.7)
    y2 = fastnst.instance_norm(x, w, -b, eps=0.0, backend=backend)
    assert torch.equal(y2[:, 1], torch.full_like(y2[:, 1], 0.7))
    assert torch.isfinite(y).all() and torch.isfinite(y2).all()
    gx, = torch.autograd.grad(y2.square().sum(), x)
    assert torch.isfinite(gx).all() and torch.equal(gx[:, 1], torch.zeros_like(gx[:, 1]))
    # AdaIN: a constant content channel takes the style's mean.
    style = torch.randn(2, 3, 4, 4)
    t = fastnst.adain(x.detach(), style, eps=0.0, unbiased=False, backend=backend)
    m, _ = reference.mean_std(style, 0.0, False)
    torch.testing.assert_close(t[:, 1], m[:, 1].expand(2, 5, 7), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_std_gradient_through_the_mean_alone_is_finite(backend, dtype):
    # Finding 7: Q = g_std / (std n) was 0 / 0 where std = 0 or the row holds a NaN / Inf.
    x = torch.randn(2, 3, 8, dtype=dtype)
    x[0, 0] = 4.0                      # constant row, eps = 0: std = 0
    x[1, 2, 3] = float("inf")          # a non-finite value elsewhere
    x[1, 1, 5] = float("nan")
    x.requires_grad_()
    mean, _ = fastnst.mean_std(x, eps=0.0, backend=backend)
    g, = torch.autograd.grad(mean.sum(), x)
    assert torch.equal(g, torch.full_like(g, 1 / 8))
    if backend == "reference":  # plain autograd: 0 * Inf = NaN through an unused std
        return
    # With both outputs used, rows where grad_std is 0 still get grad_mean / L exactly.
    mean, std = fastnst.mean_std(x, eps=0.0, backend=backend)
    gs = torch.zeros(2, 3, 1, dtype=dtype)
    gs[0, 1] = 1.0
    g, = torch.autograd.grad((mean.sum(), (std * gs).sum()), x)
    rows = torch.ones(2, 3, dtype=torch.bool)
    rows[0, 1] = False
    assert torch.equal(g[rows], torch.full_like(g[rows], 1 / 8))
    assert torch.isfinite(g[0, 1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_of_huge_values_do_not_overflow(backend, layout):
    # Finding 8: fp32 block sums of squares passed FLT_MAX for values ~1e18.
    x = _layout(torch.randn(2, 3, 40, 30) * 1e18, layout)
    mean, std = fastnst.mean_std(x, backend=backend)
    want_m, want_s = reference.mean_std(x.double())
    assert torch.isfinite(std).all()
    torch.testing.assert_close(std.double(), want_s, rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double(), want_m, rtol=0, atol=1e-5 * 1e18)
    t = fastnst.adain(torch.randn(2, 3, 8, 8), x, backend=backend)
    assert torch.isfinite(t).all()
    if backend == "reference":  # plain float32 formulas overflow in the sum of squares
        return
    y = fastnst.instance_norm(x, backend=backend)
    torch.testing.assert_close(y.double(), reference.instance_norm(x.double()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adain_unbiased_with_one_value_per_channel_is_one_error(backend):
    # Finding 14: cpu named instance_norm, triton and reference returned NaN.
    c1, s = torch.randn(1, 2, 1, 1), torch.randn(1, 2, 4, 4)
    assert _err(lambda: fastnst.adain(c1, s, backend=backend)) == \
        "adain: the unbiased variance needs at least 2 values per channel, got content of [1, 2, 1, 1]"
    assert _err(lambda: fastnst.adain(s, c1, backend=backend)) == \
        "adain: the unbiased variance needs at least 2 values per channel, got style of [1, 2, 1, 1]"
    assert torch.isfinite(fastnst.adain(s, c1, unbiased=False, backend=backend)).all()


@pytest.mark.parametrize("weights", [[float("inf"), 1.0], [1e308, 1e308], [float("nan"), 1.0], [0.0, 0.0],
                                     [1.0, -0.5]])
def test_style_weights_must_be_finite_with_a_finite_positive_sum(weights):
    # Finding 15.
    c, s = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    assert _err(lambda: fastnst.adain(c, [s, s], style_weights=weights)) == \
        f"adain: style_weights must be finite and >= 0 with a finite positive sum, got {[float(w) for w in weights]}"
    # Large but finite weights are fine: they are normalised.
    out = fastnst.adain(c, [s, s], style_weights=[1e300, 1e300])
    torch.testing.assert_close(out, fastnst.adain(c, s))


def test_instance_norm_refuses_non_float_weights_and_single_values():
    # Finding 16: complex, int and bool weight/bias were accepted; L = 1 maps too.
    x = torch.randn(2, 3, 4, 4)
    for dtype in (torch.complex64, torch.int64, torch.bool):
        w = torch.ones(3, dtype=dtype)
        assert _err(lambda: fastnst.instance_norm(x, w), TypeError) == \
            f"instance_norm: weight must be a float tensor (float32, float16, bfloat16 or float64), got {dtype}"
        assert _err(lambda: fastnst.instance_norm(x, None, w), TypeError) == \
            f"instance_norm: bias must be a float tensor (float32, float16, bfloat16 or float64), got {dtype}"
    assert _err(lambda: fastnst.instance_norm(torch.randn(2, 3, 1, 1))) == \
        "instance_norm: x must have more than 1 spatial element per channel, got [2, 3, 1, 1]"
    with pytest.raises(ValueError):  # as nn.InstanceNorm2d, which fastnst.nn.InstanceNorm2d replaces
        torch.nn.InstanceNorm2d(3)(torch.randn(2, 3, 1, 1))
    from fastnst import nn as fnn
    assert _err(lambda: fnn.InstanceNorm2d(3)(torch.randn(2, 3, 1, 1))) == \
        "instance_norm: x must have more than 1 spatial element per channel, got [2, 3, 1, 1]"


def test_scalars_accept_real_numbers_and_bools_only():
    # Finding 18 (ops part): NumPy scalars are real numbers; unbiased must be a bool.
    np = pytest.importorskip("numpy")
    x = torch.randn(2, 3, 4, 4)
    for backend in BACKENDS:
        m, s = fastnst.mean_std(x, eps=np.float32(1e-5), unbiased=np.bool_(True), backend=backend)
        torch.testing.assert_close(s, fastnst.mean_std(x, backend=backend)[1])
        for bad in (None, 2, 1, "yes"):
            assert _err(lambda: fastnst.mean_std(x, unbiased=bad, backend=backend), TypeError) == \
                f"mean_std: unbiased must be True or False, got {bad!r}"
            assert _err(lambda: fastnst.adain(x, x, unbiased=bad, backend=backend), TypeError) == \
                f"adain: unbiased must be True or False, got {bad!r}"
    for bad in (True, "1e-5", torch.tensor(1e-5)):
        assert _err(lambda: fastnst.mean_std(x, eps=bad), TypeError).startswith(
            "mean_std: eps must be a finite number >= 0, got ")
    assert _err(lambda: fastnst.instance_norm(x, eps=float("inf"))) == \
        "instance_norm: eps must be a finite number >= 0, got inf"


def test_conditional_instance_norm_style_indices():
    # Finding 18: LongTensor([-1]) took the last style, LongTensor([3]) was a raw IndexError.
    from fastnst import nn as fnn
    m = fnn.ConditionalInstanceNorm2d(3, 4)
    x = torch.randn(1, 4, 5, 5)
    assert _err(lambda: m(x, torch.tensor([-1]))) == "style indices must be in [0, 3), got values in [-1, -1]"
    assert _err(lambda: m(x, torch.tensor([3]))) == "style indices must be in [0, 3), got values in [3, 3]"
    assert _err(lambda: m(x, -1)) == "style index must be in [0, 3), got -1"
    assert _err(lambda: m(x, True), TypeError) == ("style must be an int index, a LongTensor [B] of indices "
                                                   "or a float tensor of mixing weights, got a bool")
    np = pytest.importorskip("numpy")
    torch.testing.assert_close(m(x, np.int64(2)), m(x, 2))
    torch.testing.assert_close(m(x, torch.tensor([2])), m(x, 2))


@pytest.mark.parametrize("backend", KERNELS)
def test_direct_op_calls_mixing_meta_and_cpu_are_refused(backend):
    # Finding 19: the dispatcher sends such calls to the fake kernels, which returned
    # uninitialised memory.
    sfx = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastnst
    x, m = torch.randn(2, 3, 8), torch.randn(2, 3, 8, device="meta")
    w, wm = torch.randn(3), torch.randn(3, device="meta")
    stats, stats_m = torch.randn(2, 3), torch.randn(2, 3, device="meta")
    calls = [
        lambda: getattr(ops, "instance_norm" + sfx)(x, wm, None, 1e-5, False, 0.0, 0),
        lambda: getattr(ops, "instance_norm" + sfx)(m, w, None, 1e-5, False, 0.0, 0),
        lambda: getattr(ops, "instance_norm_backward" + sfx)(x, x, x, None, stats_m, stats, False, 0.0, 0, False),
        lambda: getattr(ops, "instance_norm_backward" + sfx)(m, x, x, None, stats, stats, False, 0.0, 0, False),
        lambda: getattr(ops, "mean_std_backward" + sfx)(stats_m, stats, x, stats, stats, True),
        lambda: getattr(ops, "mean_std_backward" + sfx)(stats, stats, m, stats, stats, True),
        lambda: getattr(ops, "gram_backward" + sfx)(torch.randn(2, 3, 3, device="meta"), x, 1.0),
        lambda: getattr(ops, "gram_backward" + sfx)(torch.randn(2, 3, 3), m, 1.0),
    ]
    for call in calls:
        with pytest.raises((ValueError, RuntimeError), match="device"):
            call()
