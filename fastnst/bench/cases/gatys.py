"""One Gatys loss evaluation and backward (an L-BFGS step) with the method's defaults
(VGG-19 to relu5_1, content relu4_2, five style Grams, TV), on the CPU.

"fastnst" and "reference" are the same loop, input channels_last as ``stylize`` runs it, with
fastnst's Gram or the ``torch.bmm`` reference; "reference-nchw" is the loop as public code
writes it. Where the CPU has bf16 (AVX512-BF16 or AMX), "fastnst-bf16" and "reference-bf16"
are the first two with the encoder and the loss under bf16 autocast, as ``stylize(...,
precision="bf16")`` runs them (the image and its gradient stay fp32).
Layers and loss weights are read from ``fastnst.methods.gatys.DEFAULTS``. GFLOP/s
count the VGG convolutions up to the deepest layer used (forward, and the input-gradient
backward: 2x the forward).
"""

from __future__ import annotations

import re

import torch

import fastnst
from fastnst import bench

SIZES = (256, 512)
QUICK_SIZES = (64,)
# provider -> (fastnst backend of the Gram, input channels_last, precision)
PROVIDERS = {"fastnst": ("auto", True, "fp32"), bench.BASELINE: ("reference", True, "fp32"),
             "reference-nchw": ("reference", False, "fp32"),
             "fastnst-bf16": ("auto", True, "bf16"), "reference-bf16": ("reference", True, "bf16")}


def conv_flops(encoder, size: int, deepest: str) -> float:
    """Forward flops of the encoder's convolutions up to ``deepest`` for a size x size input."""
    flops, h, w = 0.0, size, size
    for name, m in encoder.features.named_children():
        if isinstance(m, torch.nn.Conv2d):
            flops += 2.0 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * h * w
        elif isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            h, w = h // 2, w // 2
        if name == deepest:
            break
    return flops


def step_fn(encoder, size: int, backend: str, channels_last: bool, defaults=None, precision: str = "fp32"):
    """One evaluation of the Gatys loss with ``defaults`` (default: the method's) on random
    inputs, and its backward, under ``precision``'s autocast; ``reset`` drops the input's gradient."""
    from fastnst.engine import precision as prec
    from fastnst.methods import gatys

    d = gatys.DEFAULTS if defaults is None else defaults
    content_layers, style_layers = list(d.content_layers), list(d.style_layers)
    layers = list(dict.fromkeys(content_layers + style_layers))
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(1, 3, size, size, generator=g) * 50).requires_grad_()
    with torch.no_grad():
        feats = encoder.features_of(torch.randn(1, 3, size, size, generator=g) * 50, layers)
        tg = [fastnst.gram_matrix(feats[n], backend=backend) for n in style_layers]
        tc = [feats[n] for n in content_layers]

    def step():
        x.grad = None
        with prec.autocast(precision, "cpu"):
            f = encoder.features_of(x.contiguous(memory_format=fmt), layers)  # as stylize() does
            loss = gatys.loss(f, x, tc, tg, content_layers=content_layers, style_layers=style_layers,
                              content_weight=d.content_weight, style_weight=d.style_weight,
                              tv_weight=d.tv_weight, backend=backend)  # the method's own loss
        loss.float().backward()

    step.reset = lambda: setattr(x, "grad", None)
    return step


def cases(opts: bench.Options):
    from fastnst.methods import gatys
    from fastnst.models import load_vgg

    encoder = load_vgg()
    d = gatys.DEFAULTS
    deepest = max(tuple(d.content_layers) + tuple(d.style_layers), key=encoder.names.index)
    from fastnst.engine import precision as prec

    bf16 = "" if prec.cpu_flags() & {"avx512_bf16", "amx_bf16"} else "no AVX512-BF16 or AMX-BF16 on this CPU"
    for size in (QUICK_SIZES if opts.quick else SIZES):
        provs = []
        for name, (backend, cl, precision) in PROVIDERS.items():
            if precision == "bf16" and bf16:
                provs.append(bench.Provider(name, None, note=bf16))
                continue
            call = step_fn(encoder, size, backend, cl, precision=precision)
            provs.append(bench.Provider(name, call, reset=call.reset))
        yield bench.Case("gatys_step", f"{size}x{size}", (1, 3, size, size), "step", provs,
                         flops=2 * conv_flops(encoder, size, deepest), warmup=1, repeat=min(opts.repeat, 5))


def title(opts: bench.Options) -> str:
    """"Gatys step (VGG-19 to relu5_1, content relu4_2, five style Grams)", from the defaults."""
    from fastnst.methods import gatys

    d = gatys.DEFAULTS

    def vgg_order(name: str) -> tuple[int, int]:  # "relu4_2" -> block 4, layer 2
        m = re.fullmatch(r"[a-z]+(\d+)_(\d+)", name)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    deepest = max(tuple(d.content_layers) + tuple(d.style_layers), key=vgg_order)
    n = len(d.style_layers)
    count = ("one", "two", "three", "four", "five", "six", "seven", "eight")[n - 1] if 0 < n <= 8 else str(n)
    return f"Gatys step (VGG-19 to {deepest}, content {', '.join(d.content_layers)}, {count} style Grams)"


bench.register(bench.Benchmark("gatys", title, "gatys_cpu", cases, device="cpu"))
