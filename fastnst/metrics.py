"""Image-quality metrics for super-resolution: PSNR and SSIM, per image, in float64.

Both take two images of the same shape, [B, C, H, W] (one value per image: a [B] tensor) or
[C, H, W] (a 0-d tensor), as torch tensors or anything ``torch.as_tensor`` accepts, of any
real dtype (integers are read as values, e.g. uint8 0–255). ``data_range`` is the span of the
pixel values (255 for 0–255 images, 1 for 0–1 images).

``crop`` shaves that many pixels off every border before scoring (SR papers crop ``factor``
pixels). ``channel="rgb"`` scores the channels as given (any C); ``channel="y"`` scores the luma
of an RGB image (C = 3) with the ITU-R BT.601 conversion of MATLAB's ``rgb2ycbcr``, which SR
papers use: for R, G, B in 0–255,

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255        (so Y is in 16–235),

computed on the inputs scaled to 0–255 (× 255 / data_range) and not rounded; the luma is then
scored with a peak of 255 (PSNR) and L = 255 (SSIM) — i.e. the same numbers whatever data_range.

* ``psnr = 10 log10(data_range² / MSE)``, MSE over C, H, W; +inf for identical images.
* ``ssim``: Wang et al. (2004) with an 11×11 Gaussian window, σ = 1.5 (normalised to sum 1),
  K1 = 0.01, K2 = 0.03, C1 = (K1 L)², C2 = (K2 L)², L = data_range; local means, variances and
  covariance are Gaussian-weighted (population, not sample, statistics) and filtered without
  padding ("valid": the map is (H − 10) × (W − 10)); the result is the mean of the map, and
  over the channels. 1 for identical images. Same as ``skimage.metrics.structural_similarity``
  with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["psnr", "ssim", "rgb_to_y"]

_WINDOW, _SIGMA, _K1, _K2 = 11, 1.5, 0.01, 0.03


def rgb_to_y(x: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """BT.601 luma (MATLAB ``rgb2ycbcr``) of RGB [..., 3, H, W] with values in 0–data_range:
    [..., 1, H, W] in 16–235, float64 (see the module docstring)."""
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"channel='y' needs RGB images with 3 channels, got shape {list(x.shape)}")
    x = x.to(torch.float64) * (255.0 / data_range)
    r, g, b = x.unbind(-3)
    return (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0).unsqueeze(-3)


def _prepare(name: str, x, y, data_range, crop, channel, min_size: int):
    """Validated float64 [B, C, H', W'] copies of x and y (cropped, luma if asked), the range
    they are scored with, and whether the input was unbatched."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"{name}: x and y must have the same shape, got {list(x.shape)} and {list(y.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{name}: images must be [B, C, H, W] or [C, H, W], got shape {list(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: images must be real-valued, got dtype {x.dtype}")
    if x.device != y.device:
        raise ValueError(f"{name}: x and y must be on the same device, got {x.device} and {y.device}")
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not data_range > 0 \
            or not math.isfinite(data_range):
        raise ValueError(f"{name}: data_range must be a finite number > 0, got {data_range!r}")
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
        raise ValueError(f"{name}: crop must be an int >= 0, got {crop!r}")
    if channel not in ("rgb", "y"):
        raise ValueError(f"{name}: channel must be 'rgb' or 'y', got {channel!r}")
    unbatched = x.dim() == 3
    if unbatched:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    h, w = x.shape[-2] - 2 * crop, x.shape[-1] - 2 * crop
    if min_size == 1 and (h < 1 or w < 1):
        raise ValueError(f"{name}: cropping {crop} border pixels leaves no pixels of a "
                         f"{x.shape[-2]}x{x.shape[-1]} image")
    if h < min_size or w < min_size:
        raise ValueError(f"{name}: images must be at least {min_size}x{min_size} after cropping {crop} border "
                         f"pixels (the Gaussian window is {min_size}x{min_size}, filtered without padding), "
                         f"got {x.shape[-2]}x{x.shape[-1]} -> {h}x{w}")
    if channel == "y" and x.shape[1] != 3:
        raise ValueError(f"{name}: channel='y' needs RGB images with 3 channels, got {x.shape[1]}")
    x = x[..., crop:crop + h, crop:crop + w]
    y = y[..., crop:crop + h, crop:crop + w]
    if channel == "y":
        return rgb_to_y(x, data_range), rgb_to_y(y, data_range), 255.0, unbatched
    return x.to(torch.float64), y.to(torch.float64), float(data_range), unbatched


def psnr(x, y, data_range: float = 255.0, crop: int = 0, channel: str = "rgb") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image: [B] float64 for [B, C, H, W] inputs, a
    0-d tensor for [C, H, W]; +inf where the images are identical. See the module docstring."""
    x, y, peak, unbatched = _prepare("psnr", x, y, data_range, crop, channel, 1)
    mse = (x - y).square().mean(dim=(1, 2, 3))
    out = 10.0 * torch.log10(peak * peak / mse)  # mse = 0 -> +inf
    return out[0] if unbatched else out


def _gaussian_window(device) -> torch.Tensor:
    t = torch.arange(_WINDOW, dtype=torch.float64, device=device) - (_WINDOW - 1) / 2
    g = torch.exp(-t.square() / (2 * _SIGMA * _SIGMA))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of [..., H, W] without padding: [..., H - 10, W - 10]. Written
    as weighted sums of shifted views (not conv2d), so every output is the same sequence of
    operations on its own inputs: identical images give bit-identical statistics (SSIM exactly 1)."""
    h, w = x.shape[-2] - _WINDOW + 1, x.shape[-1] - _WINDOW + 1
    rows = sum(g[k] * x[..., k:k + h, :] for k in range(_WINDOW))
    return sum(g[k] * rows[..., :, k:k + w] for k in range(_WINDOW))


def ssim(x, y, data_range: float = 255.0, crop: int = 0, channel: str = "rgb") -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of each image: [B] float64 for [B, C, H, W]
    inputs, a 0-d tensor for [C, H, W]; 1 where the images are identical. Images must be at
    least 11×11 after the crop. See the module docstring."""
    x, y, L, unbatched = _prepare("ssim", x, y, data_range, crop, channel, _WINDOW)
    g = _gaussian_window(x.device)
    # One filter pass over x, y, x², y², xy (each channel on its own).
    mx, my, exx, eyy, exy = _blur(torch.stack([x, y, x * x, y * y, x * y]), g).unbind(0)
    vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = (_K1 * L) ** 2, (_K2 * L) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    out = smap.mean(dim=(1, 2, 3))
    return out[0] if unbatched else out
