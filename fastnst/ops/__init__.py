"""Public functional API of the fastnst ops (one module per op family)."""

from fastnst.ops import autocast, conv  # noqa: F401  (conv: registers the fakes of fastnst::conv3x3_winograd, conv_winograd_split, conv2d_direct)
from fastnst.ops.gram import gram_loss, gram_matrix
from fastnst.ops.norm import adain, instance_norm, mean_std
from fastnst.ops.style_swap import style_swap, style_swap_reconstruct

autocast.register()  # the autocast rules, once every op above is defined

__all__ = ["adain", "gram_loss", "gram_matrix", "instance_norm", "mean_std", "style_swap", "style_swap_reconstruct"]
