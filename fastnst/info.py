"""``fastnst info`` / ``python -m fastnst.info``: versions, build, CPU ISA, CUDA archs, Triton,
and which backend serves which op. Never initialises CUDA."""

from __future__ import annotations

import os
import platform

import torch

import fastnst
from fastnst import _ext
from fastnst.backend import BACKENDS, availability, triton_interpret, triton_status

# public op -> the registered kernel op whose availability it follows
OPS = {"gram": "gram", "mean_std": "mean_std", "instance_norm": "instance_norm",
       "style_swap": "style_swap_match"}


def collect() -> dict:
    bi = _ext.build_info()
    ok, note = triton_status()
    return {
        "fastnst": fastnst.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none (CPU build)",
        "python": platform.python_version(),
        "extension": "loaded" if _ext.available() else f"missing ({_ext.import_error()})",
        "built_with_cuda": bi.get("with_cuda", False),
        "cuda_archs": bi.get("cuda_archs") or "-",
        "compiler": bi.get("compiler", "-"),
        "cpu_kernels_compiled": bi.get("cpu_kernels", "-"),
        "cpu_isa_in_use": bi.get("cpu_isa", "-"),
        "threads": torch.get_num_threads(),
        "triton": note,
        "triton_interpreter": triton_interpret() if ok else False,
        "FASTNST_BACKEND": os.environ.get("FASTNST_BACKEND", "auto"),
        "ops": {op: availability(kernel) for op, kernel in OPS.items()},
    }


def render(info: dict) -> str:
    lines = ["fastnst " + info["fastnst"], ""]
    keys = [k for k in info if k not in ("fastnst", "ops")]
    width = max(map(len, keys))
    lines += [f"{k:<{width}}  {info[k]}" for k in keys]
    lines += ["", "op x backend (float32):", ""]
    col = 34
    first = max(map(len, info["ops"])) + 2
    lines.append("op".ljust(first) + "".join(b.ljust(col) for b in BACKENDS))
    for op, row in info["ops"].items():
        lines.append(op.ljust(first) + "".join(row[b][: col - 2].ljust(col) for b in BACKENDS))
    return "\n".join(lines)


def main() -> int:
    print(render(collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
