"""``fastnst info`` / ``python -m fastnst.info``: versions, build, CPU ISA, CUDA archs, Triton,
and which backend serves which op. Never initialises CUDA."""

from __future__ import annotations

import os
import platform

import torch

import fastnst
from fastnst import _ext
from fastnst.backend import BACKENDS, availability, triton_interpret, triton_status
from fastnst.ops.registry import SPECS


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
        "cpu_isa_detected": bi.get("cpu_isa_detected", "-"),
        "cpu_isa_in_use": bi.get("cpu_isa", "-")
        + (f" (error: {bi['cpu_isa_error']})" if bi.get("cpu_isa_error") else ""),
        "FASTNST_CPU_ISA": os.environ.get("FASTNST_CPU_ISA", "unset (the CPU's level)"),
        "threads": torch.get_num_threads(),
        "triton": note,
        "triton_interpreter": triton_interpret() if ok else False,
        "FASTNST_BACKEND": os.environ.get("FASTNST_BACKEND", "auto"),
        "ops": {name: availability(spec) for name, spec in SPECS.items()},
        "cpu_paths": cpu_paths(bi),
    }


def cpu_paths(bi: dict | None = None) -> list[dict]:
    """Which code each CPU op runs, per dtype, at the ISA level in use, and why: rows of
    {"op", "dtype", "path", "why"} from the extension (empty without it)."""
    bi = _ext.build_info() if bi is None else bi
    rows = []
    for line in bi.get("cpu_routes", "").splitlines():
        op, dtype, path, why = (line.split("\t", 3) + ["", "", "", ""])[:4]
        rows.append({"op": op, "dtype": dtype, "path": path, "why": why})
    return rows


def render(info: dict) -> str:
    lines = ["fastnst " + info["fastnst"], ""]
    keys = [k for k in info if k not in ("fastnst", "ops", "cpu_paths")]
    width = max(map(len, keys))
    lines += [f"{k:<{width}}  {info[k]}" for k in keys]
    lines += ["", "op x backend (float32):", ""]
    # Columns as wide as their longest entry: a reason is never cut.
    rows = [["op"] + list(BACKENDS)] + [[op] + [row[b] for b in BACKENDS] for op, row in info["ops"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if info.get("cpu_paths"):
        lines += ["", f"CPU paths (ISA level in use: {info['cpu_isa_in_use']}; FASTNST_CPU_ISA lowers it):", ""]
        rows = [["op", "dtype", "path", "why"]]
        rows += [[p["op"], p["dtype"], p["path"], p["why"]] for p in info["cpu_paths"]]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3])
    return "\n".join(lines)


def main() -> int:
    print(render(collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
