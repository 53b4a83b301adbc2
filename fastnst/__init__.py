"""fastnst: fast, exact neural style transfer kernels for PyTorch.

Ops (registered as ``torch.ops.fastnst.*``, with autograd and torch.compile support):
``gram_matrix``, ``mean_std``, ``instance_norm``, ``adain``, ``style_swap``. Every op takes
``backend="auto"|"cpu"|"cuda"|"triton"|"reference"``;
``use_backend(...)`` and ``FASTNST_BACKEND`` override "auto".
"""


def _invoked_as_cli() -> bool:
    """True when this process is the ``fastnst`` command: the console script, or
    ``python -m fastnst`` / ``python -m fastnst.cli`` (while the package is imported for -m,
    sys.argv[0] is "-m")."""
    import os
    import sys

    if sys.argv and os.path.basename(sys.argv[0]) in ("fastnst", "fastnst.exe"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    if not sys.argv or sys.argv[0] != "-m" or "-m" not in orig:
        return False
    i = orig.index("-m")
    return i + 1 < len(orig) and orig[i + 1] in ("fastnst", "fastnst.cli")


if _invoked_as_cli():  # before torch: glibc reads its malloc settings at start-up
    from fastnst.runtime.malloc import apply_for_cli as _apply_malloc

    _apply_malloc()

try:  # torch takes seconds to import: Ctrl-C then must not print a traceback from the CLI
    from fastnst import _ext  # noqa: F401  (loads fastnst._C, or warns once)
    from fastnst.backend import BACKENDS, BackendError, resolve, use_backend
    from fastnst.nn import accelerate  # noqa: E402  (fastnst.nn: modules over the ops)
    from fastnst.ops import adain, gram_loss, gram_matrix, instance_norm, mean_std, style_swap, style_swap_reconstruct
except KeyboardInterrupt:
    if not _invoked_as_cli():
        raise
    import os as _os
    import sys as _sys

    _sys.stderr.write("fastnst: interrupted\n")
    _sys.stderr.flush()
    _os._exit(130)  # not SystemExit: half-imported torch must not run its exit hooks

from fastnst._version import __version__  # noqa: E402  (the one version source)

__all__ = [
    "BACKENDS",
    "BackendError",
    "accelerate",
    "adain",
    "instance_norm",
    "mean_std",
    "gram_loss",
    "gram_matrix",
    "resolve",
    "style_swap",
    "style_swap_reconstruct",
    "use_backend",
    "__version__",
]
