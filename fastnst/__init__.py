"""fastnst: fast, exact neural style transfer kernels for PyTorch.

Ops (registered as ``torch.ops.fastnst.*``, with autograd and torch.compile support):
``gram_matrix``, ``mean_std``, ``instance_norm``, ``adain``, ``style_swap``. Every op takes ``backend="auto"|"cpu"|"cuda"|"triton"|"reference"``;
``use_backend(...)`` and ``FASTNST_BACKEND`` override "auto".
"""

from fastnst import _ext  # noqa: F401  (loads fastnst._C, or warns once)
from fastnst.backend import BACKENDS, BackendError, resolve, use_backend
from fastnst.ops import (adain, gram_loss, gram_matrix, instance_norm, mean_std, style_swap,
                         style_swap_reconstruct)
from fastnst.nn import accelerate  # noqa: E402  (fastnst.nn: modules over the ops)

__version__ = "0.1.0"

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
