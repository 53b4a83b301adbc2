"""Gram matrix benchmark: fastnst backends vs the eager reference vs torch.compile of it.

Two ways to run the same harness (fastnst/bench.py):

    python benchmarks/bench_gram.py [--quick] [--device cuda]   # table + JSON in bench_results/
    python -m pytest benchmarks/bench_gram.py --benchmark-only   # pytest-benchmark

`fastnst bench` runs the same code as the first form.
"""

import argparse
import os
import sys

import pytest
import torch

from fastnst import bench

DEVICE = os.environ.get("FASTNST_BENCH_DEVICE", "cpu")
SHAPES = bench.QUICK_GRAM_SHAPES if os.environ.get("FASTNST_BENCH_QUICK") else bench.GRAM_SHAPES


def _providers():
    return bench.gram_providers(torch.device(DEVICE), torch.float32)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["fastnst-cpu", "fastnst-cuda", "fastnst-triton", "reference",
                                      "reference-compile"])
@pytest.mark.parametrize("name, shape", SHAPES, ids=[n for n, _ in SHAPES])
def test_gram(benchmark, name, shape, provider, mode):
    fn = _providers()[provider]
    if isinstance(fn, str):
        pytest.skip(fn)
    x = torch.randn(shape, device=DEVICE)
    call = bench._gram_case_fn(fn, x, mode)
    call()  # warm-up (and compilation for reference-compile)
    dev = torch.device(DEVICE)

    def synced():
        call()
        bench._sync(dev)

    benchmark.extra_info["gflops_per_call"] = bench.gram_flops(shape, mode) / 1e9
    benchmark.pedantic(synced, rounds=10, warmup_rounds=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--out", default="bench_results")
    args = p.parse_args()
    print(bench.main_gram(args.quick, args.device, args.out, None, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
