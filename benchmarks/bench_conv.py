"""The style networks' convolutions at a 1024² image: fastnst's Winograd and direct kernels vs
the eager layer (upsample + reflection pad + oneDNN convolution), oneDNN alone and torch.compile
(fastnst/bench/cases/conv.py).

    python benchmarks/bench_conv.py [--quick]     # = fastnst bench --op conv
"""

import sys

from fastnst import bench

if __name__ == "__main__":
    sys.exit(bench.script_main("conv", doc=__doc__))
