"""The Gram op at VGG-19 relu1_1 ... relu5_1 of a 512² image, forward and forward+backward.

Providers: each fastnst backend present, the eager reference (``torch.bmm``, as public
style-transfer code writes it, with its autograd backward) and torch.compile of it. GFLOP/s
count 2·B·C²·L per GEMM (forward: one; forward+backward: two), whatever a provider computes.
"""

from __future__ import annotations

import math

import torch

import fastnst
from fastnst import bench, reference

# VGG-19 relu1_1 ... relu5_1 features of a 512 x 512 image, batch 1.
SHAPES = [
    ("relu1_1", (1, 64, 512, 512)),
    ("relu2_1", (1, 128, 256, 256)),
    ("relu3_1", (1, 256, 128, 128)),
    ("relu4_1", (1, 512, 64, 64)),
    ("relu5_1", (1, 512, 32, 32)),
]
QUICK_SHAPES = [
    ("relu3_1@128", (1, 256, 32, 32)),
    ("relu4_1@128", (1, 512, 16, 16)),
]
MODES = ("fwd", "fwd+bwd")
PROVIDERS = ("fastnst-cpu", "fastnst-cuda", "fastnst-triton", bench.BASELINE, bench.COMPILED)


def flops(shape, mode: str) -> float:
    """GEMM-equivalent flops: 2·B·C²·L forward, as much again for the one-GEMM backward."""
    b, c, l = shape[0], shape[1], math.prod(shape[2:])
    return 2.0 * b * c * c * l * (2 if mode == "fwd+bwd" else 1)


def _reference(x):
    return reference.gram_matrix(x, float(x[0].numel()))


def _call(fn, x: torch.Tensor, mode: str):
    """The timed call; its ``reset`` frees what a call leaves behind (x.grad)."""
    if mode == "fwd":
        def fwd():
            fn(x)

        return fwd
    xg = x.detach().requires_grad_()
    gG = torch.randn(x.shape[0], x.shape[1], x.shape[1], device=x.device, dtype=x.dtype)

    def step():
        xg.grad = None
        fn(xg).backward(gG)

    def reset():
        xg.grad = None

    step.reset = reset
    return step


def make_case(name: str, shape, mode: str, opts: bench.Options,
              x: torch.Tensor | None = None) -> bench.Case:
    dev = torch.device(opts.device)
    if x is None:
        x = torch.randn(shape, device=dev, dtype=opts.dtype)
    impls = bench.op_implementations("gram_matrix", dev, opts.dtype, fastnst.gram_matrix, _reference)
    return bench.Case("gram", name, tuple(shape), mode, bench.providers(impls, lambda fn: _call(fn, x, mode)),
                      flops=flops(shape, mode), warmup=3, repeat=opts.repeat)


def cases(opts: bench.Options):
    for name, shape in (QUICK_SHAPES if opts.quick else SHAPES):
        x = torch.randn(shape, device=torch.device(opts.device), dtype=opts.dtype)
        for mode in MODES:
            yield make_case(name, shape, mode, opts, x)


bench.register(bench.Benchmark(
    "gram", lambda o: "Gram matrix (quick shapes)" if o.quick else "Gram matrix (VGG-19 features of a 512x512 image)",
    "gram_{device}", cases, precisions=("fp32", "bf16", "fp16")))
