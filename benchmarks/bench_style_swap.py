"""style_swap (3x3 patches, stride 1) on VGG-19 relu3_1 features of 256², 512² and 1024²
images: time and peak resident memory, fastnst vs the conv-based reference (which is skipped
where its score and one-hot tensors would not fit in memory); fastnst/bench/cases/style_swap.py.

    python benchmarks/bench_style_swap.py [--quick] [--device cuda]   # = fastnst bench --op style_swap
"""

import sys

from fastnst import bench

if __name__ == "__main__":
    sys.exit(bench.script_main("style_swap", repeat=3, doc=__doc__))
