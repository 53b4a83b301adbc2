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
        or pad >= w or x.dim() != 4 or _dense_format(x) is None


def _same_dtype(x: torch.Tensor):
    """Autocast off around the pad / upsample copies: CPU autocast runs reflection_pad2d and
    upsample_nearest2d in float32, so under bf16 autocast each would widen a bf16 activation
    to fp32 (a copy) for the next convolution to narrow again (another), forward and
    backward; copies are exact in any dtype."""
    return torch.autocast(x.device.type, enabled=False)


def _dense_format(x: torch.Tensor) -> torch.memory_format | None:
    """x's dense 4-D layout (contiguous or channels_last), None for any other strides."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def _new_padded(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """An uninitialised [B, C, h, w] tensor in x's layout (contiguous or channels_last)."""
    return torch.empty(x.shape[0], x.shape[1], h, w, dtype=x.dtype, device=x.device,
                       memory_format=_dense_format(x))


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, [pad] * 4, mode="reflect")``, bit for bit. Without autograd, on contiguous or
    channels_last [B, C, H, W]: one copy into the padded tensor, then its thin border (faster than aten's
    kernel on this project's CPUs); otherwise F.pad. channels_last stays channels_last."""
    if pad == 0:
        return x
    H, W = x.shape[-2:]
    if _plain_path(x, pad, H, W):
        with _same_dtype(x):
            return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    P = _new_padded(x, H + 2 * pad, W + 2 * pad)
    P[:, :, pad:pad + H, pad:pad + W].copy_(x)
    return _fill_reflect_border(P, pad, H, W)


def upsample_reflect_pad(x: torch.Tensor, scale: int, pad: int) -> torch.Tensor:
    """``F.pad(F.interpolate(x, scale_factor=scale, mode="nearest"), [pad] * 4, "reflect")``,
    bit for bit (both are copies). Without autograd, on contiguous or channels_last [B, C, H, W]: one
    broadcasting copy into the padded result, then its border, so the upsampled tensor, the
    largest of the network at its last stage, is never allocated (it bounds the memory of
    stylizing a 2048² image) and one pass is saved; with autograd the two aten ops."""
    H, W = x.shape[-2:]
    h, w = H * scale, W * scale
    if _plain_path(x, pad, h, w):
        with _same_dtype(x):
            x = F.interpolate(x, mode="nearest", scale_factor=scale)
            return F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    P = _new_padded(x, h + 2 * pad, w + 2 * pad)
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

    # Inference on the CPU runs _forward_fused (see there); False keeps the module-by-module path.
    fused_inference = True
    # In _forward_fused, the 3-channel output convolution as a 12-channel one (see output_conv).
    grouped_output_conv = True
    # In _forward_fused, the 3x3 stride-1 convolutions by Winograd F(4x4, 3x3) (fused_conv).
    winograd_convs = True
    # ... and the others (9x9, stride 2) by fastnst's direct kernel; False: oneDNN's.
    direct_convs = True

    def forward(self, x):
        if self.fused_inference and _fusable(self, x):
            return self._forward_fused(x)
        y = _in_relu(self.in1, self.conv1(x))
        y = _in_relu(self.in2, self.conv2(y))
        y = _in_relu(self.in3, self.conv3(y))
        for k in range(1, 6):
            y = getattr(self, f"res{k}")(y)
        y = _in_relu(self.in4, self.deconv1(y))
        y = _in_relu(self.in5, self.deconv2(y))
        return self.deconv3(y)


def _norms_servable(model: nn.Module) -> bool:
    """Every instance norm of ``model`` normalises with the sample's own statistics (fastnst's
    norms always do; nn.InstanceNorm2d unless it tracks running statistics)."""
    for m in model.modules():
        if isinstance(m, nn.InstanceNorm2d) and m.track_running_stats:
            return False
    return True


def _fusable(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model``'s fused inference path serves ``x``: no gradient to compute, not under
    torch.compile (Inductor fuses the plain path itself), fastnst's CPU kernels, a 4-D CPU float
    input, and norms with per-sample statistics."""
    from fastnst import _ext

    if torch.compiler.is_compiling() or not _ext.available():
        return False
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.device.type != "cpu" or not x.is_floating_point():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters())):
        return False
    return _norms_servable(model)


def _stage(norm: nn.Module, y: torch.Tensor, relu: bool, nxt: nn.Module | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``norm`` (+ ReLU) (+ residual) on ``y``, upsampled and reflection-padded for the layer
    ``nxt`` (a ConvLayer / UpsampleConvLayer; None: no padding), in one kernel."""
    from fastnst.ops.norm import instance_norm_pad

    pad = nxt.reflection_pad.padding[0] if nxt is not None else 0
    up = int(getattr(nxt, "upsample", None) or 1)
    return instance_norm_pad(y, norm.weight, norm.bias, norm.eps, "relu" if relu else None, residual, up, pad)


def _interior(P: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    p = layer.reflection_pad.padding[0]
    return P[:, :, p:P.shape[2] - p, p:P.shape[3] - p] if p else P


def _grouped_weight(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """conv's weight [Co, Ci, k, k] as the weight of a stride-2 convolution whose 4 Co output
    channels are the 2 x 2 output pixels of each (even, even) position, kernel k + 1 (zeros
    where a pixel's window does not reach), and the bias repeated to match. Built at each call
    (a few tens of thousands of elements): a cache keyed on the weight could miss edits made
    through ``.data``, which do not change its version."""
    w, b = conv.weight.detach(), conv.bias
    co, ci, k, _ = w.shape
    g = w.new_zeros(co, 2, 2, ci, k + 1, k + 1)
    for a in range(2):
        for c in range(2):
            g[:, a, c, :, a:a + k, c:c + k] = w
    g = g.reshape(co * 4, ci, k + 1, k + 1).contiguous(memory_format=torch.channels_last)
    return g, None if b is None else b.detach().repeat_interleave(4)


def output_conv(conv: nn.Conv2d, P: torch.Tensor, grouped: bool = True,
                channels_last: bool = False) -> torch.Tensor:
    """``conv(P)`` for a stride-1, unpadded convolution with few output channels (the network's
    3-channel RGB output). oneDNN computes 16 output channels per vector, so a 3-channel
    convolution runs at 3/16 of its speed: with ``grouped`` (a kernel of 5 or more, an even
    output size) it runs as a stride-2 convolution with 4x the output channels (the 2 x 2
    pixels of each position, kernel k + 1) and a pixel shuffle, ~3x faster here for 1.23x the
    multiply-adds (a 3x3 kernel gains less than the shuffle costs); the same sums plus exact
    zeros, so within float rounding of ``conv(P)``. The result is contiguous, or channels_last
    with ``channels_last``."""
    k = conv.kernel_size[0]
    h, w = P.shape[2] - k + 1, P.shape[3] - k + 1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    plain = (not grouped or conv.out_channels > 4 or k < 5 or conv.stride != (1, 1) or conv.padding != (0, 0)
             or conv.dilation != (1, 1) or conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]
             or h % 2 or w % 2)
    if plain:
        return conv(P).contiguous(memory_format=fmt)
    g, gb = _grouped_weight(conv)
    y = F.conv2d(P, g, gb, stride=2)  # [B, 4 Co, h / 2, w / 2]: channel (c, dy, dx) of pixel (2 i + dy, 2 j + dx)
    if not channels_last:
        return F.pixel_shuffle(y, 2).contiguous()
    B, C4, hh, ww = y.shape
    c = C4 // 4
    y = y.permute(0, 2, 3, 1).reshape(B, hh, ww, c, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(B, 2 * hh, 2 * ww, c)
    return y.permute(0, 3, 1, 2)


def _plain_conv(conv: nn.Module) -> bool:
    """An ``nn.Conv2d`` that fastnst.ops.conv.conv can stand for: square kernel and stride, no
    padding of its own, no dilation, no groups."""
    return (type(conv) is nn.Conv2d and conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1]
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1)


def _winograd_eligible(conv: nn.Module) -> bool:
    return _plain_conv(conv) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)


def fused_conv(conv: nn.Conv2d, P: torch.Tensor, winograd: bool = True) -> torch.Tensor:
    """``conv(P)`` in a fused inference path: a 3x3, stride-1, unpadded convolution (the
    networks' residual and upsampling convolutions, on their reflection-padded inputs) through
    ``fastnst.ops.conv.conv3x3`` when ``winograd`` (Winograd F(4x4, 3x3) where it serves the call:
    float32 on the avx512 CPU path, channels multiples of 16; within ~1e-5 of the output's scale
    of ``conv(P)``, not bit for bit), any other through ``conv`` itself."""
    from fastnst.ops.conv import conv3x3

    if winograd and _winograd_eligible(conv):
        return conv3x3(P, conv.weight, conv.bias)
    return conv(P)


def _geometry(layer: nn.Module) -> tuple[nn.Conv2d, int, int]:
    """(conv, upsample, pad) of a ConvLayer / UpsampleConvLayer."""
    return layer.conv2d, int(getattr(layer, "upsample", None) or 1), layer.reflection_pad.padding[0]


def reads_virtually(conv: nn.Conv2d, y: torch.Tensor, upsample: int, pad: int, winograd: bool,
                    direct: bool = False) -> bool:
    """Whether ``conv`` on the upsampled, padded form of a tensor like ``y`` (the stage's input:
    same shape, dtype and device as the stage's output before padding) runs as a fastnst kernel
    reading the unpadded tensor (so the stage writes only that). ``winograd`` / ``direct``: the
    network's ``winograd_convs`` / ``direct_convs``."""
    from fastnst.ops.conv import route

    if not (winograd or direct) or not _plain_conv(conv):
        return False
    path, _ = route(y, conv.weight, conv.bias, upsample, pad, conv.stride[0], winograd=winograd, direct=direct)
    return path != "aten"


def virtual_conv(conv: nn.Conv2d, y: torch.Tensor, upsample: int, pad: int, winograd: bool,
                 direct: bool = False) -> torch.Tensor:
    """``conv`` on ``y`` upsampled and reflection-padded, by fastnst.ops.conv.conv (where
    ``reads_virtually``: without forming that input)."""
    from fastnst.ops.conv import conv as conv_op

    return conv_op(y, conv.weight, conv.bias, conv.stride[0], upsample, pad, winograd=winograd, direct=direct)


def reflect_conv(conv: nn.Conv2d, x: torch.Tensor, pad: int, winograd: bool, direct: bool) -> torch.Tensor:
    """``conv`` on ``x`` reflection-padded by ``pad`` (a network's first convolution, on the
    image, or one with no norm in front of it): a fastnst kernel reading ``x`` in its own layout
    where one serves, else ``conv`` on the padded channels_last copy (oneDNN's fast layout)."""
    if reads_virtually(conv, x, 1, pad, winograd, direct):
        return virtual_conv(conv, x, 1, pad, winograd, direct)
    return conv(reflect_pad(x.contiguous(memory_format=torch.channels_last), pad))


def _stage_into(norm: nn.Module, y: torch.Tensor, relu: bool, nxt: nn.Module, winograd: bool,
                residual: torch.Tensor | None = None, direct: bool = False) -> tuple[torch.Tensor, bool]:
    """The stage (``_stage``) in front of layer ``nxt``, and whether its output is unpadded
    (``nxt``'s convolution, a fastnst kernel, reads it virtually upsampled and padded) or
    ``nxt``'s padded input."""
    conv, up, pad = _geometry(nxt)
    if reads_virtually(conv, y, up, pad, winograd, direct):
        return _stage(norm, y, relu, None, residual), True
    return _stage(norm, y, relu, nxt, residual), False


def _run(layer: nn.Module, P: torch.Tensor, virtual: bool, winograd: bool, direct: bool = False) -> torch.Tensor:
    """``layer``'s convolution on the stage output ``P`` (see _stage_into)."""
    conv, up, pad = _geometry(layer)
    if virtual:
        return virtual_conv(conv, P, up, pad, winograd, direct)
    return fused_conv(conv, P, winograd)


def _unpadded(P: torch.Tensor, layer: nn.Module, virtual: bool) -> torch.Tensor:
    return P if virtual else _interior(P, layer)


def _forward_fused(self: TransformerNet, x: torch.Tensor) -> torch.Tensor:
    """Inference in channels_last (oneDNN's convolutions run 1.5-2x faster on it than on NCHW
    here), each norm (+ ReLU, + the residual) written by fastnst::instance_norm_pad straight
    into the padded (upsampled) input of the next convolution: no normalised, padded or
    upsampled intermediate is ever allocated; the RGB output convolution runs grouped
    (output_conv). Each stage's values are bit for bit the plain path's on the same
    channels_last convolutions (with grouped_output_conv False: the whole output); the output
    has x's layout (with winograd_convs and direct_convs False). With winograd_convs, the
    residual and upsampling convolutions and the 9x9 input one run as Winograd kernels
    (fastnst.ops.conv.conv; not bit for bit: within ~1e-5 of each output's scale); with
    direct_convs, the stride-2 ones and the RGB output as fastnst's direct kernel (a direct
    fp32 convolution's rounding). Both read their input upsampled and padded through index
    maps, so the stage in front of them writes only the unpadded tensor (_stage_into), and the
    first one reads x itself."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    wg, dc = self.winograd_convs, self.direct_convs
    y = reflect_conv(self.conv1.conv2d, x, self.conv1.reflection_pad.padding[0], wg, dc)
    y = _run(self.conv2, *_stage_into(self.in1, y, True, self.conv2, wg, direct=dc), wg, dc)
    y = _run(self.conv3, *_stage_into(self.in2, y, True, self.conv3, wg, direct=dc), wg, dc)
    blocks = [getattr(self, f"res{k}") for k in range(1, 6)]
    P, v = _stage_into(self.in3, y, True, blocks[0].conv1, wg, direct=dc)
    for k, blk in enumerate(blocks):
        t = _run(blk.conv1, P, v, wg, dc)
        t = _run(blk.conv2, *_stage_into(blk.in1, t, True, blk.conv2, wg, direct=dc), wg, dc)
        nxt = blocks[k + 1].conv1 if k + 1 < len(blocks) else self.deconv1
        P, v = _stage_into(blk.in2, t, False, nxt, wg, residual=_unpadded(P, blk.conv1, v), direct=dc)
    y = _run(self.deconv1, P, v, wg, dc)
    y = _run(self.deconv2, *_stage_into(self.in4, y, True, self.deconv2, wg, direct=dc), wg, dc)
    P, v = _stage_into(self.in5, y, True, self.deconv3, wg, direct=dc)
    y = _run(self.deconv3, P, v, wg, dc) if v else output_conv(self.deconv3.conv2d, P, self.grouped_output_conv)
    return y.contiguous(memory_format=torch.channels_last) if cl else y


TransformerNet._forward_fused = _forward_fused
