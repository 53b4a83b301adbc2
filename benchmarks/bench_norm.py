"""Instance norm + ReLU, AdaIN and mean_std vs the eager reference and torch.compile of it, and
Johnson's TransformerNet before and after fastnst.accelerate() (fastnst/bench/cases/norm.py).

    python benchmarks/bench_norm.py [--quick] [--device cuda]     # = fastnst bench --op norm
"""

import sys

from fastnst import bench

if __name__ == "__main__":
    sys.exit(bench.script_main("norm", doc=__doc__))
