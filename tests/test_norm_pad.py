"""fastnst::instance_norm_pad (norm [+ ReLU] [+ residual] -> nearest upsample -> reflection pad in
one inference kernel) and TransformerNet's fused inference path built on it: bit for bit the
composite of instance_norm, interpolate and F.pad; channels_last out; clear errors; autograd
and torch.compile take the composite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastnst import _ext
from fastnst.models.transformer import TransformerNet
from fastnst.nn import accelerate
from fastnst.ops.norm import instance_norm, instance_norm_pad

pytestmark = pytest.mark.skipif(not _ext.available(), reason="fastnst._C is not built")
CL = torch.channels_last


def composite(x, w, b, eps, act, res, up, pad):
    y = instance_norm(x, w, b, eps, act)
    if res is not None:
        y = y + res
    if up > 1:
        y = F.interpolate(y, scale_factor=up, mode="nearest")
    return F.pad(y, (pad,) * 4, mode="reflect") if pad else y


CASES = [  # B, C, H, W, upsample, pad, activation, residual, affine
    (1, 32, 17, 13, 1, 4, "relu", False, "C"),
    (2, 64, 8, 9, 2, 1, "relu", False, "C"),
    (1, 128, 16, 16, 1, 1, None, True, "C"),
    (2, 3, 5, 7, 1, 2, None, False, None),
    (1, 1, 6, 6, 2, 3, "relu", False, "C"),
    (1, 128, 8, 8, 2, 1, None, True, "C"),
    (2, 40, 9, 11, 3, 2, "relu", True, "BC"),
    (3, 20, 4, 5, 1, 0, "relu", True, "C"),
    (1, 16, 2, 2, 1, 1, None, False, "C"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: "x".join(map(str, c[:4])) + f"-u{c[4]}p{c[5]}-{c[6]}-r{int(c[7])}")
def test_equals_the_composite_bit_for_bit(dtype, case):
    B, C, H, W, up, pad, act, has_res, affine = case
    g = torch.Generator().manual_seed(B * 1000 + C)
    x = (torch.randn(B, C, H, W, generator=g) * 3 + 1).to(dtype).contiguous(memory_format=CL)
    shape = (C,) if affine == "C" else (B, C)
    w = torch.randn(shape, generator=g) if affine else None
    b = torch.randn(shape, generator=g) if affine else None
    res = None
    if has_res:  # a strided view, as the interior of the previous stage's padded output
        res = torch.randn(B, C, H + 2, W + 2, generator=g).to(dtype).contiguous(memory_format=CL)[:, :, 1:-1, 1:-1]
    with torch.no_grad():
        y = instance_norm_pad(x, w, b, 1e-5, act, res, up, pad)
        want = composite(x, w, b, 1e-5, act, res, up, pad)
    assert y.shape == (B, C, H * up + 2 * pad, W * up + 2 * pad)
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert torch.equal(y, want)


def test_any_input_layout():
    x = torch.randn(2, 24, 10, 12)
    for t in (x, x.contiguous(memory_format=CL), x.transpose(2, 3).contiguous().transpose(2, 3)):
        with torch.no_grad():
            assert torch.equal(instance_norm_pad(t, None, None, 1e-5, "relu", None, 2, 1),
                               composite(t.contiguous(memory_format=CL), None, None, 1e-5, "relu", None, 2, 1))


def test_nan_stays_nan_and_eps_zero_constant_channel():
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=CL)
    x[0, 3] = 2.5  # constant channel, eps = 0: normalised to 0, output the bias
    x[0, 5, 2, 2] = float("nan")
    b = torch.arange(16.0)
    with torch.no_grad():
        y = instance_norm_pad(x, None, b, 0.0, "relu", None, 1, 2)
        want = composite(x, None, b, 0.0, "relu", None, 1, 2)
    assert torch.equal(y.nan_to_num(-1), want.nan_to_num(-1))
    assert torch.isnan(y[0, 5]).all() and (y[0, 3] == 3.0).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(pad=6), r"instance_norm_pad: reflection padding 6 must be smaller than the \(upsampled\) height "
                  r"and width 6 x 8"),
    (dict(upsample=0), r"instance_norm_pad: upsample must be an integer >= 1, got 0"),
    (dict(pad=-1), r"instance_norm_pad: pad must be an integer >= 0, got -1"),
    (dict(pad=1.5), r"instance_norm_pad: pad must be an integer >= 0, got 1.5"),
    (dict(activation="gelu"), r"instance_norm_pad: activation must be None or 'relu', got 'gelu'"),
    (dict(residual=torch.zeros(1, 4, 6, 7)), r"instance_norm_pad: residual must have x's shape \[1, 4, 6, 8\] "
                                             r"and dtype torch.float32, got \[1, 4, 6, 7\] torch.float32"),
    (dict(weight=torch.ones(5)), r"instance_norm_pad: weight must be \[C\] = \[4\] or \[B, C\] = \[1, 4\], "
                                 r"got \[5\]"),
    (dict(eps=-1.0), r"instance_norm_pad: eps must be"),
])
def test_bad_input(kwargs, message):
    x = torch.randn(1, 4, 6, 8)
    with pytest.raises((ValueError, TypeError), match=message):
        instance_norm_pad(x, **kwargs)


def test_bad_rank_and_single_pixel():
    with pytest.raises(ValueError, match=r"instance_norm_pad: x must be \[B, C, H, W\], got \[4, 6, 8\]"):
        instance_norm_pad(torch.randn(4, 6, 8))
    with pytest.raises(ValueError, match="more than 1 spatial element per channel"):
        instance_norm_pad(torch.randn(1, 4, 1, 1))


def test_kernel_checks_its_arguments():
    op = torch.ops.fastnst.instance_norm_pad
    x = torch.randn(1, 4, 6, 8)
    with pytest.raises(RuntimeError, match="reflection padding 8 must be smaller"):
        op(x, None, None, 1e-5, 0, None, 1, 8)
    with pytest.raises(RuntimeError, match="residual must have x's shape"):
        op(x, None, None, 1e-5, 0, torch.zeros(1, 4, 6, 8, dtype=torch.float64), 1, 1)
    with pytest.raises(RuntimeError, match="activation must be 0"):
        op(x, None, None, 1e-5, 2, None, 1, 1)


def test_opcheck():
    op = torch.ops.fastnst.instance_norm_pad
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=CL)
    for args in ((x, torch.randn(8), torch.randn(8), 1e-5, 1, None, 2, 1),
                 (x, None, None, 1e-3, 0, torch.randn(2, 8, 5, 6), 1, 2)):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_autograd_takes_the_composite_and_the_raw_op_refuses_backward():
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, r: instance_norm_pad(x, w, None, 1e-5, None, r, 2, 2), (x, w, r))
    y = torch.ops.fastnst.instance_norm_pad(x, w, None, 1e-5, 0, None, 1, 1)
    with pytest.raises(RuntimeError, match="fastnst::instance_norm_pad is inference-only"):
        y.sum().backward()


def test_compiles():
    f = torch.compile(lambda x, w: instance_norm_pad(x, w, None, 1e-5, "relu", None, 2, 1), fullgraph=True)
    x, w = torch.randn(1, 8, 6, 7), torch.randn(8)
    with torch.no_grad():
        torch.testing.assert_close(f(x, w), composite(x, w, None, 1e-5, "relu", None, 2, 1))


# ---- TransformerNet's fused inference -------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    """fastnst's norms (accelerate), so that the plain path runs the same norm kernel."""
    torch.manual_seed(0)
    m = TransformerNet().eval().requires_grad_(False)
    with torch.no_grad():
        for n in m.modules():
            if isinstance(n, torch.nn.InstanceNorm2d):
                n.weight.normal_(1, 0.3)
                n.bias.normal_(0, 0.3)
    return accelerate(m)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("size", [(36, 44), (20, 28)])
def test_fused_network_is_the_plain_path_bit_for_bit(net, precision, size):
    """With winograd_convs and direct_convs off, every stage is the plain path's on the same
    convolutions; with fastnst's direct kernel only (the 9x9 and stride-2 ones, and the 3x3 ones
    too) it stays within 1e-5 of the output's scale (a direct fp32 convolution, summed in
    another order); with both on (the default), the 3x3 convolutions' Winograd rounding stays
    within 1e-4 (and bf16, which never takes them, is unchanged)."""
    x = torch.rand(2, 3, *size) * 255
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        y_fast = net(x)
        net.winograd_convs = False
        try:
            y_direct = net(x)
            net.direct_convs = False
            y = net(x)
            net.grouped_output_conv = False
            y_ungrouped = net(x)
            net.fused_inference = False
            plain_cl = net(x.contiguous(memory_format=CL))  # the same channels_last convolutions
            plain = net(x)
        finally:
            net.fused_inference = net.grouped_output_conv = net.winograd_convs = net.direct_convs = True
    assert y.is_contiguous() and y.shape == x.shape
    assert y_fast.is_contiguous() and y_fast.shape == x.shape
    assert torch.equal(y_ungrouped, plain_cl.contiguous())
    scale = plain_cl.float().abs().max()
    atol = scale * (1e-6 if precision == "fp32" else 1e-2)
    torch.testing.assert_close(y.float(), plain_cl.float(), rtol=0, atol=atol)
    tol = dict(rtol=0, atol=1e-3) if precision == "fp32" else dict(rtol=0.05, atol=4.0)
    torch.testing.assert_close(y.float(), plain.float(), **tol)  # NCHW convolutions round differently
    if precision == "bf16" or not _winograd_here():
        assert torch.equal(y_fast, y) and torch.equal(y_direct, y)
    else:
        assert not torch.equal(y_direct, y) and not torch.equal(y_fast, y_direct)  # the kernels did run
        torch.testing.assert_close(y_direct, plain_cl.contiguous(), rtol=0, atol=float(scale) * 1e-5)
        torch.testing.assert_close(y_fast, plain_cl.contiguous(), rtol=0, atol=float(scale) * 1e-4)


def _winograd_here() -> bool:
    from fastnst.ops.conv import route

    return route(torch.zeros(1, 16, 4, 4), torch.zeros(16, 16, 3, 3))[0] == "winograd"


def test_fused_network_with_torch_norms_matches_float64(net):
    """An un-accelerated TransformerNet (nn.InstanceNorm2d) takes the fused path too."""
    plain = TransformerNet().eval().requires_grad_(False)
    plain.load_state_dict(net.state_dict())
    exact = TransformerNet().double().eval().requires_grad_(False)
    exact.load_state_dict(net.state_dict())
    exact.fused_inference = False
    x = torch.rand(1, 3, 32, 40) * 255
    with torch.inference_mode():
        torch.testing.assert_close(plain(x).double(), exact(x.double()), rtol=0, atol=2e-3)


def test_fused_network_keeps_channels_last_and_leaves_autograd_alone(net):
    x = torch.rand(1, 3, 24, 24) * 255
    with torch.no_grad():
        assert net(x.contiguous(memory_format=CL)).is_contiguous(memory_format=CL)
    x.requires_grad_(True)
    y = net(x)  # a gradient is wanted: the plain, differentiable path
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hw", [(20, 26), (21, 26), (2, 2)])
def test_output_conv_is_the_convolution(dtype, hw):
    from fastnst.models.transformer import output_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 3, 9).eval().requires_grad_(False)
    P = torch.randn(2, 32, hw[0] + 8, hw[1] + 8).contiguous(memory_format=CL)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        y, want = output_conv(conv, P), conv(P)
        with torch.no_grad():
            conv.weight.mul_(2)  # the cached grouped weight follows the module's weight
        y2, want2 = output_conv(conv, P), conv(P)
    assert y.is_contiguous() and y.shape == want.shape == (2, 3, *hw)
    tol = dict(rtol=0, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.02, atol=0.02)
    torch.testing.assert_close(y.float(), want.float(), **tol)
    torch.testing.assert_close(y2.float(), want2.float(), **{k: 2 * v for k, v in tol.items()})


_DIGEST = r"""
import hashlib, torch
from fastnst.ops.norm import instance_norm, instance_norm_pad
torch.manual_seed(0)
h = hashlib.sha256()
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for C in (3, 16, 40, 64, 130):
        x = (torch.randn(2, C, 13, 17) * 2 + 3).to(dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        w, b = torch.randn(C, requires_grad=True), torch.randn(C, requires_grad=True)
        for act in (None, "relu"):
            y = instance_norm(x, w, b, 1e-5, act)
            dx, dw, db = torch.autograd.grad(y, (x, w, b), torch.randn_like(y))
            with torch.no_grad():
                p = instance_norm_pad(x, w, b, 1e-5, act, x * 0.5, 1, 2)
            for t in (y, dx, dw, db, p):
                h.update(t.detach().float().contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def test_channels_last_kernels_equal_the_generic_loops():
    """The channels-innermost AVX-512 kernels (float32, float16, bfloat16; forward, backward,
    instance_norm_pad) give the generic loops' bits: FASTNST_AVX512=0 in a child process."""
    import os
    import subprocess
    import sys

    from fastnst.engine.precision import cpu_flags

    if "avx512bw" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 BW: only the generic loops run here")
    runs = [subprocess.run([sys.executable, "-c", _DIGEST], capture_output=True, text=True, check=True,
                           env=dict(os.environ, **extra)).stdout.strip() for extra in ({}, {"FASTNST_AVX512": "0"})]
    assert len(runs[0]) == 64 and runs[0] == runs[1]


@pytest.mark.parametrize("blocks, factor", [(4, 4), (0, 2), (1, 8)])
def test_fused_sr_network_is_the_plain_path_bit_for_bit(blocks, factor):
    from fastnst.models.sr import SRNet

    torch.manual_seed(0)
    net = accelerate(SRNet(factor, channels=16, blocks=blocks)).eval().requires_grad_(False)
    with torch.no_grad():
        for n in net.modules():
            if isinstance(n, torch.nn.InstanceNorm2d):
                n.weight.normal_(1, 0.3)
                n.bias.normal_(0, 0.3)
    x = torch.rand(2, 3, 9, 12) * 255
    with torch.inference_mode():
        y_fast = net(x)
        net.winograd_convs = False
        y_direct = net(x)
        net.direct_convs = False
        y = net(x)
        net.grouped_output_conv = False
        y_ungrouped = net(x)
        net.fused_inference = False
        plain_cl = net(x.contiguous(memory_format=CL))
    assert y.shape == (2, 3, 9 * factor, 12 * factor) and y.is_contiguous() and y_fast.is_contiguous()
    assert torch.equal(y_ungrouped, plain_cl.contiguous())
    scale = float(plain_cl.abs().max())
    torch.testing.assert_close(y, plain_cl.contiguous(), rtol=0, atol=scale * 1e-6)
    torch.testing.assert_close(y_direct, plain_cl.contiguous(), rtol=0, atol=scale * 1e-5)
    torch.testing.assert_close(y_fast, plain_cl.contiguous(), rtol=0, atol=scale * 1e-4)


def test_fused_network_follows_weights_edited_through_data():
    """The grouped output convolution is rebuilt from the weight at each call: an in-place edit
    through ``.data`` (which does not bump the weight's version) is seen."""
    torch.manual_seed(0)
    m = TransformerNet().eval()
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        a = m(x)
        m.deconv3.conv2d.weight.data.mul_(0.5)
        b = m(x)
        m.fused_inference = False
        c = m(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, c, rtol=0, atol=float(c.abs().max()) * 1e-4)  # the Winograd kernels
