"""The convolutions of the style networks at a 1024² image (fp32): fastnst's kernels through
``fastnst.ops.conv.conv`` (Winograd for the 3x3 stride-1 and 9x9 RGB input layers, the direct
kernel for the stride-2 and narrow ones; both read the upsampled, reflection-padded input through
index maps) against the eager layer (nearest upsample + reflection pad + ``F.conv2d``, oneDNN,
channels_last), oneDNN's convolution alone on an input padded beforehand, and torch.compile of
the eager layer. The path each row's fastnst provider takes is in the row's name.

GFLOP/s count the direct convolution's multiply-adds (2 Co C k² per output pixel), so the
Winograd rows' figures are "effective" (F(4x4, 3x3) does 4x fewer multiply-adds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastnst import bench
from fastnst.bench.harness import Compiled
from fastnst.ops import conv

CL = torch.channels_last
# (name, C, Co, kernel, stride, input side, upsample): the layers' inputs at a 1024² image
LAYERS = (
    ("TransformerNet residual 128→128", 128, 128, 3, 1, 256, 1),
    ("TransformerNet upsample 128→64", 128, 64, 3, 1, 256, 2),
    ("TransformerNet upsample 64→32", 64, 32, 3, 1, 512, 2),
    ("SRNet residual 64→64 (x4 of 256²)", 64, 64, 3, 1, 256, 1),
    ("CIN residual 32→32", 32, 32, 3, 1, 256, 1),
    ("TransformerNet / CIN input 9x9 3→32", 3, 32, 9, 1, 1024, 1),
    ("TransformerNet stride-2 32→64", 32, 64, 3, 2, 1024, 1),
    ("TransformerNet stride-2 64→128", 64, 128, 3, 2, 512, 1),
    ("TransformerNet output 9x9 32→3", 32, 3, 9, 1, 1024, 1),
    ("CIN stride-2 32→32", 32, 32, 3, 2, 1024, 1),
    ("CIN upsample 32→8", 32, 8, 3, 1, 256, 2),
    ("CIN upsample 8→4", 8, 4, 3, 1, 512, 2),
    ("CIN output 9x9 4→3", 4, 3, 9, 1, 1024, 1),
)
QUICK_SIDE = 64


def _padded(x, up, pad):
    if up > 1:
        x = F.interpolate(x, scale_factor=up, mode="nearest")
    return F.pad(x, (pad,) * 4, mode="reflect")


def cases(opts: bench.Options):
    if opts.device != "cpu":
        return
    for name, c, co, k, stride, side, up in LAYERS:
        side = (QUICK_SIDE // up if up > 1 else QUICK_SIDE) if opts.quick else side
        pad = k // 2
        g = torch.Generator().manual_seed(c * co + side + k)
        x = torch.randn(1, c, side, side, generator=g).contiguous(memory_format=CL)
        w = (torch.randn(co, c, k, k, generator=g) / (k * c ** 0.5)).contiguous(memory_format=CL)
        b = torch.randn(co, generator=g)
        X = _padded(x, up, pad)
        path, why = conv.route(x, w, b, up, pad, stride)

        def eager(x, w, b, up=up, pad=pad, stride=stride):
            return F.conv2d(_padded(x, up, pad), w, b, stride=stride)

        impls = {
            "fastnst": ((lambda x=x, w=w, b=b, up=up, pad=pad, stride=stride: conv.conv(x, w, b, stride, up, pad))
                        if path != "aten" else why),
            "oneDNN (input padded beforehand)": lambda X=X, w=w, b=b, stride=stride: F.conv2d(X, w, b, stride=stride),
            bench.BASELINE: lambda x=x, w=w, b=b: eager(x, w, b),
            bench.COMPILED: bench.compiled(eager),
        }

        def make(fn, x=x, w=w, b=b):
            f = (lambda: fn(x, w, b)) if isinstance(fn, Compiled) else fn

            def run():
                with torch.no_grad():
                    return f()
            return run

        out = (side * up + 2 * pad - k) // stride + 1
        label = f"{name} ({path})" if path != "aten" else name
        yield bench.Case("conv", label, tuple(x.shape), "fwd", bench.providers(impls, make),
                         flops=2.0 * co * c * k * k * out * out, warmup=1, repeat=min(opts.repeat, 7), memory="rss")


bench.register(bench.Benchmark("conv", "The convolutions of the style networks (1024² image), float32",
                               "conv_{device}", cases))
