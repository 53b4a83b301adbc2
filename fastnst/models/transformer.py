"""Johnson et al. (2016) image transformation network, with the layout and state_dict keys of
pytorch/examples' ``fast_neural_style`` TransformerNet (REFERENCE.md): input and output RGB in
0–255, reflection padding, instance norm, five residual blocks, nearest-neighbour upsampling.

Instance norms followed by a ReLU are listed in ``fastnst_relu_after``: ``fastnst.accelerate``
turns those into fused ``InstanceNormReLU`` modules, and ``forward`` then skips the ReLU.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F


def _in_relu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from fastnst.nn import InstanceNormReLU

    return norm(x) if isinstance(norm, InstanceNormReLU) else F.relu(norm(x))


class ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x):
        return self.conv2d(reflect_pad(x, self.reflection_pad.padding[0]))


def _fill_reflect_border(P: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Fill the ``p``-wide border of ``P`` (interior ``h`` x ``w`` at offset ``p``) by
    reflecting the interior, rows first, then whole columns (corners included), as F.pad's
    "reflect" does."""
    for k in range(p):
        P[:, :, p - 1 - k, p:p + w] = P[:, :, p + 1 + k, p:p + w]
        P[:, :, p + h + k, p:p + w] = P[:, :, p + h - 2 - k, p:p + w]
    for k in range(p):
        P[:, :, :, p - 1 - k] = P[:, :, :, p + 1 + k]
        P[:, :, :, p + w + k] = P[:, :, :, p + w - 2 - k]
    return P


def _plain_path(x: torch.Tensor, pad: int, h: int, w: int) -> bool:
    """The aten ops: with autograd, under torch.compile (Inductor fuses them itself), and for
    shapes or layouts the copy path does not take."""
    return (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling() or pad >= h \
        or pad >= w or x.dim() != 4 or not x.is_contiguous()


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, [pad] * 4, mode="reflect")``, bit for bit. Without autograd, on contiguous
    [B, C, H, W]: one copy into the padded tensor, then its thin border (faster than aten's
    kernel on this project's CPUs); otherwise F.pad."""
    if pad == 0:
        return x
    H, W = x.shape[-2:]
    if _plain_path(x, pad, H, W):
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    P = x.new_empty(x.shape[0], x.shape[1], H + 2 * pad, W + 2 * pad)
    P[:, :, pad:pad + H, pad:pad + W].copy_(x)
    return _fill_reflect_border(P, pad, H, W)


def upsample_reflect_pad(x: torch.Tensor, scale: int, pad: int) -> torch.Tensor:
    """``F.pad(F.interpolate(x, scale_factor=scale, mode="nearest"), [pad] * 4, "reflect")``,
    bit for bit (both are copies). Without autograd, on contiguous [B, C, H, W]: one
    broadcasting copy into the padded result, then its border, so the upsampled tensor, the
    largest of the network at its last stage, is never allocated (it bounds the memory of
    stylizing a 2048² image) and one pass is saved; with autograd the two aten ops."""
    H, W = x.shape[-2:]
    h, w = H * scale, W * scale
    if _plain_path(x, pad, h, w):
        x = F.interpolate(x, mode="nearest", scale_factor=scale)
        return F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    B, C = x.shape[:2]
    P = x.new_empty(B, C, h + 2 * pad, w + 2 * pad)
    P[:, :, pad:pad + h, pad:pad + w].unflatten(2, (H, scale)).unflatten(4, (W, scale)).copy_(
        x[:, :, :, None, :, None])
    return _fill_reflect_border(P, pad, h, w)


torch.fx.wrap("upsample_reflect_pad")  # leaves for fastnst.accelerate's tracer
torch.fx.wrap("reflect_pad")


class UpsampleConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, upsample: int | None = None):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x):
        if self.upsample:
            return self.conv2d(upsample_reflect_pad(x, int(self.upsample), self.reflection_pad.padding[0]))
        return self.conv2d(reflect_pad(x, self.reflection_pad.padding[0]))


class ResidualBlock(nn.Module):
    fastnst_relu_after = ("in1",)

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3, 1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x):
        return x + self.in2(self.conv2(_in_relu(self.in1, self.conv1(x))))


class TransformerNet(nn.Module):
    fastnst_relu_after = ("in1", "in2", "in3", "in4", "in5")

    def __init__(self):
        super().__init__()
        self.conv1 = ConvLayer(3, 32, 9, 1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, 3, 2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, 3, 2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        for k in range(1, 6):
            setattr(self, f"res{k}", ResidualBlock(128))
        self.deconv1 = UpsampleConvLayer(128, 64, 3, 1, upsample=2)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, 3, 1, upsample=2)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9, 1)

    def forward(self, x):
        y = _in_relu(self.in1, self.conv1(x))
        y = _in_relu(self.in2, self.conv2(y))
        y = _in_relu(self.in3, self.conv3(y))
        for k in range(1, 6):
            y = getattr(self, f"res{k}")(y)
        y = _in_relu(self.in4, self.deconv1(y))
        y = _in_relu(self.in5, self.deconv2(y))
        return self.deconv3(y)
