"""Instance norm + ReLU, AdaIN and mean_std vs the eager reference and torch.compile of it, and
Johnson's TransformerNet before and after fastnst.accelerate().

    python benchmarks/bench_norm.py [--quick] [--device cuda]     # = fastnst bench --op norm
"""

import argparse
import sys

from fastnst import bench


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--out", default="bench_results")
    args = p.parse_args()
    print(bench.main_norm(args.quick, args.device, args.out, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
