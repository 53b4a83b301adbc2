"""Perceptual losses as objects whose targets are set once, and one encoder pass per step.

Terms (each ``weight · value``; ``value`` is unweighted):

    ContentLoss(layer)    MSE(F_l(x), F_l(c))                        feature reconstruction
    GramLoss(layer)       MSE(G_l(x), Ĝ_l),  G = fastnst.gram_matrix   Gatys / Johnson style
    MeanStdLoss(layer)    MSE(μ_l(x), μ̂_l) + MSE(σ_l(x), σ̂_l)          AdaIN's style loss,
                          (μ, σ) = fastnst.mean_std (σ = sqrt(unbiased var + 1e-5))
    PixelLoss()           MSE(x, target)                              on the image itself
    TVLoss()              Σ (x[i+1, j] − x[i, j])² + (x[i, j+1] − x[i, j])²   (squared TV, summed)

A comparison loss (all but TVLoss) encodes features into its representation (the features,
their Gram matrix, their means and stds) and compares that with a fixed target:
``set_target(features)`` stores the target's encoding (computed without autograd),
``set_target(list_of_features, blend)`` a blend of several: Σ_i β_i · encoding_i with the β_i
normalised to sum 1 (Gram targets blend as Gatys / neural-style blend styles; mean/std targets
blend the means and the stds). PixelLoss has ``layer = None``: its "features" are the image.

``PerceptualLoss(encoder, content=[...], style=[...], regularizers=[...])`` holds them:
``set_content_target(img)`` / ``set_style_target(img or [imgs], blend)`` run the encoder once
per image under ``torch.no_grad`` up to the deepest layer its group needs; ``forward(x)`` runs
it once on ``x`` up to the deepest layer of all and returns ``(total, terms)``, ``terms`` the
detached weighted value of each term by name (for logging). The encoder's parameters are set
``requires_grad_(False)``: they never receive a gradient. The encoder is any module with
``features_of(x, layers) -> {name: tensor}`` and ``names`` (fastnst.models.VGGEncoder); with
``preprocess=True`` (default) images are RGB in [0, 1] and go through ``encoder.preprocess``
first, with ``preprocess=False`` they are already in the encoder's input convention.

Batches: a target of batch 1 is broadcast over the input's batch (one style for a batch of
outputs); a target of batch B is compared sample by sample with an input of batch B; any other
batch, or another shape after the batch dimension, is a ValueError. Every MSE is a mean over
all elements, batch included (the batch's mean of per-sample losses); TVLoss sums.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnst import ops

__all__ = ["ComparisonLoss", "ContentLoss", "GramLoss", "Loss", "MeanStdLoss", "PerceptualLoss",
           "PixelLoss", "TVLoss", "evaluate", "normalize_blend", "tv_loss"]

Encoding = tuple  # of tensors: (features,), (gram,), (mean, std)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Squared total variation (neural-style's TV term), summed over everything."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).sum() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).sum()


def _check_weight(owner: str, weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"{owner}: weight must be a finite number >= 0, got {weight!r}")
    value = float(weight)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}: weight must be a finite number >= 0, got {weight!r}")
    return value


def normalize_blend(blend: Sequence[float], n: int, what: str = "blend") -> list[float]:
    """``n`` blend weights, finite and >= 0 with a finite sum > 0, divided by their sum."""
    blend = [float(b) for b in blend]
    if len(blend) != n:
        raise ValueError(f"{what} must have one weight per item ({n}), got {len(blend)}")
    rule = f"{what} must be finite numbers >= 0 with a finite sum > 0"
    if any(not math.isfinite(b) or b < 0 for b in blend):
        raise ValueError(f"{rule}, got {blend}")
    total = sum(blend)
    if not 0 < total < math.inf:
        raise ValueError(f"{rule}, got {blend} (sum {total})")
    return [b / total for b in blend]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


class Loss(nn.Module):
    """A weighted term; ``name`` labels it in PerceptualLoss's terms."""

    kind = "loss"
    layer: str | None = None

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = _check_weight(type(self).__name__, weight)

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}:{self.layer}"

    def extra_repr(self) -> str:
        return (f"layer={self.layer!r}, " if self.layer is not None else "") + f"weight={self.weight}"


class TVLoss(Loss):
    """``weight · tv_loss(x)``: a regularizer on the image, no target."""

    kind = "tv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * tv_loss(x)


class ComparisonLoss(Loss):
    """A loss between an encoding of features (at ``layer``; None: the image) and a fixed target.

    Subclasses define ``encode(features) -> tuple of tensors`` and ``compare(enc, target)``
    (unweighted); the target's tensors are non-persistent buffers (they follow ``.to()``)."""

    _buffers_for = ("target",)

    def __init__(self, layer: str | None, weight: float = 1.0):
        super().__init__(weight)
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"{type(self).__name__}: layer must be a layer name, got {layer!r}")
        self.layer = layer
        for b in self._buffers_for:
            self.register_buffer(b, None, persistent=False)

    def encode(self, features: torch.Tensor) -> Encoding:
        raise NotImplementedError

    def compare(self, enc: Encoding, target: Encoding) -> torch.Tensor:
        raise NotImplementedError

    @property
    def has_target(self) -> bool:
        return all(getattr(self, b) is not None for b in self._buffers_for)

    @property
    def target_encoding(self) -> Encoding | None:
        return tuple(getattr(self, b) for b in self._buffers_for) if self.has_target else None

    def set_target_encoding(self, enc: Encoding) -> None:
        """Store an encoding (as ``encode`` returns it) as the target, detached."""
        enc = tuple(enc)
        if len(enc) != len(self._buffers_for) or not all(isinstance(t, torch.Tensor) for t in enc):
            raise TypeError(f"{self.name}: a target encoding is {len(self._buffers_for)} tensor(s) "
                            f"({', '.join(self._buffers_for)})")
        for b, t in zip(self._buffers_for, enc):
            setattr(self, b, t.detach())

    def set_target(self, features: torch.Tensor | Sequence[torch.Tensor],
                   blend: Sequence[float] | None = None) -> None:
        """Target = encode(features), or Σ_i β_i encode(features_i) for a list (β normalised)."""
        with torch.no_grad():
            if isinstance(features, torch.Tensor):
                if blend is not None:
                    raise ValueError(f"{self.name}: blend weights need a list of targets")
                self.set_target_encoding(self.encode(features))
                return
            features = list(features)
            acc = _Blend(self.name, normalize_blend(blend if blend is not None else [1.0] * len(features),
                                                    len(features)))
            for f in features:
                acc.add(self.encode(f))
            self.set_target_encoding(acc.result())

    def _matched(self, enc: Encoding) -> Encoding:
        """The target, checked against ``enc`` and broadcast over its batch (from batch 1)."""
        target = self.target_encoding
        if target is None:
            raise RuntimeError(f"{self.name}: no target; call set_target(...) (or PerceptualLoss's "
                               "set_content_target / set_style_target) first")
        out = []
        for e, t in zip(enc, target):
            if t.shape[1:] != e.shape[1:] or t.shape[0] not in (1, e.shape[0]) or t.dim() != e.dim():
                raise ValueError(f"{self.name}: the target's shape {_shape(t)} does not match the "
                                 f"input's {_shape(e)}; a target has the input's shape, or batch 1 "
                                 "(broadcast over the input's batch)")
            out.append(t if t.shape[0] == e.shape[0] else t.expand_as(e))
        return tuple(out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        enc = self.encode(features)
        return self.weight * self.compare(enc, self._matched(enc))


class ContentLoss(ComparisonLoss):
    """``weight · MSE(features, target features)`` at ``layer``."""

    kind = "content"

    def __init__(self, layer: str, weight: float = 1.0):
        super().__init__(layer, weight)

    def encode(self, features: torch.Tensor) -> Encoding:
        return (features,)

    def compare(self, enc: Encoding, target: Encoding) -> torch.Tensor:
        return F.mse_loss(enc[0], target[0])


class PixelLoss(ContentLoss):
    """``weight · MSE(x, target image)``: a content loss on the image itself (``layer`` None)."""

    kind = "pixel"

    def __init__(self, weight: float = 1.0):
        ComparisonLoss.__init__(self, None, weight)


class GramLoss(ComparisonLoss):
    """``weight · MSE(gram_matrix(F), target Gram)`` at ``layer`` (``fastnst.gram_matrix`` with
    ``normalize`` and ``backend``)."""

    kind = "gram"

    def __init__(self, layer: str, weight: float = 1.0, normalize: str = "chw", backend: str = "auto"):
        super().__init__(layer, weight)
        if normalize not in ("chw", "hw", "none"):
            raise ValueError(f"GramLoss: normalize must be 'chw', 'hw' or 'none', got {normalize!r}")
        self.normalize, self.backend = normalize, backend

    def encode(self, features: torch.Tensor) -> Encoding:
        return (ops.gram_matrix(features, normalize=self.normalize, backend=self.backend),)

    def compare(self, enc: Encoding, target: Encoding) -> torch.Tensor:
        return F.mse_loss(enc[0], target[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", normalize={self.normalize!r}, backend={self.backend!r}"


class MeanStdLoss(ComparisonLoss):
    """``weight · (MSE(μ, μ̂) + MSE(σ, σ̂))`` of per-channel statistics at ``layer``
    (``fastnst.mean_std``: σ = sqrt(var + eps), unbiased variance by default, as AdaIN)."""

    kind = "mean_std"
    _buffers_for = ("target_mean", "target_std")

    def __init__(self, layer: str, weight: float = 1.0, eps: float = 1e-5, unbiased: bool = True,
                 backend: str = "auto"):
        super().__init__(layer, weight)
        self.eps, self.unbiased, self.backend = eps, unbiased, backend

    def encode(self, features: torch.Tensor) -> Encoding:
        return ops.mean_std(features, eps=self.eps, unbiased=self.unbiased, backend=self.backend)

    def compare(self, enc: Encoding, target: Encoding) -> torch.Tensor:
        return F.mse_loss(enc[0], target[0]) + F.mse_loss(enc[1], target[1])


class _Blend:
    """Σ_i β_i enc_i, accumulated one encoding at a time (in order: t = β_0 e_0 + β_1 e_1 ...)."""

    def __init__(self, name: str, weights: Sequence[float]):
        self.name, self.weights, self.acc, self.i = name, list(weights), None, 0

    def add(self, enc: Encoding) -> None:
        beta = self.weights[self.i]
        self.i += 1
        scaled = tuple(e * beta for e in enc)
        if self.acc is None:
            self.acc = scaled
            return
        for a, s in zip(self.acc, scaled):
            if a.shape != s.shape:
                raise ValueError(f"{self.name}: cannot blend targets of shapes {_shape(a)} and "
                                 f"{_shape(s)}")
        self.acc = tuple(a + s for a, s in zip(self.acc, scaled))

    def result(self) -> Encoding:
        return self.acc


def evaluate(comparisons: Iterable[ComparisonLoss], regularizers: Iterable[Loss],
             feats: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ of the terms on precomputed features ``feats`` (layer -> tensor) and the image ``x``,
    in order (comparisons, then regularizers), from ``x.new_zeros(())``; and each term's
    detached value by name (a repeated name gets ``#2``, ``#3``, ...)."""
    total = x.new_zeros(())
    terms: dict[str, torch.Tensor] = {}
    for term in list(comparisons) + list(regularizers):
        if isinstance(term, ComparisonLoss):
            value = term(x if term.layer is None else feats[term.layer])
        else:
            value = term(x)
        total = total + value
        key, k = term.name, 1
        while key in terms:
            k += 1
            key = f"{term.name}#{k}"
        terms[key] = value.detach()
    return total, terms


class PerceptualLoss(nn.Module):
    """Content, style and regularizer terms on one encoder pass per step (see the module doc).

    Args:
        encoder: ``features_of(x, layers)`` and ``names`` (a fastnst VGGEncoder); its parameters
            are set ``requires_grad_(False)`` and it stays in eval mode.
        content: comparison losses whose targets ``set_content_target`` sets.
        style: comparison losses whose targets ``set_style_target`` sets.
        regularizers: target-free losses on the image (TVLoss).
        preprocess: images are RGB in [0, 1] (True) or in the encoder's input convention (False).
    """

    def __init__(self, encoder: nn.Module, content: Sequence[ComparisonLoss] = (),
                 style: Sequence[ComparisonLoss] = (), regularizers: Sequence[Loss] = (), *,
                 preprocess: bool = True):
        super().__init__()
        for group, items in (("content", content), ("style", style)):
            for t in items:
                if not isinstance(t, ComparisonLoss):
                    raise TypeError(f"PerceptualLoss: {group} takes losses with a target (ContentLoss, "
                                    f"GramLoss, MeanStdLoss, PixelLoss), got {type(t).__name__}")
        for t in regularizers:
            if isinstance(t, ComparisonLoss) or not isinstance(t, Loss):
                raise TypeError("PerceptualLoss: regularizers takes target-free losses on the image "
                                f"(TVLoss), got {type(t).__name__}; put a loss with a target in content")
        self.encoder = encoder
        encoder.requires_grad_(False)
        encoder.eval()
        self.content = nn.ModuleList(content)
        self.style = nn.ModuleList(style)
        self.regularizers = nn.ModuleList(regularizers)
        self.preprocess = bool(preprocess)
        self.content_layers = self._layers(self.content)
        self.style_layers = self._layers(self.style)
        self.layers = self._layers(list(self.content) + list(self.style))

    def _layers(self, terms) -> list[str]:
        """The layers of ``terms``, checked against the encoder, in the encoder's order."""
        layers = list(dict.fromkeys(t.layer for t in terms if t.layer is not None))
        if not layers:
            return []
        names = list(self.encoder.names)
        check = getattr(self.encoder, "check_layers", None)
        try:
            if check is not None:
                check(layers)
            else:
                unknown = [n for n in layers if n not in names]
                if unknown:
                    raise ValueError(f"unknown layer {unknown[0]!r}; layers are {', '.join(names)}")
        except ValueError as e:
            raise ValueError(f"PerceptualLoss: {e}") from None
        return sorted(layers, key=names.index)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, x: torch.Tensor, layers: Sequence[str],
                 memory_format: torch.memory_format | None = None) -> dict[str, torch.Tensor]:
        """One encoder pass on ``x`` up to the deepest of ``layers`` ({} for none), on
        ``x.contiguous(memory_format=...)`` (after preprocessing) when given."""
        if not layers:
            return {}
        if self.preprocess:
            x = self.encoder.preprocess(x)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        return self.encoder.features_of(x, list(layers))

    def set_content_target(self, img: torch.Tensor) -> None:
        """Targets of the content terms from ``img`` (one encoder pass, no autograd)."""
        with torch.no_grad():
            feats = self.features(img, self.content_layers)
            for t in self.content:
                t.set_target(img if t.layer is None else feats[t.layer])

    def set_style_target(self, images: torch.Tensor | Sequence[torch.Tensor],
                         blend: Sequence[float] | None = None) -> None:
        """Targets of the style terms from one image or a blend of several: Σ_i β_i enc(image_i),
        β normalised to sum 1 (equal by default); one encoder pass per image, no autograd."""
        single = isinstance(images, torch.Tensor)
        images = [images] if single else list(images)
        if not images:
            raise ValueError("PerceptualLoss: set_style_target needs at least one image")
        weights = normalize_blend(blend if blend is not None else [1.0] * len(images), len(images))
        with torch.no_grad():
            if single and blend is None:
                feats = self.features(images[0], self.style_layers)
                for t in self.style:
                    t.set_target(images[0] if t.layer is None else feats[t.layer])
                return
            accs = [_Blend(t.name, weights) for t in self.style]
            for img in images:
                feats = self.features(img, self.style_layers)
                for t, acc in zip(self.style, accs):
                    acc.add(t.encode(img if t.layer is None else feats[t.layer]))
                del feats
            for t, acc in zip(self.style, accs):
                t.set_target_encoding(acc.result())

    def forward(self, x: torch.Tensor, memory_format: torch.memory_format | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total, terms) for ``x``: one encoder pass up to the deepest layer of all terms (on
        ``x.contiguous(memory_format=...)`` when given; the regularizers and pixel terms see
        ``x`` itself)."""
        feats = self.features(x, self.layers, memory_format)
        return evaluate(list(self.content) + list(self.style), self.regularizers, feats, x)
