"""3x3, stride-1 convolutions of the style networks at a 1024² image (fp32): fastnst's Winograd
kernel (``fastnst.ops.conv.conv3x3``, reading the upsampled, reflection-padded input through
index maps) against the eager layer (nearest upsample + reflection pad + ``F.conv2d``, oneDNN,
channels_last), oneDNN's convolution alone on an input padded beforehand, and torch.compile of
the eager layer.

GFLOP/s count the direct convolution's multiply-adds (2 Co C 9 per output pixel), so the
Winograd provider's figure is "effective" (it does 4x fewer multiply-adds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastnst import bench
from fastnst.bench.harness import Compiled
from fastnst.ops import conv

CL = torch.channels_last
# (name, C, Co, input side, upsample): the layers' inputs at a 1024² image
LAYERS = (
    ("TransformerNet residual 128→128", 128, 128, 256, 1),
    ("TransformerNet upsample 128→64", 128, 64, 256, 2),
    ("TransformerNet upsample 64→32", 64, 32, 512, 2),
    ("SRNet residual 64→64 (x4 of 256²)", 64, 64, 256, 1),
    ("CIN residual 32→32", 32, 32, 256, 1),
)
QUICK_SIDE = 64


def _padded(x, up):
    if up > 1:
        x = F.interpolate(x, scale_factor=up, mode="nearest")
    return F.pad(x, (1, 1, 1, 1), mode="reflect")


def _eager(x, w, b, up):
    return F.conv2d(_padded(x, up), w, b)


def cases(opts: bench.Options):
    if opts.device != "cpu":
        return
    for name, c, co, side, up in LAYERS:
        side = QUICK_SIDE if opts.quick else side
        g = torch.Generator().manual_seed(c * co + side)
        x = torch.randn(1, c, side, side, generator=g).contiguous(memory_format=CL)
        w = (torch.randn(co, c, 3, 3, generator=g) / (3 * c ** 0.5)).contiguous(memory_format=CL)
        b = torch.randn(co, generator=g)
        X = _padded(x, up)
        path, why = conv.route(x, w, b, up, 1)
        impls = {
            "fastnst": (lambda x=x, w=w, b=b, up=up: conv.conv3x3(x, w, b, up, 1)) if path == "winograd" else why,
            "oneDNN (input padded beforehand)": lambda X=X, w=w, b=b: F.conv2d(X, w, b),
            bench.BASELINE: lambda x=x, w=w, b=b, up=up: _eager(x, w, b, up),
            bench.COMPILED: bench.compiled(_eager),
        }

        def make(fn, x=x, w=w, b=b, up=up):
            f = (lambda: fn(x, w, b, up)) if isinstance(fn, Compiled) else fn

            def run():
                with torch.no_grad():
                    return f()
            return run

        out = side * up
        yield bench.Case("conv3x3", name, tuple(x.shape), "fwd", bench.providers(impls, make),
                         flops=2.0 * co * c * 9 * out * out, warmup=1, repeat=min(opts.repeat, 7), memory="rss")


bench.register(bench.Benchmark("conv", "3x3 stride-1 convolutions of the style networks (1024² image), float32",
                               "conv_{device}", cases))
