"""Public functional API of the fastnst ops (one module per op)."""

from fastnst.ops.gram import gram_loss, gram_matrix

__all__ = ["gram_matrix", "gram_loss"]
