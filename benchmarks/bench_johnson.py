"""Johnson's method: a training step (VGG-16 losses, batch 4, 256²) and stylizing at 256², 512², 1024²,
fastnst fp32 / bf16 vs pytorch/examples' network and torch.compile of it (fastnst/bench/cases/johnson.py).

    python benchmarks/bench_johnson.py [--quick]     # = fastnst bench --op johnson
"""

import sys

from fastnst import bench

if __name__ == "__main__":
    sys.exit(bench.script_main("johnson", doc=__doc__))
