"""style_swap: indices identical to the conv-based reference (float64), outputs equal, ties to
the lowest index, zero-norm patches without NaN, uncovered pixels, batches, layouts, opcheck,
torch.compile, reuse of indices, bad input, and issue 9's hardening (Triton ties whatever BLAS
NumPy uses, the near-tie contract, out_size, meta tensors, empty batches, mixed-device op calls)."""

import os

import pytest
import torch

import fastnst
from fastnst import reference

from conftest import kernel_backends

BACKENDS = kernel_backends("style_swap")
SMALL = {"triton"}  # the interpreter is slow

# (content shape, style shape, patch_size, stride)
CASES = [
    ((1, 4, 9, 9), (1, 4, 8, 8), 1, 1),
    ((2, 8, 12, 11), (1, 8, 10, 9), 3, 1),
    ((2, 8, 12, 11), (2, 8, 9, 13), 3, 1),       # a style per sample
    ((1, 16, 20, 17), (1, 16, 19, 23), 3, 1),    # several style blocks, ragged edges
    ((1, 8, 21, 20), (1, 8, 18, 19), 3, 2),      # stride 2: last row/column uncovered
    ((1, 6, 30, 28), (1, 6, 25, 27), 5, 1),
    ((2, 5, 13, 12), (1, 5, 11, 14), 5, 2),
    ((1, 4, 9, 9), (1, 4, 8, 8), 1, 2),          # stride > patch: gaps between patches
    ((1, 3, 10, 10), (1, 3, 7, 7), 3, 3),
    ((1, 64, 40, 37), (1, 64, 35, 42), 3, 1),    # VGG-like channels, many blocks
]


def _small(shape):
    return shape[1] <= 16 and shape[2] * shape[3] <= 400


def _layout(x, layout):
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.cat([x, x], dim=-1)[..., ::2].copy_(x)
    raise AssertionError(layout)


def _features(shape, dtype=torch.float64):
    return torch.randn(shape, dtype=dtype).relu_()  # ReLU features, as VGG's relu3_1


def _scores(content, style, k, s, eps=1e-8):
    """float64 normalised cross-correlations, [B, n_style, nh, nw] (small inputs only)."""
    c64, s64 = content.double(), style.double()
    out = []
    for b in range(c64.shape[0]):
        p = reference._style_patches(s64[b if s64.shape[0] > 1 else 0].unsqueeze(0), k, s)
        norm = p.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        out.append(torch.nn.functional.conv2d(c64[b:b + 1], p / (norm + eps), stride=s))
    return torch.cat(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_float64_identical_to_reference(backend, case, layout):
    cshape, sshape, k, s = case
    if backend in SMALL and not (_small(cshape) and _small(sshape)):
        pytest.skip("interpreter: small shapes only")
    if backend in SMALL and layout != "contiguous" and cshape[0] > 1:
        pytest.skip("interpreter: one layout case per shape is enough")
    content, style = _features(cshape), _features(sshape)
    ref_out, ref_idx = reference.style_swap(content, style, k, s)
    out, idx = fastnst.style_swap(_layout(content, layout), _layout(style, layout), k, s,
                                  return_indices=True, backend=backend)
    assert idx.dtype == torch.int64 and idx.shape == ref_idx.shape
    assert torch.equal(idx, ref_idx)
    assert out.shape == content.shape and out.dtype == torch.float64 and out.is_contiguous()
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES[1:5] + CASES[9:], ids=lambda c: f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_is_an_argmax(backend, case, dtype):
    """float32/16: the chosen patch is the float64 argmax, or ties with it within rounding."""
    cshape, sshape, k, s = case
    if backend in SMALL and not (_small(cshape) and _small(sshape)):
        pytest.skip("interpreter: small shapes only")
    content, style = _features(cshape, torch.float32).to(dtype), _features(sshape, torch.float32).to(dtype)
    out, idx = fastnst.style_swap(content, style, k, s, return_indices=True, backend=backend)
    scores = _scores(content, style, k, s)
    best = scores.amax(1)
    got = scores.gather(1, idx.unsqueeze(1)).squeeze(1)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert ((best - got) <= tol * best.abs().clamp_min(1.0)).all()
    ref_idx = scores.argmax(1)
    if dtype == torch.float32:
        assert (idx == ref_idx).double().mean() > 0.99
    # The output is the reconstruction of exactly these indices.
    expect = reference.style_swap_paste(style.double(), idx, k, s, cshape[2], cshape[3])
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expect, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_index(backend):
    # A style made of one repeated 4 x 4 tile: every patch has exact duplicates.
    tile = _features((1, 6, 4, 4))
    style = tile.repeat(1, 1, 3, 3)
    content = _features((2, 6, 10, 9))
    for k, s in ((3, 1), (1, 1), (3, 2)):
        _, idx = fastnst.style_swap(content, style, k, s, return_indices=True, backend=backend)
        scores = _scores(content, style, k, s)
        best = scores.amax(1, keepdim=True)
        n_style = scores.shape[1]
        q = torch.arange(n_style).view(1, -1, 1, 1).expand_as(scores)
        # conv2d may score exact duplicates 1 ulp apart: duplicates are those within 1e-9.
        lowest = torch.where(scores >= best - 1e-9 * best.abs(), q, n_style).amin(1)
        assert torch.equal(idx, lowest)
        # float32: duplicated patches give bit-equal scores, so the lowest index wins too.
        _, idx32 = fastnst.style_swap(content.float(), style.float(), k, s, return_indices=True,
                                      backend=backend)
        if (k, s) == (1, 1):  # pixels of the first tile: rows and columns < 4 of 12
            assert ((idx32 // 12 < 4) & (idx32 % 12 < 4)).all()
        assert torch.equal(idx32, lowest)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_style_region_gives_no_nan(backend, dtype):
    style = _features((1, 8, 12, 12), dtype)
    style[..., :, :6] = 0  # the left half: zero-norm patches
    content = _features((1, 8, 11, 10), dtype)
    content[..., 3:7, 2:8] = 0  # zero content patches: every score is 0, ties to index 0
    out, idx = fastnst.style_swap(content, style, 3, 1, return_indices=True, backend=backend)
    assert torch.isfinite(out).all()
    ref_out, ref_idx = reference.style_swap(content.double(), style.double(), 3, 1)
    assert torch.isfinite(ref_out).all()
    assert idx[0, 3, 3].item() == 0  # an all-zero content patch
    if dtype == torch.float64:
        assert torch.equal(idx, ref_idx)
    # A style that is zero everywhere: all scores 0, every index 0, output zero.
    zero = torch.zeros_like(style)
    out, idx = fastnst.style_swap(content, zero, 3, 1, return_indices=True, backend=backend)
    assert (idx == 0).all() and (out == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncovered_pixels_are_zero(backend):
    content, style = _features((1, 4, 10, 11)), _features((1, 4, 9, 9))
    # k = 3, s = 2: patch rows at 0, 2, 4, 6 cover rows 0..8; row 9 is uncovered.
    out = fastnst.style_swap(content, style, 3, 2, backend=backend)
    assert (out[..., 9, :] == 0).all() and (out[..., :9, :] != 0).any()
    # k = 1, s = 2: only even rows and columns are covered.
    out = fastnst.style_swap(content, style, 1, 2, backend=backend)
    mask = torch.zeros(10, 11, dtype=torch.bool)
    mask[::2, ::2] = True
    assert (out[..., ~mask] == 0).all()
    # Stride 1: every pixel is the mean of the covering patches, none is left at 0 by geometry.
    out = fastnst.style_swap(content + 1, style + 1, 3, 1, backend=backend)
    assert (out > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_when_content_is_the_style(backend):
    # Style patches matched against themselves (distinct, non-negative): each patch picks
    # itself, and the overlap average reproduces the map exactly.
    style = _features((1, 8, 11, 13)) + 0.1
    out, idx = fastnst.style_swap(style, style, 3, 1, return_indices=True, backend=backend)
    assert torch.equal(idx.flatten(), torch.arange(idx.numel()))
    torch.testing.assert_close(out, style, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reuse_indices(backend):
    content, style = _features((2, 8, 12, 11)), _features((1, 8, 10, 9))
    out, idx = fastnst.style_swap(content, style, 3, 1, return_indices=True, backend=backend)
    again = fastnst.style_swap_reconstruct(style, idx, (12, 11), 3, 1, backend=backend)
    assert torch.equal(again, out)
    # New style values, same geometry: the match is reused, the patches are the new ones.
    style2 = _features((1, 8, 10, 9))
    torch.testing.assert_close(fastnst.style_swap_reconstruct(style2, idx, (12, 11), 3, 1, backend=backend),
                               reference.style_swap_paste(style2, idx, 3, 1, 12, 11), rtol=1e-12, atol=1e-12)


def test_module():
    content, style = _features((1, 8, 12, 11)), _features((1, 8, 10, 9))
    m = fastnst.nn.StyleSwap(patch_size=3, stride=1)
    assert "patch_size=3" in repr(m) and not list(m.parameters())
    torch.testing.assert_close(m(content, style), reference.style_swap(content, style)[0], rtol=1e-12, atol=1e-12)
    out, idx = fastnst.nn.StyleSwap(return_indices=True)(content, style)
    assert idx.shape == (1, 10, 9)


def test_not_differentiable_output_is_a_target():
    content = _features((1, 4, 8, 8)).requires_grad_()
    style = _features((1, 4, 8, 8)).requires_grad_()
    out = fastnst.style_swap(content, style)
    assert not out.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile(backend):
    content, style = _features((1, 8, 12, 11), torch.float32), _features((1, 8, 10, 9), torch.float32)

    def f(c, s):
        return fastnst.style_swap(c, s, 3, 1, return_indices=True, backend=backend)

    out, idx = torch.compile(f, fullgraph=True)(content, style)
    eout, eidx = f(content, style)
    assert torch.equal(idx, eidx)
    torch.testing.assert_close(out, eout)


def test_bounded_memory():
    """No score matrix: what the CPU kernel allocates is far below n_content x n_style."""
    if "cpu" not in BACKENDS:
        pytest.skip("no CPU kernel")
    from fastnst.bench import peak_memory_mb

    content, style = _features((1, 64, 64, 64), torch.float32), _features((1, 64, 64, 64), torch.float32)
    scores_mb = (62 * 62) ** 2 * 4 / 2**20  # 56 MB
    ours = peak_memory_mb(lambda: fastnst.style_swap(content, style, backend="cpu"), torch.device("cpu"))
    features_mb = content.numel() * 4 / 2**20  # 1 MB
    assert ours < 6 * features_mb < scores_mb / 8, ours


# ---- bad input --------------------------------------------------------------------------------
def _msg(fn, exc=(ValueError, TypeError)):
    with pytest.raises(exc) as e:
        fn()
    return str(e.value)


def test_bad_input_messages():
    c, s = torch.rand(2, 8, 10, 10), torch.rand(1, 8, 9, 9)
    f = fastnst.style_swap
    assert _msg(lambda: f(c, torch.rand(1, 7, 9, 9))) == \
        "style_swap: style must have the content's 8 channels, got [1, 7, 9, 9]"
    assert _msg(lambda: f(c, torch.rand(3, 8, 9, 9))) == \
        "style_swap: style must have batch 1 or the content's 2, got [3, 8, 9, 9]"
    assert _msg(lambda: f(c, torch.rand(1, 8, 2, 9))) == \
        "style_swap: patch_size 3 is larger than the style map 2x9 (style is [1, 8, 2, 9])"
    assert _msg(lambda: f(c, s, patch_size=11)) == \
        "style_swap: patch_size 11 is larger than the style map 9x9 (style is [1, 8, 9, 9])"
    assert _msg(lambda: f(c, s, stride=0)) == "style_swap: stride must be >= 1, got 0"
    assert _msg(lambda: f(c, s, patch_size=0)) == "style_swap: patch_size must be >= 1, got 0"
    assert _msg(lambda: f(c, s, stride=1.5)) == "style_swap: stride must be an int >= 1, got 1.5"
    assert _msg(lambda: f(c, s.double())) == \
        "style_swap: style must have the content's dtype torch.float32, got torch.float64"
    assert _msg(lambda: f(c, s.to("meta"))) == \
        "style_swap: content and style must be on the same device, got cpu and meta"
    assert _msg(lambda: f(c[0], s)) == "style_swap: content must be [B, C, H, W], got [8, 10, 10]"
    assert _msg(lambda: f(c, s, eps=-1.0)) == "style_swap: eps must be a finite number >= 0, got -1.0"
    assert _msg(lambda: f(c, s, eps=float("inf"))) == "style_swap: eps must be a finite number >= 0, got inf"
    assert _msg(lambda: f(c.long(), s.long())).startswith("style_swap: content must be float32")
    idx = torch.zeros(2, 8, 8, dtype=torch.int64)
    r = fastnst.style_swap_reconstruct
    assert _msg(lambda: r(s, idx.int(), (10, 10))) == \
        "style_swap: indices must be an int64 tensor [B, nh, nw], got torch.int32 [2, 8, 8]"
    assert _msg(lambda: r(s, idx, (11, 10))) == \
        ("style_swap: indices must be [B, 9, 8] for out_size 11x10, patch_size 3, stride 1 "
         "(style batch 1 or B), got [2, 8, 8] with style [1, 8, 9, 9]")
    assert _msg(lambda: r(s, idx + 49, (10, 10))) == \
        "style_swap: indices must lie in [0, 49) (the style's patches), got values in [49, 49]"


def test_cpu_kernel_checks_its_input():
    """The registered C++ op refuses bad input itself (callers may bypass the Python layer)."""
    if "cpu" not in BACKENDS:
        pytest.skip("no CPU kernel")
    c, s = torch.rand(1, 8, 10, 10), torch.rand(1, 4, 9, 9)
    with pytest.raises(RuntimeError, match="content and style must have the same channels, got 8 and 4"):
        torch.ops.fastnst.style_swap_match(c, s, 3, 1, 1e-8)
    with pytest.raises(RuntimeError, match="indices must lie in \\[0, 49\\)"):
        torch.ops.fastnst.style_swap_reconstruct(torch.rand(1, 8, 9, 9),
                                                 torch.full((1, 8, 8), 60, dtype=torch.int64), 3, 1, 10, 10)


def test_backend_named_but_unable_raises():
    c, s = torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8)
    with pytest.raises(fastnst.BackendError) as e:
        fastnst.style_swap(c, s, backend="cuda")
    assert str(e.value) == ("style_swap: backend 'cuda' cannot serve this input: the cuda "
                            "backend runs CUDA tensors, got a tensor on cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_patch_with_eps_zero(backend, dtype):
    """An all-zero style patch scores 0 even with eps = 0 (not 0 * inf = NaN), on every backend."""
    style = torch.tensor([[[[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]], dtype=dtype)  # patches 0, e1, e2
    content = torch.tensor([[[[-1.0]], [[-1.0]]]], dtype=dtype)  # scores: 0, -1, -1
    _, idx = fastnst.style_swap(content, style, 1, 1, return_indices=True, eps=0.0, backend=backend)
    assert idx.item() == 0
    assert reference.style_swap(content, style, 1, 1, eps=0.0)[1].item() == 0
    style2 = style[..., [1, 0, 2]]  # the zero patch second: still the best
    _, idx = fastnst.style_swap(content, style2, 1, 1, return_indices=True, eps=0.0, backend=backend)
    assert idx.item() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_patches(backend):
    """Patches as large as the map and larger than the CPU's pixel blocks."""
    if backend in SMALL:
        cases = [((1, 2, 12, 12), (1, 2, 13, 12), 11, 1)]
    else:
        cases = [((1, 3, 40, 38), (1, 3, 36, 41), 25, 1), ((1, 2, 30, 30), (1, 2, 30, 30), 30, 1),
                 ((1, 3, 41, 40), (1, 3, 38, 39), 24, 2)]
    for cshape, sshape, k, s in cases:
        content, style = _features(cshape), _features(sshape)
        out, idx = fastnst.style_swap(content, style, k, s, return_indices=True, backend=backend)
        ref_out, ref_idx = reference.style_swap(content, style, k, s)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_channel_and_ties_across_style_blocks(backend):
    # C = 1 and a style wide enough for several CPU blocks, made of one repeated 5 x 5 tile.
    tile = _features((1, 1, 5, 5)) + 0.5
    style = tile.repeat(1, 1, 4 if backend in SMALL else 12, 4 if backend in SMALL else 16)
    content = _features((1, 1, 9, 10)) + 0.5
    _, idx = fastnst.style_swap(content, style, 3, 1, return_indices=True, backend=backend)
    scores = _scores(content, style, 3, 1)
    best = scores.amax(1, keepdim=True)
    q = torch.arange(scores.shape[1]).view(1, -1, 1, 1).expand_as(scores)
    lowest = torch.where(scores >= best - 1e-9 * best.abs(), q, scores.shape[1]).amin(1)
    assert torch.equal(idx, lowest)
    mw = style.shape[3] - 2
    assert ((idx // mw < 5) & (idx % mw < 5)).all()  # inside the first tile


def test_gpu_kernels_poison_bad_indices_with_nan():
    """The Triton reconstruction cannot check indices without a device sync: an index outside
    the style's patches is never read and its pixels come out NaN."""
    if "triton" not in BACKENDS:
        pytest.skip("no Triton")
    style = torch.rand(1, 2, 4, 4)
    idx = torch.zeros(1, 2, 2, dtype=torch.int64)
    idx[0, 1, 1] = 4  # 4 style patches: 0..3
    out = torch.ops.fastnst.style_swap_reconstruct_triton(style, idx, 3, 1, 4, 4)
    assert torch.isnan(out[..., 3, 3]).all() and torch.isfinite(out[..., 0, 0]).all()


# ---- issue 9: fuzz-run hardening ----------------------------------------------------------------
def _position_dependent_matmul(a, b, dtype=None, **kwargs):
    """np.matmul that rounds a column differently by its position (column j sums the K products
    cyclically from k = j mod K), as some BLAS kernels do (OpenBLAS' Haswell sgemm on a Zen 5)."""
    import numpy as np

    assert a.ndim == 2 and b.ndim == 2 and not kwargs
    prod = (a[:, :, None] * b[None, :, :]).astype(dtype or np.result_type(a, b))
    kk, n = prod.shape[1], prod.shape[2]
    out = np.zeros((a.shape[0], n), dtype=prod.dtype)
    cols = np.arange(n)
    for k in range(kk):
        out += prod[:, (cols + k) % kk, cols]
    return out


def test_triton_ties_do_not_depend_on_the_blas(monkeypatch):
    """Under the interpreter, duplicated style patches score bit-equal whatever BLAS NumPy's
    matmul uses: the lowest index still wins with a matmul whose rounding depends on the column."""
    if "triton" not in BACKENDS or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton under the interpreter only")
    import numpy as np

    monkeypatch.setattr(np, "matmul", _position_dependent_matmul)
    tile = _features((1, 6, 4, 4))
    style = tile.repeat(1, 1, 3, 3)
    content = _features((1, 6, 10, 9))
    for k, s in ((3, 1), (1, 1)):
        scores = _scores(content, style, k, s)
        best = scores.amax(1, keepdim=True)
        q = torch.arange(scores.shape[1]).view(1, -1, 1, 1).expand_as(scores)
        lowest = torch.where(scores >= best - 1e-9 * best.abs(), q, scores.shape[1]).amin(1)
        for dtype in (torch.float32, torch.float64):
            _, idx = fastnst.style_swap(content.to(dtype), style.to(dtype), k, s, return_indices=True,
                                        backend="triton")
            assert torch.equal(idx, lowest), (k, s, dtype)


def _exact_scores(content, style, k, s, eps):
    """score(p, q) = <p, q> / (||q|| + eps) in 60-digit decimal arithmetic (the float inputs
    convert exactly), [B][n_content][n_style] Decimals, and the content patch norms [B][n_content]."""
    from decimal import Decimal, localcontext

    def patches(x):  # [n, K] float64 lists, numbered row-major over the patch grid
        return reference._style_patches(x.double().unsqueeze(0), k, s).flatten(1).tolist()

    scores, norms = [], []
    with localcontext() as ctx:
        ctx.prec = 60
        for b in range(content.shape[0]):
            cp = [[Decimal(v) for v in p] for p in patches(content[b])]
            sp = [[Decimal(v) for v in p] for p in patches(style[b if style.shape[0] > 1 else 0])]
            inv = []
            for p in sp:
                n = sum(v * v for v in p).sqrt()
                inv.append(1 / (n + Decimal(eps)) if n > 0 else Decimal(0))
            scores.append([[sum(x * y for x, y in zip(c, p)) * w for p, w in zip(sp, inv)] for c in cp])
            norms.append([sum(v * v for v in c).sqrt() for c in cp])
    return scores, norms


def _check_tie_contract(content, style, k, s, eps, idx):
    """The README's contract: (1) the winner is the lowest index among the style patches equal to
    it element by element, (2) its exact score is within (3K + 8) u ||content patch|| of the
    maximum exact score (K = C k^2, u the unit roundoff of the accumulation)."""
    from decimal import Decimal

    u = Decimal(2) ** (-53 if content.dtype == torch.float64 else -24)
    kk = content.shape[1] * k * k
    scores, norms = _exact_scores(content, style, k, s, eps)
    for b in range(content.shape[0]):
        sp = reference._style_patches(style[b if style.shape[0] > 1 else 0].unsqueeze(0), k, s).flatten(1)
        for p, q in enumerate(idx[b].flatten().tolist()):
            dup = (sp == sp[q]).all(1).nonzero()[0, 0].item()
            assert q == dup, f"sample {b} patch {p}: index {q}, but patch {dup} is identical"
            bound = (3 * kk + 8) * u * norms[b][p]
            assert scores[b][p][q] >= max(scores[b][p]) - bound, (b, p, q)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_proportional_patches_may_round_apart(backend, dtype):
    """Issue 9, item 5: with eps = 0, style patches that are positive multiples of each other
    have mathematically equal scores, which round apart by a few ulps (the kernels correlate,
    then scale by 1 / norm; the reference normalises, then correlates), so any of them may win;
    bit-identical patches still go to the lowest index. The contract is _check_tie_contract."""
    c = torch.tensor([[[[1.47]]]], dtype=dtype)
    s = torch.tensor([0.8, 0.56, 1.02, 0.75, 0.89, 0.28, 0.45, 0.68], dtype=dtype).reshape(1, 1, 1, 8)
    _, idx = fastnst.style_swap(c, s, 1, 1, return_indices=True, eps=0.0, backend=backend)
    _check_tie_contract(c, s, 1, 1, 0.0, idx)
    twice = torch.cat([s, s], dim=3)  # every patch duplicated at q + 8: the first copy wins
    _, idx2 = fastnst.style_swap(c, twice, 1, 1, return_indices=True, eps=0.0, backend=backend)
    assert idx2.item() < 8 and idx2.item() == idx.item()
    _check_tie_contract(c, twice, 1, 1, 0.0, idx2)

    # Multi-channel 3 x 3 patches (K = 36, stride 3: disjoint patches), each a positive multiple
    # of one of three base patches, some bit-identical; the content holds multiples of the bases
    # (exact ties between the multiples) and random patches.
    base = _features((3, 4, 3, 3), dtype) + 0.1
    which = [0, 1, 0, 2, 0, 1, 0, 2, 1, 0]
    scale = torch.tensor([1.0, 0.7, 1.3, 2.1, 1.0, 0.7, 0.55, 1.7, 1.3, 0.9], dtype=dtype)
    scale[4], scale[5] = scale[0], scale[1]  # patch 4 = patch 0, patch 5 = patch 1, bit for bit
    style = torch.cat([base[w] * a for w, a in zip(which, scale)], dim=2).unsqueeze(0)  # [1, 4, 3, 30]
    content = torch.cat([base[0] * 3.1, base[1] * 0.4, base[2] * 1.9, _features((4, 3, 3), dtype)],
                        dim=2).unsqueeze(0).repeat(1, 1, 2, 1)  # [1, 4, 6, 12]: 2 x 4 patches
    for eps in (0.0, 1e-8):
        _, idx = fastnst.style_swap(content, style, 3, 3, return_indices=True, eps=eps, backend=backend)
        _check_tie_contract(content, style, 3, 3, eps, idx)


def test_reconstruct_out_size_is_a_pair_of_ints():
    """Issue 9, item 17: out_size is (height, width) as ints; nothing is truncated or parsed."""
    import numpy as np

    style = _features((1, 4, 8, 8))
    idx = torch.zeros(2, 7, 6, dtype=torch.int64)
    expect = fastnst.style_swap_reconstruct(style, idx, (9, 8))
    assert expect.shape == (2, 4, 9, 8)
    for size in ([9, 8], torch.Size([9, 8]), (np.int64(9), np.int32(8)), np.array([9, 8]),
                 torch.tensor([9, 8]), torch.rand(2, 3, 9, 8).shape[-2:]):
        assert torch.equal(fastnst.style_swap_reconstruct(style, idx, size), expect), size
    for size in ((8.9, 8.9), (9.0, 8), "98", b"98", (9,), (9, 8, 1), (True, 8), (9, np.float64(8.0)),
                 (torch.tensor(True), 8), (9, torch.tensor(8.0)), 9, None):
        assert _msg(lambda: fastnst.style_swap_reconstruct(style, idx, size), TypeError) == \
            f"style_swap: out_size must be a pair of ints (height, width), got {size!r}"


def test_meta_tensors():
    """Issue 9, item 17: shapes only on meta tensors, for both functions (no .item() on meta)."""
    content, style = torch.empty(2, 4, 9, 8, device="meta"), torch.empty(1, 4, 8, 8, device="meta")
    out, idx = fastnst.style_swap(content, style, 3, 1, return_indices=True)
    assert out.device.type == "meta" and out.shape == (2, 4, 9, 8)
    assert idx.device.type == "meta" and idx.shape == (2, 7, 6) and idx.dtype == torch.int64
    again = fastnst.style_swap_reconstruct(style, idx, (9, 8), 3, 1)
    assert again.device.type == "meta" and again.shape == (2, 4, 9, 8) and again.dtype == style.dtype
    # Shape checks stay.
    assert _msg(lambda: fastnst.style_swap_reconstruct(style, idx, (10, 8), 3, 1)).startswith(
        "style_swap: indices must be [B, 8, 6] for out_size 10x8")


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_empty_batch(backend):
    """Issue 9, item 17: an empty batch gives an empty batch on every backend, in both functions."""
    style = _features((1, 4, 8, 8))
    out, idx = fastnst.style_swap(torch.empty(0, 4, 9, 8, dtype=torch.float64), style, 3, 2,
                                  return_indices=True, backend=backend)
    assert out.shape == (0, 4, 9, 8) and out.dtype == torch.float64 and out.is_contiguous()
    assert idx.shape == (0, 4, 3) and idx.dtype == torch.int64
    rec = fastnst.style_swap_reconstruct(style, idx, (9, 8), 3, 2, backend=backend)
    assert rec.shape == (0, 4, 9, 8) and rec.dtype == torch.float64
    # Only the batch may be empty, and the geometry is still checked.
    assert _msg(lambda: fastnst.style_swap(torch.empty(0, 0, 9, 8, dtype=torch.float64), style,
                                           backend=backend)) == \
        "style_swap: content must be non-empty, got [0, 0, 9, 8]"
    assert _msg(lambda: fastnst.style_swap(torch.empty(0, 4, 2, 8, dtype=torch.float64), style,
                                           backend=backend)) == \
        "style_swap: patch_size 3 is larger than the content map 2x8 (content is [0, 4, 2, 8])"
    assert _msg(lambda: fastnst.style_swap_reconstruct(style, torch.zeros(0, 7, 7, dtype=torch.int64),
                                                       (9, 8), backend=backend)).startswith(
        "style_swap: indices must be [B, 7, 6] for out_size 9x8")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_refuse_mixed_meta_and_real_devices(backend):
    """Issue 9, item 19: a direct op call mixing a meta tensor with a CPU tensor reaches the fake
    kernel, which must refuse it (not return an uninitialised tensor), in either order."""
    t = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastnst
    match, rec = getattr(ops, "style_swap_match" + t), getattr(ops, "style_swap_reconstruct" + t)
    content, style = torch.rand(2, 4, 9, 8), torch.rand(1, 4, 8, 8)
    idx = torch.zeros(2, 7, 6, dtype=torch.int64)
    for a, b in ((content.to("meta"), style), (content, style.to("meta"))):
        with pytest.raises(ValueError) as e:
            match(a, b, 3, 1, 1e-8)
        assert str(e.value) == (f"fastnst::style_swap_match{t}: content and style must be on the "
                                f"same device, got {a.device} and {b.device}")
    for a, b in ((style.to("meta"), idx), (style, idx.to("meta"))):
        with pytest.raises(ValueError) as e:
            rec(a, b, 3, 1, 9, 8)
        assert str(e.value) == (f"fastnst::style_swap_reconstruct{t}: style and indices must be on "
                                f"the same device, got {a.device} and {b.device}")
    # All meta: shapes.
    assert match(content.to("meta"), style.to("meta"), 3, 1, 1e-8).shape == (2, 7, 6)
    assert rec(style.to("meta"), idx.to("meta"), 3, 1, 9, 8).shape == (2, 4, 9, 8)
