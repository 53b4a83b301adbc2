"""style_swap (3x3 patches, stride 1) on VGG-19 relu3_1 features of 256², 512² and 1024²
images: time and peak resident memory, fastnst vs the conv-based reference (which is skipped
where its score and one-hot tensors would not fit in memory).

    python benchmarks/bench_style_swap.py [--quick] [--device cuda]   # = fastnst bench --op style_swap
"""

import argparse
import sys

from fastnst import bench


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="bench_results")
    args = p.parse_args()
    print(bench.main_style_swap(args.quick, args.device, args.out, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
