"""Style swap, 3x3 patches at stride 1 on VGG-19 relu3_1 features of 256², 512² and 1024²
images: time and peak memory, fastnst vs the conv-based reference.

The reference runs only where its score and one-hot tensors fit in memory (60 % of physical
memory). GFLOP/s count the patch GEMM the reference runs for the scores (2·n²·C·9; fastnst
does fewer flops, see csrc/cpu/style_swap.cpp). Peak MB on the CPU is the larger of what one
call adds to the resident memory and to the torch allocator's live tensors.
"""

from __future__ import annotations

import torch

import fastnst
from fastnst import bench, reference

# VGG-19 relu3_1 features (256 channels, 1/4 of the image side) of square images.
SIZES = (256, 512, 1024)
QUICK_SIZES = (128,)


def flops(c: int, h: int, w: int, k: int = 3, s: int = 1) -> float:
    """Multiply-adds x 2 of scoring every content patch against every style patch (same size
    maps) with the patch GEMM the public algorithm runs: 2 · n² · C·k²."""
    n = ((h - k) // s + 1) * ((w - k) // s + 1)
    return 2.0 * n * n * c * k * k


def memory_limit_gb() -> float:
    try:
        with open("/proc/meminfo") as fh:
            total_kb = int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return float("inf")
    return 0.6 * total_kb / 2**20


def cases(opts: bench.Options, mem_limit_gb: float | None = None):
    dev = torch.device(opts.device)
    limit = memory_limit_gb() if mem_limit_gb is None else mem_limit_gb
    for size in (QUICK_SIZES if opts.quick else SIZES):
        n = size // 4
        shape = (1, 256, n, n)
        g = torch.Generator().manual_seed(size)
        content = torch.randn(shape, generator=g).relu_().to(dev, opts.dtype)
        style = torch.randn(shape, generator=g).relu_().to(dev, opts.dtype)
        patches = (n - 2) ** 2
        need_gb = 2 * patches * patches * 4 / 2**30  # scores + one-hot, float32
        impls = bench.kernel_providers("style_swap", dev, opts.dtype,
                                       lambda backend: fastnst.style_swap(content, style, backend=backend))
        impls[bench.BASELINE] = (lambda: reference.style_swap(content, style)) if need_gb < limit else \
            f"at {size}² its scores and one-hot alone need {need_gb:.0f} GB (limit {limit:.0f} GB)"
        yield bench.Case("style_swap", f"relu3_1 of {size}²", shape, "fwd", bench.providers(impls, lambda fn: fn),
                         flops=flops(256, n, n), warmup=1, repeat=min(opts.repeat, 3) if size <= 512 else 1,
                         memory="rss")


bench.register(bench.Benchmark("style_swap", "Style swap, 3x3 patches, stride 1, VGG-19 relu3_1 features",
                               "style_swap_{device}", cases, precisions=("fp32", "bf16", "fp16")))
