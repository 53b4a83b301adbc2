"""Public functional API of the fastnst ops (one module per op family)."""

from fastnst.ops.gram import gram_loss, gram_matrix
from fastnst.ops.norm import adain, instance_norm, mean_std

__all__ = ["adain", "gram_loss", "gram_matrix", "instance_norm", "mean_std"]
