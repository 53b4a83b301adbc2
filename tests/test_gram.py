"""fastnst.gram_matrix: parity with the float64 reference on every backend present,
gradients, opcheck, torch.compile, backend selection and bad input."""

import os
import subprocess
import sys

import pytest
import torch

import fastnst
from fastnst import reference
from fastnst.backend import BackendError
from fastnst.ops._common import grad_strides

from conftest import kernel_backends

BACKENDS = kernel_backends("gram_matrix") + ["reference"]
# The Triton interpreter runs every program in Python: keep its shapes small.
SMALL = {"triton"}

SHAPES = [
    (1, 1, 5, 5),      # minimal: one channel
    (3, 8, 7, 9),      # B > 1, odd H*W
    (2, 64, 33, 17),   # VGG-like channel count, odd H*W
    (1, 130, 20, 20),  # C not a multiple of any tile size
    (2, 3, 50),        # rank 3: [B, C, L]
]


def _divisor(x, normalize):
    c, l = x.shape[1], x[0, 0].numel()
    return {"chw": c * l, "hw": l, "none": 1}[normalize]


def _layout(x, layout):
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x.transpose(1, 2).contiguous().transpose(1, 2)  # channels innermost, rank 3
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.cat([x, x], dim=-1)
        return wide[..., ::2].copy_(x)
    raise AssertionError(layout)


def _ref64(x, normalize):
    return reference.gram_matrix(x.double(), _divisor(x, normalize))


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_forward_matches_float64_reference(backend, shape, layout):
    if backend in SMALL and shape[1] > 64:
        pytest.skip("interpreter: small shapes only")
    x = _layout(torch.randn(shape), layout)
    for normalize in ("chw", "hw", "none"):
        g = fastnst.gram_matrix(x, normalize=normalize, backend=backend)
        assert g.shape == (shape[0], shape[1], shape[1]) and g.dtype == x.dtype
        assert g.is_contiguous()
        assert _rel_err(g, _ref64(x, normalize)) < 2e-6, normalize
        if backend in ("cpu", "triton"):
            assert torch.equal(g, g.transpose(1, 2))  # mirrored, not computed twice


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_torch_error(backend, dtype):
    # Tolerance relative to the error plain PyTorch makes at the same precision.
    shape = (2, 48, 19, 23) if backend in SMALL else (2, 96, 37, 41)
    x64 = torch.randn(shape, dtype=torch.float64)
    x = x64.to(dtype)
    ref = reference.gram_matrix(x.double(), _divisor(x, "chw"))
    torch_err = _rel_err(reference.gram_matrix(x, _divisor(x, "chw")), ref)
    ours = fastnst.gram_matrix(x, backend=backend)
    assert ours.dtype == dtype
    assert _rel_err(ours, ref) <= 2 * torch_err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_backward_matches_float64_reference(backend, layout):
    shape = (2, 20, 9, 7) if backend in SMALL else (2, 70, 17, 13)
    x = _layout(torch.randn(shape), layout).requires_grad_()
    g = fastnst.gram_matrix(x, backend=backend)
    dG = torch.randn_like(g)  # not symmetric: the backward must use dG + dGᵀ
    (dx,) = torch.autograd.grad(g, x, dG)
    x64 = x.detach().double().requires_grad_()
    (dx64,) = torch.autograd.grad(reference.gram_matrix(x64, _divisor(x, "chw")), x64, dG.double())
    assert _rel_err(dx, dx64) < 2e-6
    if backend != "reference" and layout == "channels_last":
        assert dx.is_contiguous(memory_format=torch.channels_last)  # keeps x's layout


def test_large_vgg_layer_matches_reference():
    # relu4_1 of a 512x512 image: the tiled CPU kernel's chunking and thread split.
    if "cpu" not in BACKENDS:
        pytest.skip("fastnst._C not built")
    x = torch.randn(1, 512, 64, 64)
    g = fastnst.gram_matrix(x, backend="cpu")
    assert _rel_err(g, _ref64(x, "chw")) < 1e-5
    x = torch.randn(1, 64, 256, 256).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = fastnst.gram_matrix(x, backend="cpu")
    dG = torch.randn_like(g)
    g.backward(dG)
    ref = reference.gram_matrix_backward(dG.double(), x.detach().double(), 64 * 256 * 256)
    assert _rel_err(x.grad, ref) < 1e-5


@pytest.mark.parametrize("threads", [1, 3, 4, 8])
@pytest.mark.parametrize("shape", [(1, 64, 1024), (1, 512, 32, 32), (3, 130, 1500), (2, 64, 20000), (1, 40, 5001)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_thread_splits(threads, shape, dtype):
    # Every way the CPU kernel divides work (batch, L, the triangle's rows, several chunks, odd
    # chunk ends for bf16 pairs) for thread counts other than this machine's.
    if "cpu" not in BACKENDS:
        pytest.skip("fastnst._C not built")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(shape).to(dtype)
        g = fastnst.gram_matrix(x, backend="cpu")
        ref = _ref64(x, "chw")
        if dtype == torch.float32:
            assert _rel_err(g, ref) < 1e-5
        else:  # fp32 accumulation, one bf16 rounding
            assert ((g.double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-5 * ref.abs().amax()).all()
        assert torch.equal(g, g.transpose(1, 2))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpu", "reference")])
def test_gradgradcheck_float64(backend):
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: fastnst.gram_matrix(t, "none", backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_reference(backend):
    # A gradient penalty: d/dx of |dG/dx · v|², through the backward op's own autograd.
    def penalty(fn, x):
        g = fn(x)
        (dx,) = torch.autograd.grad(g, x, torch.ones_like(g), create_graph=True)
        return dx.pow(2).sum() + x.sum()

    x = torch.randn(1, 8, 5, 5, requires_grad=True)
    (ours,) = torch.autograd.grad(penalty(lambda t: fastnst.gram_matrix(t, "none", backend=backend), x), x)
    x64 = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(penalty(lambda t: reference.gram_matrix(t, 1.0), x64), x64)
    assert _rel_err(ours, ref) < 1e-5


def test_grad_strides_rule():
    assert grad_strides(torch.empty(2, 3, 5)) == (15, 5, 1)
    assert grad_strides(torch.empty(2, 5, 3).transpose(1, 2)) == (15, 1, 3)
    assert grad_strides(torch.empty(2, 1, 5)) == (5, 5, 1)


def test_torch_compile_inductor_smoke():
    if "cpu" not in BACKENDS:
        pytest.skip("fastnst._C not built")
    f = torch.compile(lambda x: fastnst.gram_matrix(x).sum(), fullgraph=True)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(f(x), fastnst.gram_matrix(x, backend="reference").sum())


# ---- backend selection -----------------------------------------------------------------
def test_auto_picks_cpu_kernel_and_env_and_context(monkeypatch):
    x = torch.randn(1, 4, 3, 3)
    expected = "cpu" if "cpu" in BACKENDS else "reference"
    assert fastnst.resolve("gram_matrix", x) == expected
    with fastnst.use_backend("reference"):
        assert fastnst.resolve("gram_matrix", x) == "reference"
        assert fastnst.resolve("gram_matrix", x, "auto") == "reference"
        if "cpu" in BACKENDS:
            assert fastnst.resolve("gram_matrix", x, "cpu") == "cpu"  # the call's own choice wins
    monkeypatch.setenv("FASTNST_BACKEND", "reference")
    assert fastnst.resolve("gram_matrix", x) == "reference"
    monkeypatch.setenv("FASTNST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FASTNST_BACKEND environment variable must be one of auto, cpu, cuda, "
                                         "triton, reference; got 'fastest'"):
        fastnst.gram_matrix(x)


def test_named_backend_that_cannot_serve_raises():
    x = torch.randn(1, 4, 3, 3)
    with pytest.raises(BackendError, match=r"gram_matrix: backend 'cuda' cannot serve this input: "
                                           r"the cuda backend runs CUDA tensors, got a tensor on cpu"):
        fastnst.gram_matrix(x, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of auto, cpu, cuda, triton, reference; got 'gpu'"):
        fastnst.gram_matrix(x, backend="gpu")
    with pytest.raises(ValueError, match=r"use_backend\(name\) must be one of"):
        with fastnst.use_backend("tpu"):
            pass


def test_triton_without_interpreter_refuses_cpu_tensors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendError, match="the triton backend runs CUDA tensors"):
        fastnst.gram_matrix(torch.randn(1, 2, 3, 3), backend="triton")


# ---- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("x, exc, msg", [
    (torch.randn(3, 256), ValueError, r"gram_matrix: x must be [B, C, H, W] or [B, C, L], got [3, 256]"),
    (torch.randn(1, 2, 3, 4, 5), ValueError, r"gram_matrix: x must be [B, C, H, W] or [B, C, L], got [1, 2, 3, 4, 5]"),
    (torch.ones(1, 2, 3, 3, dtype=torch.int64), TypeError,
     "gram_matrix: x must be float32, float16 or bfloat16 (float64 on the CPU), got torch.int64"),
    (torch.ones(1, 2, 3, dtype=torch.complex64), TypeError,
     "gram_matrix: x must be float32, float16 or bfloat16 (float64 on the CPU), got torch.complex64"),
    (torch.ones(0, 2, 3, 3), ValueError, "gram_matrix: x must be non-empty, got [0, 2, 3, 3]"),
    (torch.ones(1, 2, 0, 3), ValueError, "gram_matrix: x must be non-empty, got [1, 2, 0, 3]"),
    ([[1.0]], TypeError, "gram_matrix: x must be a torch.Tensor [B, C, H, W] or [B, C, L], got list"),
])
def test_bad_input(x, exc, msg):
    with pytest.raises(exc) as info:
        fastnst.gram_matrix(x)
    assert str(info.value) == msg


def test_bad_normalize():
    with pytest.raises(ValueError) as info:
        fastnst.gram_matrix(torch.randn(1, 2, 3, 3), normalize="chw2")
    assert str(info.value) == "gram_matrix: normalize must be 'chw', 'hw' or 'none', got 'chw2'"


def test_gram_loss_and_its_errors():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.randn(1, 4, 4)
    loss = fastnst.gram_loss(x, target)
    ref = ((reference.gram_matrix(x, 100.0) - target) ** 2).mean()
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ValueError) as info:
        fastnst.gram_loss(x, torch.randn(1, 4, 4, device="meta"))
    assert str(info.value) == "gram_loss: x and target must be on the same device, got cpu and meta"
    with pytest.raises(ValueError) as info:
        fastnst.gram_loss(x, torch.randn(3, 4, 4))
    assert str(info.value) == ("gram_loss: target must be [2, 4, 4] or [1, 4, 4] for x of 4 channels, "
                               "got [3, 4, 4]")


def test_cpp_op_checks_its_inputs():
    if "cpu" not in BACKENDS:
        pytest.skip("fastnst._C not built")
    with pytest.raises(RuntimeError, match=r"fastnst::gram: x must be \[B, C, L\], got \[2, 3\]"):
        torch.ops.fastnst.gram(torch.randn(2, 3), 1.0)
    with pytest.raises(RuntimeError, match=r"fastnst::gram_backward: grad must be \[B, C, C\] = \[1, 3, 3\]"):
        torch.ops.fastnst.gram_backward(torch.randn(1, 3, 4), torch.randn(1, 3, 5), 1.0)


def test_import_without_extension_warns_and_reference_works():
    code = (
        "import sys, warnings\n"
        "sys.modules['fastnst._C'] = None\n"  # makes `from fastnst import _C` fail
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastnst, torch\n"
        "msgs = [str(m.message) for m in w if 'fastnst._C' in str(m.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "x = torch.randn(1, 3, 4, 4)\n"
        "assert fastnst.resolve('gram_matrix', x) == 'reference'\n"
        "g = fastnst.gram_matrix(x)\n"
        "try:\n"
        "    fastnst.gram_matrix(x, backend='cpu')\n"
        "    raise SystemExit('no error')\n"
        "except fastnst.BackendError as e:\n"
        "    assert 'fastnst._C is not built' in str(e), e\n"
        "import torch.cuda\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_backends_match_reference(backend):
    x = torch.randn(2, 70, 33, 17, device="cuda", requires_grad=True)
    g = fastnst.gram_matrix(x, backend=backend)
    torch.testing.assert_close(g, reference.gram_matrix(x.detach(), 70 * 33 * 17), rtol=1e-4, atol=1e-5)
    dG = torch.randn_like(g)
    g.backward(dG)
    ref = reference.gram_matrix_backward(dG, x.detach(), 70 * 33 * 17)
    torch.testing.assert_close(x.grad, ref, rtol=1e-4, atol=1e-5)
