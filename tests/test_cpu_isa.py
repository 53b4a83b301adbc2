"""Per-ISA dispatch of the CPU kernels (csrc/cpu/cpu_features.h): every level this CPU can run,
forced through FASTNST_CPU_ISA in a child process, gives the float64 reference's results; a
level the CPU lacks, or an unknown one, is a clear error from every op; `fastnst info` shows the
path each op takes. Plus the bf16 matrix paths: the Gram on bf16 pairs (vdpbf16ps), its oneDNN
backward, and style swap's exact-argmax contract on bf16 input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import fastnst
from fastnst import _ext, info

pytestmark = pytest.mark.skipif(not _ext.available(), reason="needs the compiled extension")

LEVELS = ["generic", "avx2", "avx512", "avx512bf16", "amx"]
DETECTED = _ext.build_info().get("cpu_isa_detected", "generic")
RUNNABLE = LEVELS[: LEVELS.index(DETECTED) + 1]

# Runs in a child: every CPU op family on small inputs, compared with float64 references there.
CHILD = r"""
import json, sys, torch, fastnst
from fastnst import _ext
torch.manual_seed(0)
out = {"isa": _ext.build_info()["cpu_isa"], "err": {}}
def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max())
for dt in (torch.float32, torch.bfloat16, torch.float16):
    for cl in (False, True):
        x = torch.randn(2, 40, 9, 7).to(dt)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        xg = x.detach().requires_grad_()
        g = fastnst.gram_matrix(xg)
        gG = torch.randn(g.shape)
        g.backward(gG.to(dt))
        xd = x.detach().double().requires_grad_()
        f = xd.flatten(2)
        r = f @ f.transpose(1, 2) / f[0].numel()
        r.backward(gG.to(dt).double())
        key = f"{dt}-{cl}"
        out["err"]["gram-" + key] = rel(g, r.detach())
        out["err"]["gram_bwd-" + key] = rel(xg.grad, xd.grad)
        out["err"]["gram_sym-" + key] = float((g - g.transpose(1, 2)).abs().max())
        xn = x.detach().requires_grad_()
        y = fastnst.instance_norm(xn, activation="relu")
        gy = torch.randn(y.shape).to(dt)
        y.backward(gy)
        xr = x.detach().double().requires_grad_()
        yr = torch.relu(torch.nn.functional.instance_norm(xr))
        yr.backward(gy.double())
        out["err"]["norm-" + key] = rel(y, yr.detach())
        out["err"]["norm_bwd-" + key] = rel(xn.grad, xr.grad)
        m, s_ = fastnst.mean_std(x)
        sd = (x.double().var((2, 3)) + 1e-5).sqrt()
        mr = x.double().mean((2, 3))
        out["err"]["mean_std-" + key] = max(rel(m.flatten(), mr.flatten()), rel(s_.flatten(), sd.flatten()))
    # longer rows: several chunks, L split between threads, odd chunk ends (bf16 pairs)
    for shape in [(1, 64, 4161), (1, 512, 1024), (1, 40, 5001)]:
        x = torch.randn(shape).to(dt)
        g = fastnst.gram_matrix(x)
        f = x.double()
        out["err"][f"gram-long-{dt}-{shape}"] = rel(g, f @ f.transpose(1, 2) / f[0].numel())
        out["err"][f"gram_sym-long-{dt}-{shape}"] = float((g - g.transpose(1, 2)).abs().max())
    c, s = torch.randn(1, 16, 10, 10).to(dt), torch.randn(1, 16, 12, 11).to(dt)
    idx = torch.ops.fastnst.style_swap_match(c, s, 3, 1, 1e-8)
    cp = torch.nn.functional.unfold(c.double(), 3)[0].T
    sp = torch.nn.functional.unfold(s.double(), 3)[0].T
    sc = cp @ sp.T / (sp.norm(dim=1) + 1e-8)
    top = sc.topk(2, dim=1)
    clear = (top.values[:, 0] - top.values[:, 1]) > 1e-4 * sc.abs().amax(1)
    out["err"][f"swap-{dt}"] = int(((idx.flatten() != top.indices[:, 0]) & clear).sum())
    # exact ties (a style made of two copies) go to the lower index: the left copy
    s2 = torch.cat([s, s], dim=3)
    idx = torch.ops.fastnst.style_swap_match(s[..., :8], s2, 3, 1, 1e-8)
    out["err"][f"swap_ties-{dt}"] = int(((idx.flatten() % (2 * 11 - 2)) >= 6).sum())
print(json.dumps(out))
"""


def run_child(code: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    for k in ("FASTNST_CPU_ISA", "FASTNST_AVX512", "FASTNST_AVX512BF16"):
        full.pop(k, None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=full)


@pytest.mark.parametrize("level", LEVELS)
def test_every_runnable_level_matches_the_reference(level):
    if level not in RUNNABLE:
        pytest.skip(f"this CPU runs up to {DETECTED}, not {level}")
    res = run_child(CHILD, FASTNST_CPU_ISA=level)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["isa"] == level
    for key, err in data["err"].items():
        if key.startswith("gram_sym"):
            assert err == 0, key  # G is exactly symmetric on every path
        elif key.startswith("swap"):
            assert err == 0, key  # the argmax where the best two are clearly apart; ties to the lowest
        else:
            # fp32 accumulation on every path; 16-bit results are rounded once (2^-8 for bf16);
            # the norm backward and std of 16-bit inputs compound a few roundings
            tol = 1e-5 if "float32" in key else 3e-2 if "bfloat16" in key else 4e-3
            assert err <= tol, (key, err)


@pytest.mark.parametrize("value, message", [
    ("bogus", "fastnst: FASTNST_CPU_ISA must be one of generic, avx2, avx512, avx512bf16, amx; got 'bogus'"),
    ("amx", "fastnst: FASTNST_CPU_ISA=amx asks for a path this CPU cannot run: it has {have} at most"),
])
def test_bad_isa_is_a_clear_error_from_every_op(value, message):
    if value == "amx" and DETECTED == "amx":
        pytest.skip("this CPU has AMX")
    message = message.format(have=DETECTED)
    code = r"""
import torch, fastnst
x = torch.randn(1, 4, 5, 5)
calls = [lambda: fastnst.gram_matrix(x), lambda: fastnst.instance_norm(x), lambda: fastnst.mean_std(x),
         lambda: torch.ops.fastnst.style_swap_match(x, x, 3, 1, 1e-8)]
for f in calls:
    try:
        f()
        print("NO ERROR")
    except RuntimeError as e:
        print(str(e).splitlines()[0])
"""
    res = run_child(code, FASTNST_CPU_ISA=value)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines() == [message] * 4


def test_legacy_switches_lower_the_level():
    code = "from fastnst import _ext; print(_ext.build_info()['cpu_isa'])"
    if "avx512" in RUNNABLE:
        assert run_child(code, FASTNST_AVX512="0").stdout.strip() == "avx2"
    if "avx512bf16" in RUNNABLE:
        assert run_child(code, FASTNST_AVX512BF16="0").stdout.strip() == "avx512"


def test_info_shows_a_path_per_op_and_dtype():
    data = info.collect()
    paths = {(p["op"], p["dtype"]): p for p in data["cpu_paths"]}
    for op in ("gram", "gram_backward", "mean_std", "instance_norm", "instance_norm_backward",
               "instance_norm_pad", "style_swap_match"):
        for dt in ("float32", "bfloat16", "float16"):
            assert paths[(op, dt)]["path"] and paths[(op, dt)]["why"], (op, dt)
    text = info.render(data)
    assert "CPU paths (ISA level in use: " in text
    if DETECTED in ("avx512bf16", "amx"):
        assert paths[("gram", "bfloat16")]["path"] == ("onednn" if DETECTED == "amx" else "own-bf16-pairs")
        assert paths[("gram_backward", "bfloat16")]["path"] == "onednn"
    # lowered, the table follows
    code = "from fastnst import info; print(info.render(info.collect()))"
    for level, path in (("generic", "aten"), ("avx2", "own-avx2"), ("avx512", "own-fp32")):
        if level in RUNNABLE:
            res = run_child(code, FASTNST_CPU_ISA=level)
            rows = [ln.split()[:3] for ln in res.stdout.splitlines()]
            assert ["gram", "float32", path] in rows and ["gram_backward", "float32", path] in rows, res.stdout


def test_gram_fp32_route_can_be_pinned_to_blas():
    code = r"""
import torch, fastnst
torch.manual_seed(0)
x = torch.randn(2, 24, 6, 6, requires_grad=True)
g = fastnst.gram_matrix(x)
g.backward(torch.randn(g.shape))
f = x.detach().double().flatten(2)
ref = f @ f.transpose(1, 2) / f[0].numel()
print(float((g.double() - ref).abs().max()), float((g - g.transpose(1, 2)).abs().max()))
from fastnst import info
print([p["path"] for p in info.cpu_paths() if p["op"] == "gram" and p["dtype"] == "float32"][0])
"""
    res = run_child(code, FASTNST_GRAM_FP32="blas")
    assert res.returncode == 0, res.stderr[-3000:]
    err, sym, path = res.stdout.split()
    assert float(err) < 1e-5 and float(sym) == 0 and path == "mkl"
    res = run_child("import torch, fastnst; fastnst.gram_matrix(torch.randn(1, 2, 3))", FASTNST_GRAM_FP32="fast")
    assert "FASTNST_GRAM_FP32 must be 'own' or 'blas', got 'fast'" in res.stderr


# ---- bf16 matrix paths, in process --------------------------------------------------------------
def assert_bf16_gram(x: torch.Tensor) -> None:
    """fastnst's bf16 Gram of x: one rounding to bf16 of an fp32-accumulated value (within 2^-8
    of each entry, plus fp32 sums: 1e-5 of the largest), exactly symmetric."""
    g = fastnst.gram_matrix(x)
    f = x.double().flatten(2)
    ref = f @ f.transpose(1, 2) / f[0].numel()
    assert ((g.double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-5 * ref.abs().amax()).all()
    assert torch.equal(g, g.transpose(1, 2))


needs_bf16 = pytest.mark.skipif(DETECTED not in ("avx512bf16", "amx"), reason="needs AVX512-BF16")


@needs_bf16
@pytest.mark.parametrize("shape", [(1, 64, 33, 17), (2, 3, 5, 5), (1, 512, 8, 8), (3, 70, 9, 11), (1, 17, 1, 1),
                                   (1, 16, 31, 1), (1, 48, 40, 40)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_bf16_gram_accumulates_in_fp32(shape, layout):
    torch.manual_seed(0)
    x = torch.randn(shape).bfloat16()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3]).bfloat16()[..., ::2]
    assert_bf16_gram(x)


@needs_bf16
def test_bf16_gram_gradient_through_onednn():
    torch.manual_seed(1)
    for cl in (False, True):
        x = torch.randn(2, 64, 12, 10).bfloat16()
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        xg = x.detach().requires_grad_()
        fastnst.gram_matrix(xg).sum().backward()  # a stride-0 upstream gradient
        assert xg.grad.dtype == torch.bfloat16 and xg.grad.stride()[1:] == x.stride()[1:]
        xd = x.double().requires_grad_()
        f = xd.flatten(2)
        (f @ f.transpose(1, 2) / f[0].numel()).sum().backward()
        assert float((xg.grad.double() - xd.grad).abs().max() / xd.grad.abs().max()) < 1e-2


@needs_bf16
@pytest.mark.parametrize("stride", [1, 2])
def test_bf16_style_swap_keeps_the_exact_argmax(stride):
    torch.manual_seed(2)
    for C, H, W, Hs, Ws in [(64, 20, 20, 24, 30), (3, 9, 9, 8, 11), (33, 12, 13, 14, 12), (256, 12, 12, 16, 16)]:
        c, s = torch.randn(2, C, H, W).bfloat16(), torch.randn(1, C, Hs, Ws).bfloat16()
        idx = torch.ops.fastnst.style_swap_match(c, s, 3, stride, 1e-8)
        sp = torch.nn.functional.unfold(s.double(), 3, stride=stride)[0].T
        for b in range(2):
            cp = torch.nn.functional.unfold(c[b:b + 1].double(), 3, stride=stride)[0].T
            sc = cp @ sp.T / (sp.norm(dim=1) + 1e-8)
            top = sc.topk(2, dim=1)
            # pairs whose best two scores are this far apart are decided by far more than the
            # fp32 rounding of their sums (a filter that keeps > 90 % of them, not a bound)
            clear = (top.values[:, 0] - top.values[:, 1]) > 1e-5 * sc.abs().amax(1)
            got = idx[b].flatten()
            assert clear.float().mean() > 0.9
            assert torch.equal(got[clear], top.indices[clear, 0])


@needs_bf16
def test_bf16_style_swap_ties_take_the_lowest_index():
    torch.manual_seed(3)
    s = torch.randn(1, 32, 8, 8).bfloat16()
    s = torch.cat([s, s], dim=3)  # every patch of the left half reappears in the right half
    c = s[..., :8].clone()
    idx = torch.ops.fastnst.style_swap_match(c, s, 3, 1, 1e-8)
    mw = 16 - 3 + 1
    q = idx.flatten()
    assert ((q % mw) < 6).all()  # the left copy (lower index) wins every exact tie
    ref = torch.ops.fastnst.style_swap_match(c.float(), s.float(), 3, 1, 1e-8)
    assert torch.equal(idx, ref)


@pytest.mark.skipif(DETECTED != "amx", reason="the AMX path needs a CPU with AMX-BF16 (this one has "
                    f"{DETECTED} at most)")
def test_amx_gram_matches_the_reference():
    torch.manual_seed(4)
    assert_bf16_gram(torch.randn(1, 256, 32, 32).bfloat16())


@needs_bf16
def test_bf16_gram_forward_routes_agree():
    """The two bf16 forward routes (fastnst's pairs SYRK, oneDNN's bf16 GEMM as on AMX CPUs),
    pinned by FASTNST_GRAM_BF16, both accumulate in fp32: each within one bf16 rounding of the
    float64 Gram, exactly symmetric."""
    code = r"""
import torch, fastnst
from fastnst import info
torch.manual_seed(5)
worst = 0.0
for shape in [(1, 64, 30, 30), (2, 70, 9, 11), (1, 512, 8, 8)]:
    for cl in (False, True):
        x = torch.randn(shape).bfloat16()
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        g = fastnst.gram_matrix(x)
        f = x.double().flatten(2)
        ref = f @ f.transpose(1, 2) / f[0].numel()
        bound = ref.abs() * 2.0 ** -8 + 1e-5 * ref.abs().amax()
        assert ((g.double() - ref).abs() <= bound).all()
        assert torch.equal(g, g.transpose(1, 2))
print([p["path"] for p in info.cpu_paths() if p["op"] == "gram" and p["dtype"] == "bfloat16"][0])
"""
    for pin, path in (("own", "own-bf16-pairs"), ("onednn", "onednn")):
        res = run_child(code, FASTNST_GRAM_BF16=pin)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.split()[-1] == path
    res = run_child("import torch, fastnst; fastnst.gram_matrix(torch.randn(1, 2, 3).bfloat16())",
                    FASTNST_GRAM_BF16="amx")
    assert "FASTNST_GRAM_BF16 must be 'own' or 'onednn', got 'amx'" in res.stderr


def test_16bit_gram_is_the_fp32_gram_rounded_once():
    """Where 16-bit inputs are widened to fp32 (fp16 always; bf16 at level avx512), the Gram is
    bit for bit the fp32 Gram of the same values, rounded once (the vector narrowing of the last
    step rounds as torch does, non-finite values included for fp16)."""
    code = r"""
import torch, fastnst
torch.manual_seed(6)
bad = []
for dt in (torch.float16, torch.bfloat16):
    for shape in [(1, 70, 33), (2, 512, 64), (1, 16, 5), (3, 33, 100), (1, 1, 7)]:
        x = torch.randn(shape).to(dt)
        if dt == torch.float16 and shape[1] > 8:
            x[0, 3, 4], x[0, 5, :] = float("nan"), float("inf")
        g, g32 = fastnst.gram_matrix(x), fastnst.gram_matrix(x.float())
        same = torch.equal(g.view(torch.int16), g32.to(dt).view(torch.int16))
        bad += [] if same else [f"{dt} {shape}"]
print(bad)
"""
    if "avx512" not in RUNNABLE:
        pytest.skip("needs AVX-512 (the vector narrowing)")
    res = run_child(code, FASTNST_CPU_ISA="avx512")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]"
