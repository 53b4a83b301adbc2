"""One Gatys step (loss and backward, the method's default layers and weights) on fastnst ops
vs the same loop on reference ops, channels_last and NCHW (fastnst/bench/cases/gatys.py; CPU).

    python benchmarks/bench_gatys.py [--quick]     # = fastnst bench --op gatys
"""

import sys

from fastnst import bench

if __name__ == "__main__":
    sys.exit(bench.script_main("gatys", repeat=5, doc=__doc__))
