"""Loading of the compiled extension, ``fastnst._C``.

Importing fastnst never fails because the extension is missing: it warns once, and the
reference and Triton backends keep working. Nothing here initialises CUDA.
"""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch before the extension)

_C = None
_IMPORT_ERROR: str | None = None

try:
    from fastnst import _C  # type: ignore[attr-defined, no-redef]
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    _IMPORT_ERROR = str(exc)
    warnings.warn(
        "fastnst: the compiled extension fastnst._C is not available "
        f"({exc}); only the 'reference' and 'triton' backends will work. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def available() -> bool:
    """True when fastnst._C is loaded (its CPU kernels are registered)."""
    return _C is not None


def import_error() -> str | None:
    return _IMPORT_ERROR


def build_info() -> dict:
    """What the loaded extension was built with; empty when it is missing."""
    if _C is None:
        return {}
    return dict(_C.build_info())


def has_cuda_kernels() -> bool:
    return bool(build_info().get("with_cuda", False))
