"""Networks: the VGG encoders (fastnst.models.vgg)."""

from fastnst.models.vgg import VGGEncoder, WeightsError, layer_names, load_vgg

__all__ = ["VGGEncoder", "WeightsError", "layer_names", "load_vgg"]
