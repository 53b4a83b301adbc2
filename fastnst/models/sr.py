"""Johnson et al. (2016) super-resolution network (REFERENCE.md, "Perceptual-loss
super-resolution"), built from the layers of ``fastnst.models.transformer``.

``SRNet(factor)`` maps a low-resolution RGB image in 0–255, [B, 3, h, w], to RGB in 0–255,
[B, 3, h·factor, w·factor] (the convention of ``TransformerNet``):

* ``head``: reflection pad 4, conv 9×9 3 → channels, instance norm (affine), ReLU;
* ``res1`` … ``res{blocks}``: residual blocks (conv 3×3, IN, ReLU, conv 3×3, IN, + identity);
* ``up1`` … ``up{log2 factor}``: nearest ×2 upsampling, conv 3×3, IN, ReLU;
* ``tail``: reflection pad 4, conv 9×9 channels → 3, no activation.

The paper ends with a scaled tanh; REFERENCE.md gives no output activation, so there is none
here: the output is unbounded (clamp it to 0–255 to display or score it). ``bicubic(lr, factor)``
is the upscaling baseline SR results are reported against.

Instance norms followed by a ReLU are listed in ``fastnst_relu_after`` of their parent, so
``fastnst.accelerate(SRNet())`` fuses them into ``InstanceNormReLU`` (forward then skips the ReLU).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from fastnst.models.transformer import (
    ConvLayer,
    ResidualBlock,
    UpsampleConvLayer,
    _fusable,
    _in_relu,
    _run,
    _stage_into,
    _unpadded,
    output_conv,
    reflect_conv,
)

__all__ = ["SRNet", "bicubic"]


def _check_factor(factor) -> int:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or factor & (factor - 1):
        raise ValueError(f"factor must be a power of two >= 2 (Johnson et al. use 4 and 8), got {factor!r}")
    return factor


def _check_lr(x: torch.Tensor) -> torch.Tensor:
    """The input contract of SRNet.forward (kept out of the fx graph by ``torch.fx.wrap``, so
    ``fastnst.accelerate`` can still trace the forward)."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < 5 or x.shape[3] < 5:
        raise ValueError("SRNet: input must be RGB [B, 3, h, w] with h, w >= 5 (the 9x9 head pads 4 "
                         f"pixels by reflection), got shape {list(x.shape)}")
    return x


torch.fx.wrap("_check_lr")


class ConvNormReLU(nn.Module):
    """``conv`` (a ConvLayer or UpsampleConvLayer), then instance norm ``norm`` and a ReLU."""

    fastnst_relu_after = ("norm",)

    def __init__(self, conv: nn.Module, channels: int):
        super().__init__()
        self.conv = conv
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x):
        return _in_relu(self.norm, self.conv(x))


def bicubic(lr: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upscaling baseline: ``F.interpolate(mode="bicubic", align_corners=False)`` by an
    integer ``factor`` >= 1, clamped to 0–255. ``lr``: [B, C, h, w] or [C, h, w]; an integer
    tensor (e.g. uint8) is converted to float32 first; the result is floating point."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"bicubic: factor must be an int >= 1, got {factor!r}")
    if lr.dim() not in (3, 4):
        raise ValueError(f"bicubic: lr must be [B, C, h, w] or [C, h, w], got shape {list(lr.shape)}")
    if not lr.is_floating_point():
        lr = lr.float()
    unbatched = lr.dim() == 3
    x = lr.unsqueeze(0) if unbatched else lr
    y = F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0.0, 255.0)
    return y.squeeze(0) if unbatched else y


class SRNet(nn.Module):
    """Johnson et al.'s ×``factor`` super-resolution network: RGB 0–255 [B, 3, h, w] →
    RGB 0–255 [B, 3, h·factor, w·factor].

    ``factor``: a power of two >= 2 (one upsampling stage per doubling); the paper trains ×4 and
    ×8 networks. ``channels``: width of every hidden layer (64 in the paper). ``blocks``: number
    of residual blocks (4 in the paper). No output activation (see the module docstring).
    Submodules: ``head``, ``res1..res{blocks}``, ``up1..up{log2 factor}``, ``tail``.
    """

    bicubic = staticmethod(bicubic)

    def __init__(self, factor: int = 4, channels: int = 64, blocks: int = 4):
        super().__init__()
        self.factor = _check_factor(factor)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
        self.channels, self.blocks = channels, blocks
        self.stages = factor.bit_length() - 1  # log2(factor)
        self.head = ConvNormReLU(ConvLayer(3, channels, 9, 1), channels)
        for k in range(1, blocks + 1):
            setattr(self, f"res{k}", ResidualBlock(channels))
        for k in range(1, self.stages + 1):
            setattr(self, f"up{k}", ConvNormReLU(UpsampleConvLayer(channels, channels, 3, 1, upsample=2), channels))
        self.tail = ConvLayer(channels, 3, 9, 1)

    # As TransformerNet's: inference on the CPU runs _forward_fused; its RGB output conv grouped.
    fused_inference = True
    grouped_output_conv = True
    winograd_convs = True  # as TransformerNet's: the 3x3 stride-1 convolutions by Winograd
    direct_convs = True  # ... and the 9x9 ones by fastnst's direct kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_inference and _fusable(self, x):
            return self._forward_fused(_check_lr(x))
        y = self.head(_check_lr(x))
        for k in range(1, self.blocks + 1):
            y = getattr(self, f"res{k}")(y)
        for k in range(1, self.stages + 1):
            y = getattr(self, f"up{k}")(y)
        return self.tail(y)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """TransformerNet's fused inference (channels_last, each norm written by
        fastnst::instance_norm_pad into the padded, upsampled input of the next conv; with
        winograd_convs, the Winograd kernel for the 3x3 convolutions, with direct_convs fastnst's
        direct kernel for the 9x9 ones, both reading unpadded stage outputs)."""
        wg, dc = self.winograd_convs, self.direct_convs
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        blocks = [getattr(self, f"res{k}") for k in range(1, self.blocks + 1)]
        ups = [getattr(self, f"up{k}") for k in range(1, self.stages + 1)]
        convs = [b.conv1 for b in blocks] + [u.conv for u in ups] + [self.tail]  # each stage's next layer
        head = self.head.conv
        y = reflect_conv(head.conv2d, x, head.reflection_pad.padding[0], wg, dc)
        P, v = _stage_into(self.head.norm, y, True, convs[0], wg, direct=dc)
        for k, blk in enumerate(blocks):
            t = _run(blk.conv1, P, v, wg, dc)
            t = _run(blk.conv2, *_stage_into(blk.in1, t, True, blk.conv2, wg, direct=dc), wg, dc)
            P, v = _stage_into(blk.in2, t, False, convs[k + 1], wg, residual=_unpadded(P, blk.conv1, v), direct=dc)
        for k, up in enumerate(ups):
            nxt = convs[len(blocks) + k + 1]
            P, v = _stage_into(up.norm, _run(up.conv, P, v, wg, dc), True, nxt, wg, direct=dc)
        y = _run(self.tail, P, v, wg, dc) if v else output_conv(self.tail.conv2d, P, self.grouped_output_conv)
        return y.contiguous(memory_format=torch.channels_last) if cl else y

    def extra_repr(self) -> str:
        return f"factor={self.factor}, channels={self.channels}, blocks={self.blocks}"
