"""Differential fuzzing of every public op against float64 plain-formula oracles (hypothesis).

Each example draws an op, a backend, a dtype, a shape, a memory layout (contiguous,
channels_last, strided, expanded, storage offset), a value range (normal around an offset,
zeros, constants, ~1e±30, injected NaN/Inf), an upstream gradient layout (dense, stride 0,
channels_last) and a thread count, runs the op, and checks against float64 oracles written
here from the formulas (not fastnst.reference):

* no crash, and no NaN/Inf wherever the oracle is finite and fits the dtype;
* agreement within an error bound of the dtype, derived per element from the data
  (unit roundoff × the magnitudes that enter the computation), not a fixed tolerance.

The default profile is small and derandomised (a minute or two in CI). The long profile runs
with ``python -m pytest tests/test_fuzz.py --run-slow`` (or FASTNST_FUZZ_EXAMPLES=N for any count).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastnst  # noqa: E402

from conftest import kernel_backends  # noqa: E402

BACKENDS = kernel_backends("instance_norm")  # cpu, and triton under the interpreter
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided", "expanded", "offset"]
VALUES = ["normal", "offset", "zeros", "constant", "huge", "tiny", "nonfinite"]
GRADS = ["dense", "stride0", "channels_last"]
THREADS = [1, 2, 3, 8]

_N = int(os.environ.get("FASTNST_FUZZ_EXAMPLES", "0"))
FAST = settings(max_examples=_N or 40, derandomize=not _N, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=_N or 1500, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

_U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
# Every op accumulates in fp32 (fp64 for fp64): the error of the arithmetic, per unit magnitude.
_ACC = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -24}
C_ERR = 64  # slack on the unit-roundoff bounds (blocked sums, a few roundings per element)


# ---- inputs --------------------------------------------------------------------------------------
def _values(gen: torch.Generator, shape, kind: str) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "offset":
        x = 1e3 + x  # a large mean: cancellation in x - mean
    elif kind == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif kind == "constant":  # whole channels constant (dead ReLU channels), others normal
        c = torch.rand(shape[:2], generator=gen, dtype=torch.float64) < 0.5
        x = torch.where(c.view(*shape[:2], *([1] * (len(shape) - 2))), torch.full(shape, 0.37), x)
    elif kind == "huge":
        x = x * 1e30
    elif kind == "tiny":
        x = x * 1e-30
    elif kind == "nonfinite":
        flat = x.view(-1)
        for v in (float("nan"), float("inf"), -float("inf")):
            flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = v
    return x


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x (any dtype) re-laid out with the same values."""
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        out = big[..., ::2]
        out.copy_(x)
        return out
    if layout == "expanded" and x.shape[0] > 1:  # stride 0 over the batch: every sample the same
        return x[:1].expand(x.shape)
    if layout == "offset":
        buf = torch.zeros(x.numel() + 7, dtype=x.dtype)
        out = buf[7:].view(x.shape)
        out.copy_(x)
        return out
    return x


def _grad_like(gen, y_shape, kind: str, dtype) -> torch.Tensor:
    if kind == "stride0":  # y.sum() or y.mean() upstream
        return torch.full((1,) * len(y_shape), 0.5, dtype=dtype).expand(y_shape)
    g = torch.randn(y_shape, generator=gen, dtype=torch.float64).to(dtype)
    if kind == "channels_last" and len(y_shape) == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    return g


class Case:
    def __init__(self, data, op: str, *, min_l: int = 1, max_hw: int = 7):
        self.op = op
        self.backend = data.draw(st.sampled_from(BACKENDS), label="backend")
        self.dtype = data.draw(st.sampled_from(DTYPES if self.backend == "cpu" else DTYPES[:1] + DTYPES[2:]),
                               label="dtype")
        if self.backend == "triton" and self.dtype == torch.float64:
            self.dtype = torch.float32
        b = data.draw(st.integers(1, 3), label="B")
        c = data.draw(st.integers(1, 9), label="C")
        h = data.draw(st.integers(1, max_hw), label="H")
        w = data.draw(st.integers(max(1, min_l - h + 1) if h < min_l else 1, max_hw), label="W")
        if h * w < min_l:
            w = min_l
        self.shape = (b, c, h, w)
        self.layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
        self.values = data.draw(st.sampled_from(VALUES), label="values")
        self.grad = data.draw(st.sampled_from(GRADS), label="grad")
        self.threads = data.draw(st.sampled_from(THREADS), label="threads")
        self.seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
        self.gen = torch.Generator().manual_seed(self.seed)

    def tensor(self, shape=None, values=None) -> torch.Tensor:
        x = _values(self.gen, shape or self.shape, values or self.values).to(self.dtype)
        return _layout(x, self.layout)

    def __repr__(self):
        return (f"{self.op} backend={self.backend} dtype={self.dtype} shape={self.shape} layout={self.layout} "
                f"values={self.values} grad={self.grad} threads={self.threads} seed={self.seed}")


def _run(case: Case, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _check(case: Case, name: str, got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> None:
    """got (any dtype) against the float64 oracle want, elementwise |got - want| <= bound where
    the oracle is finite and representable in got's dtype."""
    assert got.shape == want.shape, (case, name, got.shape, want.shape)
    g = got.detach().double()
    fmax = torch.finfo(got.dtype).max
    ok = torch.isfinite(want) & (want.abs() < fmax / 2) & torch.isfinite(bound) & (bound < fmax / 2)
    if not ok.any():
        return
    bad_nan = ok & ~torch.isfinite(g)
    assert not bad_nan.any(), f"{case}: {name} is NaN/Inf where the oracle is finite " \
                              f"({int(bad_nan.sum())} of {g.numel()})"
    err = (g - want).abs()
    # Results below the smallest normal number may flush or lose relative precision.
    bound = bound + 4 * torch.finfo(got.dtype).tiny
    over = ok & (err > bound)
    if over.any():
        i = int(over.flatten().nonzero()[0])
        raise AssertionError(f"{case}: {name} differs at flat index {i}: got {g.flatten()[i].item()!r}, "
                             f"want {want.flatten()[i].item()!r}, bound {bound.flatten()[i].item():.3g} "
                             f"({int(over.sum())} of {g.numel()} over)")


def _out_round(dtype) -> float:
    return _U[dtype]


# ---- oracles (float64, from the formulas) ----------------------------------------------------
def _moments(x64: torch.Tensor):
    f = x64.flatten(2)
    mean = f.mean(2)
    var = ((f - mean[..., None]) ** 2).mean(2)  # biased
    return f, mean, var


def _rstd(var, eps):
    v = var + eps
    return torch.where(v == 0, torch.zeros_like(v), 1 / torch.where(v == 0, torch.ones_like(v), v).sqrt())


# ---- gram ------------------------------------------------------------------------------------
def _gram_case(case: Case):
    x = case.tensor()
    normalize = "chw"
    b, c = x.shape[:2]
    l = x[0, 0].numel()
    div = float(c * l)
    x.requires_grad_(True)
    y = _run(case, lambda: fastnst.gram_matrix(x, normalize=normalize, backend=case.backend))
    f = x.detach().double().flatten(2)
    want = f @ f.transpose(1, 2) / div
    absprod = f.abs() @ f.abs().transpose(1, 2) / div
    acc, out = _ACC[case.dtype], _out_round(case.dtype)
    _check(case, "G", y, want, C_ERR * max(l, 1) * acc * absprod + out * want.abs() + 1e-300)
    g = _grad_like(case.gen, y.shape, case.grad, case.dtype)
    dx, = _run(case, lambda: torch.autograd.grad(y, x, g))
    g64 = g.double()
    want_dx = ((g64 + g64.transpose(1, 2)) @ f / div).view(x.shape)
    bound = (C_ERR * max(c, 1) * acc * ((g64.abs() + g64.abs().transpose(1, 2)) @ f.abs() / div)).view(x.shape)
    bound = bound + out * want_dx.abs() + C_ERR * out * (g64.abs().amax() * f.abs().amax() * c / div)
    _check(case, "dx", dx, want_dx, bound + 1e-300)


# ---- mean_std ---------------------------------------------------------------------------------
def _mean_std_case(case: Case, unbiased: bool, eps: float):
    x = case.tensor()
    l = x[0, 0].numel()
    if unbiased and l < 2:
        with pytest.raises(ValueError, match="unbiased variance needs at least 2"):
            fastnst.mean_std(x, eps, unbiased, backend=case.backend)
        return
    x.requires_grad_(True)
    mean, std = _run(case, lambda: fastnst.mean_std(x, eps, unbiased, backend=case.backend))
    f, m64, var = _moments(x.detach().double())
    n = l - 1 if unbiased else l
    var_n = var * l / n
    std64 = (var_n + eps).sqrt()
    acc, out = _ACC[case.dtype], _out_round(case.dtype)
    scale = f.abs().amax(2)
    _check(case, "mean", mean.flatten(1), m64, C_ERR * acc * scale + out * m64.abs())
    # std: the error of var is ~acc * scale^2, so the error of sqrt(var + eps) is at most
    # that / (2 std) and at most sqrt(that).
    dv = C_ERR * acc * scale ** 2
    _check(case, "std", std.flatten(1), std64,
           torch.minimum(dv / (2 * std64).clamp_min(1e-300), dv.sqrt()) + out * std64)
    gm = _grad_like(case.gen, mean.shape, case.grad, case.dtype)
    gs = _grad_like(case.gen, std.shape, case.grad, case.dtype)
    dx, = _run(case, lambda: torch.autograd.grad((mean, std), x, (gm, gs)))
    gm64, gs64 = gm.double().flatten(1), gs.double().flatten(1)
    q = torch.where(gs64 == 0, torch.zeros_like(gs64), gs64 / (std64 * n))
    dev = f - m64[..., None]
    want = (gm64[..., None] / l + torch.where(q[..., None] == 0, torch.zeros_like(dev), q[..., None] * dev))
    bound = C_ERR * acc * (gm64.abs()[..., None] / l + q.abs()[..., None] * scale[..., None] * 4)
    # q itself carries the error of std (relative dstd / std).
    rel_std = torch.minimum(dv / (2 * std64 ** 2).clamp_min(1e-300), torch.ones_like(std64))
    # The backward reads the statistics as returned, rounded to x's dtype.
    rel_std = rel_std + out
    bound = bound + (q.abs() * rel_std)[..., None] * dev.abs() * 2 + out * want.abs()
    bound = bound + 2 * out * q.abs()[..., None] * m64.abs()[..., None]
    _check(case, "dx", dx.flatten(2), want, bound + 1e-300)


# ---- instance_norm ---------------------------------------------------------------------------
def _instance_norm_case(case: Case, eps: float, affine: str, relu: bool):
    x = case.tensor()
    b, c = x.shape[:2]
    l = x[0, 0].numel()
    wshape = {"none": None, "channel": (c,), "sample": (b, c)}[affine]
    w = bias = None
    if wshape is not None:
        w = (torch.rand(wshape, generator=case.gen, dtype=torch.float64) * 2 - 0.5).to(case.dtype)
        bias = torch.randn(wshape, generator=case.gen, dtype=torch.float64).to(case.dtype)
        w.requires_grad_(True)
        bias.requires_grad_(True)
    act = "relu" if relu else None
    if l < 2:
        with pytest.raises(ValueError, match="more than 1 spatial element"):
            fastnst.instance_norm(x, w, bias, eps, act, backend=case.backend)
        return
    x.requires_grad_(True)
    y = _run(case, lambda: fastnst.instance_norm(x, w, bias, eps, act, backend=case.backend))
    f, m64, var = _moments(x.detach().double())
    rstd = _rstd(var, eps)
    w64 = torch.ones(b, c, dtype=torch.float64) if w is None else w.detach().double().expand(b, c)
    b64 = torch.zeros(b, c, dtype=torch.float64) if bias is None else bias.detach().double().expand(b, c)
    xhat = (f - m64[..., None]) * rstd[..., None]
    z = w64[..., None] * xhat + b64[..., None]
    want = z.clamp_min(0) if relu else z
    acc, out = _ACC[case.dtype], _out_round(case.dtype)
    scale = f.abs().amax(2, keepdim=True)
    # Error of xhat: the mean's and the deviations' rounding (acc * scale) times rstd, plus
    # the relative error of rstd (acc * scale^2 / var) times |xhat|.
    rel_r = torch.where(var > 0, C_ERR * acc * scale[..., 0] ** 2 / (var + eps).clamp_min(1e-300),
                        torch.zeros_like(var)).clamp_max(1.0)[..., None]
    e_xhat = C_ERR * acc * scale * rstd[..., None] + rel_r * xhat.abs()
    bound = w64.abs()[..., None] * e_xhat + C_ERR * acc * (b64.abs()[..., None] + z.abs()) + out * want.abs()
    # Values at the ReLU's kink may land on either side within the bound.
    _check(case, "y", y.flatten(2), want, bound + 1e-300)
    gy = _grad_like(case.gen, y.shape, case.grad, case.dtype)
    inputs = (x,) if w is None else (x, w, bias)
    grads = _run(case, lambda: torch.autograd.grad(y, inputs, gy))
    # Oracle gradients by float64 autograd of the formulas (on the rounded inputs).
    x64 = x.detach().double().requires_grad_(True)
    ins64 = [x64]
    wt = bt = None
    if w is not None:
        wt = w.detach().double().requires_grad_(True)
        bt = bias.detach().double().requires_grad_(True)
        ins64 += [wt, bt]
    ff = x64.flatten(2)
    mm = ff.mean(2, keepdim=True)
    vv = ((ff - mm) ** 2).mean(2, keepdim=True)
    zz = (ff - mm) * _rstd(vv, eps)
    if wt is not None:
        zz = zz * wt.reshape(-1, c, 1) + bt.reshape(-1, c, 1)
    yy = (zz.clamp_min(0) if relu else zz).view(x.shape)
    want_g = torch.autograd.grad(yy, ins64, gy.double())
    # Inputs near the kink can flip the ReLU mask: exclude positions where |z| is within the
    # forward's bound (their gradient is legitimately either side).
    kink = (z.abs() <= bound * 4) if relu else torch.zeros_like(z, dtype=torch.bool)
    g64 = gy.double().flatten(2)
    gmax = g64.abs().amax(2, keepdim=True)
    e_dx = C_ERR * acc * (w64.abs()[..., None] * rstd[..., None] * gmax * (1 + xhat.abs()) ** 2)
    e_dx = e_dx + rel_r * 4 * (want_g[0].flatten(2).abs() + w64.abs()[..., None] * rstd[..., None] * gmax)
    if relu and kink.any():  # a flipped mask moves the row's sums: bound that row loosely
        rows = kink.any(2, keepdim=True)
        e_dx = torch.where(rows, e_dx + 4 * w64.abs()[..., None] * rstd[..., None] * gmax * (1 + xhat.abs()), e_dx)
    _check(case, "dx", grads[0].flatten(2), want_g[0].flatten(2), e_dx + out * want_g[0].flatten(2).abs() + 1e-300)
    if w is not None and not (relu and kink.any()):
        gsum = (g64.abs() * (1 + xhat.abs())).sum(2)
        e_w = C_ERR * acc * l * gsum + (rel_r[..., 0] * (g64.abs() * xhat.abs()).sum(2))
        for k, name in ((1, "dweight"), (2, "dbias")):
            want_k = want_g[k]
            bound_k = (e_w.sum(0) if want_k.dim() == 1 else e_w) + out * want_k.abs() * 4
            _check(case, name, grads[k], want_k, bound_k + 1e-300)


# ---- adain -------------------------------------------------------------------------------------
def _adain_case(case: Case, alpha: float, unbiased: bool):
    content = case.tensor()
    b, c = content.shape[:2]
    sh = (data_b := 1 if case.seed % 2 else b, c) + tuple(max(2, s) for s in content.shape[2:])
    style = _layout(_values(case.gen, sh, "normal" if case.values in ("zeros", "constant") else case.values)
                    .to(case.dtype), "contiguous")
    del data_b
    lc = content[0, 0].numel()
    if unbiased and lc < 2:
        with pytest.raises(ValueError, match="unbiased variance needs at least 2"):
            fastnst.adain(content, style, alpha, unbiased=unbiased, backend=case.backend)
        return
    t = _run(case, lambda: fastnst.adain(content, style, alpha, unbiased=unbiased, backend=case.backend))
    eps = 1e-5
    f, mc, varc = _moments(content.detach().double())
    fs, ms, vars_ = _moments(style.detach().double())
    ls = fs.shape[2]
    nc, ns = (lc - 1, ls - 1) if unbiased else (lc, ls)
    rc = _rstd(varc * lc / nc, eps)
    sd_s = (vars_ * ls / ns + eps).sqrt().expand(b, c)
    ms = ms.expand(b, c)
    xhat = (f - mc[..., None]) * rc[..., None]
    want = alpha * (sd_s[..., None] * xhat + ms[..., None]) + (1 - alpha) * f
    acc, out = _ACC[case.dtype], _out_round(case.dtype)
    scale_c = f.abs().amax(2, keepdim=True)
    scale_s = fs.abs().amax(2).expand(b, c)[..., None]
    var_c = varc * lc / nc
    rel_r = torch.where(var_c > 0, C_ERR * acc * scale_c[..., 0] ** 2 / (var_c + eps).clamp_min(1e-300),
                        torch.zeros_like(var_c)).clamp_max(1.0)[..., None]
    e = alpha * (sd_s[..., None] * (C_ERR * acc * scale_c * rc[..., None] + rel_r * xhat.abs())
                 + C_ERR * acc * scale_s * (1 + xhat.abs()))
    # The style statistics pass through mean_std's outputs, rounded to the dtype.
    e = e + 2 * alpha * out * (sd_s[..., None] * xhat.abs() + ms.abs()[..., None])
    e = e + C_ERR * acc * (want.abs() + scale_c) + out * want.abs()
    _check(case, "adain", t.flatten(2), want, e + 1e-300)


# ---- style_swap --------------------------------------------------------------------------------
def _style_swap_case(case: Case, k: int, stride: int):
    content = case.tensor()
    b, c, h, w = content.shape
    sh = (1 if case.seed % 2 else b, c, case.shape[2] + 1, case.shape[3] + 2)
    style = _values(case.gen, sh, "normal" if case.values == "constant" else case.values).to(case.dtype)
    if k > min(h, w, sh[2], sh[3]):
        with pytest.raises(ValueError, match="larger than"):
            fastnst.style_swap(content, style, k, stride, backend=case.backend)
        return
    out, idx = _run(case, lambda: fastnst.style_swap(content, style, k, stride, return_indices=True,
                                                     backend=case.backend))
    nh, nw = (h - k) // stride + 1, (w - k) // stride + 1
    assert idx.shape == (b, nh, nw) and idx.dtype == torch.int64
    s64 = style.double()
    patches = s64.unfold(2, k, stride).unfold(3, k, stride)  # [Bs, C, mh, mw, k, k]
    mh, mw = patches.shape[2], patches.shape[3]
    pf = patches.permute(0, 2, 3, 1, 4, 5).reshape(sh[0], mh * mw, -1)  # [Bs, n, C k k]
    assert ((idx >= 0) & (idx < mh * mw)).all(), case
    cp = content.double().unfold(2, k, stride).unfold(3, k, stride).permute(0, 2, 3, 1, 4, 5)
    cp = cp.reshape(b, nh * nw, -1)
    norm = pf.norm(dim=2)
    finite = torch.isfinite(cp).all(2)
    acc = _ACC[case.dtype]
    # Scores are accumulated in fp32 (fp64 for fp64): products and squared norms must fit
    # (|values| below ~1e19 in fp32, as the README states); beyond that only "no crash,
    # indices in range" is promised.
    fmax = torch.finfo(torch.float64 if case.dtype == torch.float64 else torch.float32).max
    def _peak(t):
        t = t[torch.isfinite(t)].abs()
        return float(t.max()) if t.numel() else 0.0

    fits = _peak(cp) ** 2 < fmax / 1e6 and _peak(s64) ** 2 < fmax / 1e6
    if not fits:
        return
    for i in range(b):
        sp, nr = pf[i if sh[0] > 1 else 0], norm[i if sh[0] > 1 else 0]
        if not torch.isfinite(sp).all():
            continue  # NaN/Inf style patches: only "no crash, indices in range" is promised
        scores = torch.where(nr > 0, (cp[i] @ sp.T) / (nr + 1e-8), torch.zeros_like(cp[i] @ sp.T))
        best = scores.amax(1)
        chosen = scores.gather(1, idx[i].view(-1, 1))[:, 0]
        tol = C_ERR * cp.shape[2] * acc * cp[i].norm(dim=1) + 1e-300
        ok = finite[i]
        assert (chosen[ok] >= best[ok] - tol[ok]).all(), f"{case}: a match is not the best patch"
    # The output is exactly the reconstruction of these indices.
    rec = fastnst.style_swap_reconstruct(style, idx, (h, w), k, stride, backend="reference")
    if torch.isfinite(s64).all():
        torch.testing.assert_close(out.double(), rec.double(), rtol=4 * k * k * _U[case.dtype], atol=1e-30)


# ---- the tests ------------------------------------------------------------------------------------
def _prop_gram(data):
    _gram_case(Case(data, "gram_matrix"))


def _prop_mean_std(data):
    case = Case(data, "mean_std")
    _mean_std_case(case, data.draw(st.booleans(), label="unbiased"), data.draw(st.sampled_from([1e-5, 0.0, 1.0])))


def _prop_instance_norm(data):
    case = Case(data, "instance_norm")
    _instance_norm_case(case, data.draw(st.sampled_from([1e-5, 0.0, 1.0]), label="eps"),
                        data.draw(st.sampled_from(["none", "channel", "sample"]), label="affine"),
                        data.draw(st.booleans(), label="relu"))


def _prop_adain(data):
    case = Case(data, "adain")
    _adain_case(case, data.draw(st.sampled_from([1.0, 0.6, 0.0]), label="alpha"),
                data.draw(st.booleans(), label="unbiased"))


def _prop_style_swap(data):
    case = Case(data, "style_swap")
    _style_swap_case(case, data.draw(st.sampled_from([1, 2, 3]), label="k"),
                     data.draw(st.sampled_from([1, 2]), label="stride"))


PROPS = {"gram_matrix": _prop_gram, "mean_std": _prop_mean_std, "instance_norm": _prop_instance_norm,
         "adain": _prop_adain, "style_swap": _prop_style_swap}


@pytest.mark.parametrize("op", list(PROPS))
@FAST
@given(data=st.data())
def test_fuzz(op, data):
    PROPS[op](data)


@pytest.mark.slow
@pytest.mark.parametrize("op", list(PROPS))
@LONG
@given(data=st.data())
def test_fuzz_long(op, data):
    PROPS[op](data)


def test_fuzz_profiles_are_wired():
    # The fast profile is derandomised (the same examples every CI run) unless a count is set.
    assert FAST.derandomize is (not _N) and FAST.max_examples >= 1
    assert LONG.max_examples > FAST.max_examples or _N
    assert math.isfinite(C_ERR)
