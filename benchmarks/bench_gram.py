"""Gram matrix benchmark: fastnst backends vs the eager reference vs torch.compile of it.

Two ways to run the same cases (fastnst/bench/cases/gram.py):

    python benchmarks/bench_gram.py [--quick] [--device cuda]   # table + JSON in bench_results/
    python -m pytest benchmarks/bench_gram.py --benchmark-only   # pytest-benchmark

`fastnst bench --op gram` runs the same code as the first form.
"""

import os
import sys

import pytest

from fastnst import bench
from fastnst.bench.cases import gram

DEVICE = os.environ.get("FASTNST_BENCH_DEVICE", "cpu")
OPTS = bench.Options(device=DEVICE, quick=bool(os.environ.get("FASTNST_BENCH_QUICK")))
SHAPES = gram.QUICK_SHAPES if OPTS.quick else gram.SHAPES


@pytest.mark.parametrize("mode", gram.MODES)
@pytest.mark.parametrize("provider", gram.PROVIDERS)
@pytest.mark.parametrize("name, shape", SHAPES, ids=[n for n, _ in SHAPES])
def test_gram(benchmark, name, shape, provider, mode):
    bench.pytest_benchmark(benchmark, gram.make_case(name, shape, mode, OPTS), provider, DEVICE)


if __name__ == "__main__":
    sys.exit(bench.script_main("gram", doc=__doc__))
