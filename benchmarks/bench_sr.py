"""x4 perceptual super-resolution of a 256² image, fastnst fp32 / bf16 vs the module-by-module network
and torch.compile of it (fastnst/bench/cases/sr.py).

    python benchmarks/bench_sr.py [--quick]     # = fastnst bench --op sr
"""

import sys

from fastnst import bench

if __name__ == "__main__":
    sys.exit(bench.script_main("sr", doc=__doc__))
