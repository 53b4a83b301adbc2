"""fastnst.models.sr: Johnson et al.'s super-resolution network and the bicubic baseline."""

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastnst
import fastnst.nn as fnn
from fastnst.models.sr import SRNet, bicubic


def _randomise_norms(net):
    """Non-trivial γ/β, so a norm that lost its ReLU (or got an extra one) changes the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return net


@pytest.mark.parametrize("factor,h,w", [(2, 5, 7), (4, 7, 5), (8, 5, 9)])
def test_output_shape_on_odd_sizes(factor, h, w):
    torch.manual_seed(0)
    net = SRNet(factor, channels=8, blocks=1)
    with torch.no_grad():
        y = net(torch.rand(2, 3, h, w) * 255)
    assert y.shape == (2, 3, h * factor, w * factor) and y.dtype == torch.float32
    assert net.stages == factor.bit_length() - 1
    assert [n for n, _ in net.named_children()] == ["head", "res1"] + [f"up{k}" for k in range(1, net.stages + 1)] + \
        ["tail"]


def test_default_layout_keys_and_parameter_count():
    net = SRNet()
    keys = list(net.state_dict())
    assert len(keys) == 46
    assert keys[:4] == ["head.conv.conv2d.weight", "head.conv.conv2d.bias", "head.norm.weight", "head.norm.bias"]
    assert keys[-2:] == ["tail.conv2d.weight", "tail.conv2d.bias"]
    for k in range(1, 5):
        assert f"res{k}.conv1.conv2d.weight" in keys and f"res{k}.in2.bias" in keys
    assert "res5.conv1.conv2d.weight" not in keys and "up3.conv.conv2d.weight" not in keys
    assert net.state_dict()["head.conv.conv2d.weight"].shape == (64, 3, 9, 9)
    assert net.state_dict()["up2.conv.conv2d.weight"].shape == (64, 64, 3, 3)
    assert net.state_dict()["tail.conv2d.weight"].shape == (3, 64, 9, 9)
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    norm = 2 * 64
    want = conv(3, 64, 9) + norm + 4 * 2 * (conv(64, 64, 3) + norm) + 2 * (conv(64, 64, 3) + norm) + conv(64, 3, 9)
    assert sum(p.numel() for p in net.parameters()) == want == 401859
    assert len(SRNet(8).state_dict()) == 50 and "factor=8, channels=64, blocks=4" in repr(SRNet(8))


@pytest.mark.parametrize("factor", [0, 1, 3, 6, 12, -4, 4.0, True, "4"])
def test_bad_factor(factor):
    msg = f"factor must be a power of two >= 2 (Johnson et al. use 4 and 8), got {factor!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        SRNet(factor)


def test_bad_channels_blocks_and_input():
    with pytest.raises(ValueError, match=r"^channels must be an int >= 1, got 0$"):
        SRNet(channels=0)
    with pytest.raises(ValueError, match=r"^blocks must be an int >= 0, got -1$"):
        SRNet(blocks=-1)
    assert SRNet(2, channels=4, blocks=0)(torch.rand(1, 3, 5, 5)).shape == (1, 3, 10, 10)
    net = SRNet(2, channels=4, blocks=1)
    for shape in [(3, 6, 6), (1, 1, 6, 6), (1, 3, 4, 6)]:
        msg = ("SRNet: input must be RGB [B, 3, h, w] with h, w >= 5 (the 9x9 head pads 4 pixels by reflection), "
               f"got shape {list(shape)}")
        with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
            net(torch.rand(shape))


@pytest.mark.parametrize("factor", [2, 4])
def test_accelerate_fuses_and_matches(factor):
    torch.manual_seed(0)
    net = _randomise_norms(SRNet(factor, channels=16, blocks=2)).eval()
    keys = list(net.state_dict())
    x = torch.rand(1, 3, 7, 6) * 255
    with torch.no_grad():
        before = net(x)
    fast = fastnst.accelerate(net)
    stages = factor.bit_length() - 1
    assert fast is net and list(fast.state_dict()) == keys
    report = "\n".join(fastnst.accelerate.last_report)
    assert f"replaced {1 + 2 * 2 + stages}, left 0" in report
    assert "no ReLU left to fuse" in report  # the forward traced (the input check stays out of fx)
    fused = {n for n, m in fast.named_modules() if type(m) is fnn.InstanceNormReLU}
    plain = {n for n, m in fast.named_modules() if type(m) is fnn.InstanceNorm2d}
    assert fused == {"head.norm", "res1.in1", "res2.in1"} | {f"up{k}.norm" for k in range(1, stages + 1)}
    assert plain == {"res1.in2", "res2.in2"}
    assert not any(type(m) is nn.InstanceNorm2d for m in fast.modules())
    with torch.no_grad():
        after = fast(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3 * before.abs().max().item() / 255 + 1e-4)


def test_backward_plain_and_accelerated():
    torch.manual_seed(0)
    net = _randomise_norms(SRNet(2, channels=8, blocks=1))
    x = (torch.rand(2, 3, 6, 5) * 255).requires_grad_()
    target = torch.rand(2, 3, 12, 10) * 255
    F.mse_loss(net(x), target).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values()) and torch.isfinite(x.grad).all()
    for name in ["head.conv.conv2d.weight", "res1.conv2.conv2d.weight", "up1.norm.weight", "tail.conv2d.bias"]:
        assert grads[name].abs().sum() > 0, name
    gx = x.grad.clone()
    assert gx.abs().sum() > 0
    net.zero_grad()
    x.grad = None
    fast = fastnst.accelerate(net)
    F.mse_loss(fast(x), target).backward()
    # Tolerance against the largest gradient: some are ~0 in exact arithmetic (a conv bias just
    # before an instance norm, and res1.in2.bias — a per-channel constant removed by up1.norm).
    scale = max(g.abs().max().item() for g in grads.values())
    for n, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-5 * scale, msg=lambda m: f"{n}: {m}")
    torch.testing.assert_close(x.grad, gx, rtol=1e-3, atol=1e-3 * gx.abs().max().item())


def test_bicubic_baseline():
    lr = torch.zeros(2, 3, 5, 7)
    lr[..., 3:] = 255.0  # a step edge: bicubic undershoots on the dark side, overshoots on the bright one
    raw = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert raw.min() < 0 and raw.max() > 255
    up = bicubic(lr, 4)
    assert up.shape == (2, 3, 20, 28)
    assert up.min() == 0 and up.max() == 255
    torch.testing.assert_close(up, raw.clamp(0, 255), rtol=0, atol=0)
    assert SRNet.bicubic is bicubic and SRNet(2, channels=4, blocks=0).bicubic(lr, 2).shape == (2, 3, 10, 14)
    u8 = bicubic(lr[0].to(torch.uint8), 2)  # unbatched, integer input
    assert u8.shape == (3, 10, 14) and u8.dtype == torch.float32
    torch.testing.assert_close(u8, bicubic(lr[:1], 2)[0])
    with pytest.raises(ValueError, match=r"^bicubic: factor must be an int >= 1, got 0$"):
        bicubic(lr, 0)
    with pytest.raises(ValueError, match=re.escape("bicubic: lr must be [B, C, h, w] or [C, h, w], got shape [5, 7]")):
        bicubic(lr[0, 0], 2)
