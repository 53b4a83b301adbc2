"""Test setup. Without a GPU, Triton kernels run on CPU tensors through the interpreter:
TRITON_INTERPRET=1 must be set before triton is imported, so it is set here."""

import os
import shutil

if shutil.which("nvidia-smi") is None and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import fastnst  # noqa: E402,F401  (registers the ops before any test module imports them)
from fastnst.backend import serves  # noqa: E402


def cuda_available() -> bool:
    return torch.cuda.is_available()


def kernel_backends(op: str, device: str = "cpu") -> list[str]:
    """Backends other than the reference that serve float32 tensors on `device` here."""
    dev = torch.device(device)
    return [b for b in ("cpu", "cuda", "triton") if serves(b, op, dev, torch.float32) is None]


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (long fuzz profile, large cases)")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("FASTNST_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow (or FASTNST_RUN_SLOW=1)")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "cuda" in item.keywords and not cuda_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
