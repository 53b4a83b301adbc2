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


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpu", "reference")])
def test_gradcheck_float64(backend):
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 4, 5, **d)
    w, b = torch.randn(2, 3, **d), torch.randn(3, **d)
    s = torch.randn(1, 3, 3, 3, **d)
    f = lambda x, w, b: fastnst.instance_norm(x, w, b, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, s: fastnst.adain(x, s, 0.7, backend=backend), (x, s))
    assert torch.autograd.gradcheck(lambda x: fastnst.mean_std(x, backend=backend), (x,))
    xc = torch.randn(1, 3, 3, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fastnst.adain(x, s.detach(), unbiased=False, backend=backend), (xc,))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_opcheck(backend):
    t = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastnst
    x = torch.randn(2, 5, 33, requires_grad=True)
    xcl = torch.randn(2, 33, 5).transpose(1, 2).requires_grad_()
    w = torch.randn(2, 5, requires_grad=True)
    for xx in (x, xcl):
        torch.library.opcheck(getattr(ops, "mean_std" + t).default, (xx, 1e-5, True))
        torch.library.opcheck(getattr(ops, "instance_norm" + t).default, (xx, w, None, 1e-5, False, 0.0, 1))
        torch.library.opcheck(getattr(ops, "instance_norm" + t).default, (xx, None, None, 1e-5, True, 0.25, 0))
        xd = xx.detach()
        y, m, r = getattr(ops, "instance_norm" + t)(xd, w.detach(), None, 1e-5, False, 0.0, 1)
        torch.library.opcheck(getattr(ops, "instance_norm_backward" + t).default,
                              (torch.randn(2, 5, 33), xd, y, w.detach(), m, r, False, 0.0, 1, True))
        mm, ss = getattr(ops, "mean_std" + t)(xd, 1e-5, True)
        torch.library.opcheck(getattr(ops, "mean_std_backward" + t).default,
                              (torch.randn(2, 5), torch.randn(2, 5), xd, mm, ss, True))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_torch_compile_fullgraph(backend):
    def f(x, s, w):
        return (fastnst.adain(x, s, 0.9, backend=backend).sum()
                + fastnst.instance_norm(x, w, None, activation="relu", backend=backend).sum())

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    s, w = torch.randn(1, 8, 5, 5), torch.randn(8)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, s, w)
    out.backward()
    x2 = x.detach().clone().requires_grad_()
    f(x2, s, w).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


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
    assert _err(lambda: fastnst.instance_norm(x, eps=-1e-5)) == "instance_norm: eps must be a finite number >= 0, got -1e-05"
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
