"""Every CUDA source compiles with nvcc for the architectures we ship (sm_80, sm_90).

This runs without a GPU: torch's CPU wheel has no classic ATen CUDA headers, so csrc/cuda/*.cu
is written against the torch stable ABI, and `nvcc -c` of each file checks it here. Skips with
a reason when nvcc is not installed (neither on PATH nor in $CUDA_HOME/bin).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))
ARCHS = ("80", "90")
# Same defines as setup.py's nvcc flags (stable ABI of torch 2.10, so 2.11+ builds it too).
FLAGS = [
    "-std=c++17",
    "-O2",
    "-DTORCH_TARGET_VERSION=0x020a000000000000",
    "-DFASTNST_WITH_CUDA=1",
    "-Xcompiler",
    "-fPIC",
]
TIMEOUT_S = 300


def _find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            candidate = Path(home) / "bin" / "nvcc"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


NVCC = _find_nvcc()


def _include_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    dirs = [*include_paths(), str(CSRC), sysconfig.get_paths()["include"]]
    return [f"-I{d}" for d in dirs]


def test_cuda_sources_exist():
    assert CU_FILES, f"no CUDA sources found under {CSRC / 'cuda'}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or in $CUDA_HOME/bin: "
                                         "CUDA sources cannot be compile-checked here")
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_compiles(source: Path, arch: str, tmp_path: Path):
    obj = tmp_path / f"{source.stem}.sm_{arch}.o"
    cmd = [NVCC, "-c", str(source), "-o", str(obj),
           "-gencode", f"arch=compute_{arch},code=sm_{arch}",
           *FLAGS, *_include_flags()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"nvcc failed on {source.relative_to(ROOT)} for sm_{arch} "
        f"(exit {proc.returncode}):\n$ {' '.join(cmd)}\n{proc.stderr}\n{proc.stdout}")
    assert obj.is_file() and obj.stat().st_size > 0
