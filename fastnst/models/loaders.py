"""Loaders for the Johnson et al. (2016) fast style transfer checkpoints users already have.

* pytorch/examples ``fast_neural_style`` checkpoints (``.pth`` / ``.pt`` / ``.model`` written by
  ``torch.save``, or ``.safetensors``) hold a state_dict of ``TransformerNet``:
  ``load_transformer_state`` reads one with ``torch.load(weights_only=True)`` (never unpickling
  code), drops the 30 ``running_mean``/``running_var`` keys that pre-0.4 PyTorch wrote for the
  instance norms and checks every key, shape and value against ``TransformerNet``.
* jcjohnson/fast-neural-style ``.t7`` checkpoints (``torch.save`` of a Lua table whose ``model``
  field is an ``nn.Sequential``): ``load_t7_model`` parses one with the ``torchfile`` package
  (which executes nothing) and rebuilds the Torch layer tree as PyTorch modules, wrapped in a
  ``TorchTransformer`` that takes and returns RGB 0-255 like ``TransformerNet``.
* ``load_johnson`` picks the loader from the file's content (then its extension).

Every bad file raises ``CheckpointError`` (a ``ValueError``) with a one-line message that names
the file and says what was expected; a missing file raises ``FileNotFoundError``.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import struct
import warnings
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnst.models.transformer import TransformerNet

__all__ = ["CheckpointError", "TorchTransformer", "load_johnson", "load_t7_model", "load_transformer_state"]


class CheckpointError(ValueError):
    """A file that is not a usable Johnson checkpoint: unreadable, truncated, not weights-only,
    or holding the wrong keys, shapes, dtypes, values or (for .t7 files) layers."""


def _err(path: str, what: str, expected: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; expected {expected}")


def check_file(path, error: type[Exception] = CheckpointError, expected: str = "a checkpoint file") -> str:
    """``path`` as a str if it is a non-empty regular file, else FileNotFoundError or ``error``
    naming it and ``expected``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise error(f"{path}: is a directory; expected {expected}")
    if os.path.getsize(path) == 0:
        raise error(f"{path}: is empty (0 bytes); expected {expected}")
    return path



def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _sniff(path: str) -> str | None:
    """What the file's first bytes say it is: "torch" (a torch.save zip archive or legacy
    pickle), "safetensors", "t7" (Torch7 binary), "t7-ascii", or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < 2**31:
        return "safetensors"  # an 8-byte little-endian header length (its first byte may be 0x80), then JSON
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) >= 8:
        typeidx, index = struct.unpack("<ii", head[:8])
        if typeidx in (3, 4) and index == 1:  # a table or a Torch object, object reference 1
            return "t7"
    if re.match(rb"[34]\r?\n1\r?\n", head):
        return "t7-ascii"
    return None


# --------------------------------------------------------------------------------------------
# pytorch/examples TransformerNet state_dicts
# --------------------------------------------------------------------------------------------

_PTH_EXPECTED = ("a pytorch/examples fast_neural_style TransformerNet state_dict (torch.save'd .pth/.pt/.model, "
                 "or .safetensors)")


@lru_cache(maxsize=1)
def _transformer_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((k, tuple(v.shape)) for k, v in TransformerNet().state_dict().items())


@lru_cache(maxsize=1)
def _instance_norm_names() -> frozenset[str]:
    return frozenset(name for name, m in TransformerNet().named_modules() if isinstance(m, nn.InstanceNorm2d))


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _torch_load_detail(exc: BaseException) -> tuple[bool, str]:
    """(whether torch refused to unpickle code, a one-line reason) for a torch.load failure."""
    msg = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in msg:
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        return True, f"unsupported GLOBAL {m.group(1)}" if m else "it holds objects other than tensors"
    if isinstance(exc, EOFError) or "unexpected EOF" in msg:
        return False, "the file ends early: truncated"
    if "zip archive" in msg or "central directory" in msg:
        return False, "a truncated or corrupt zip archive"
    line = _first_line(msg).split(". ", 1)[0]
    return False, f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _read_torch(path: str):
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols and storages are noise here
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one CheckpointError
        refused, detail = _torch_load_detail(exc)
        if refused:
            raise _err(path, f"its pickle needs more than weights-only loading ({detail}), which fastnst refuses "
                       "because unpickling it could run code", _PTH_EXPECTED + " holding only tensors") from None
        raise _err(path, f"cannot read it with torch.load ({detail})", _PTH_EXPECTED) from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for entry in ("state_dict", "model"):
            if isinstance(obj.get(entry), dict):
                return obj[entry]
        keys = [repr(k) for k in obj if not isinstance(obj[k], torch.Tensor)]
        raise _err(path, f"holds a dict with no state_dict or model entry (non-tensor entries: {_few(keys)})",
                   _PTH_EXPECTED)
    return obj


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError("reading .safetensors files needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001
        line = _first_line(str(exc))
        raise _err(path, f"cannot read it as a safetensors file ({type(exc).__name__}: {line})",
                   _PTH_EXPECTED) from None


def _check_state(path: str, obj) -> tuple[dict[str, torch.Tensor], list[str]]:
    if not isinstance(obj, dict):
        raise _err(path, f"holds a {type(obj).__name__}, not a state_dict", _PTH_EXPECTED)
    for k, v in obj.items():
        if not isinstance(k, str):
            raise _err(path, f"its state_dict has a non-string key {k!r}", _PTH_EXPECTED)
        if not isinstance(v, torch.Tensor):
            raise _err(path, f"its state_dict has a non-tensor value at {k!r} ({type(v).__name__})", _PTH_EXPECTED)
    state = dict(obj)
    notes = []
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("stripped the 'module.' prefix of a DataParallel/DistributedDataParallel state_dict")
    norms = _instance_norm_names()
    running = [k for k in state if k.rpartition(".")[0] in norms and k.rpartition(".")[2] in ("running_mean",
                                                                                              "running_var")]
    for k in running:
        del state[k]
    if running:
        notes.append(f"dropped {len(running)} running_mean/running_var keys of pre-0.4 PyTorch instance norms")
    tracked = [k for k in state if k == "num_batches_tracked" or k.endswith(".num_batches_tracked")]
    for k in tracked:
        del state[k]
    if tracked:
        notes.append(f"dropped {len(tracked)} num_batches_tracked key{'s' if len(tracked) > 1 else ''}")

    shapes = dict(_transformer_shapes())
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} TransformerNet key{'s' if len(missing) > 1 else ''} missing ("
                         + _few([f"{k} {_fmt_shape(shapes[k])}" for k in missing]) + ")")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} ("
                         + _few(unexpected) + ")")
        first = _few([f"{k} {_fmt_shape(s)}" for k, s in shapes.items()], 3)
        raise _err(path, ", ".join(parts), f"the {len(shapes)} keys of pytorch/examples' TransformerNet ({first})")
    bad_shape = [k for k in shapes if tuple(state[k].shape) != shapes[k]]
    if bad_shape:
        raise _err(path, "wrong shapes: " + _few([f"{k} is {_fmt_shape(state[k].shape)} (TransformerNet has "
                                                  f"{_fmt_shape(shapes[k])})" for k in bad_shape]),
                   "the tensor shapes of pytorch/examples' TransformerNet")
    bad_kind = [k for k in shapes if state[k].layout != torch.strided or not state[k].is_floating_point()]
    if bad_kind:
        raise _err(path, "not dense floating-point tensors: " + _few([
            f"{k} ({state[k].dtype}{'' if state[k].layout == torch.strided else ', ' + str(state[k].layout)})"
            for k in bad_kind]), "dense floating-point tensors")
    out = {}
    bad_value = []
    for k in shapes:
        t = state[k].detach().to(torch.float32).contiguous()
        n = int((~torch.isfinite(t)).sum())
        if n:
            bad_value.append(f"{k} ({n} NaN/Inf value{'s' if n > 1 else ''})")
        out[k] = t
    if bad_value:
        raise _err(path, "non-finite values: " + _few(bad_value), "finite float32 values")
    return out, notes


def load_transformer_state(path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a pytorch/examples ``fast_neural_style`` checkpoint as a ``TransformerNet`` state_dict.

    ``path``: a ``torch.save`` file (``.pth``/``.pt``/``.model``, zip or legacy format) read with
    ``torch.load(map_location="cpu", weights_only=True)``, or a ``.safetensors`` file (the format is
    taken from the file's first bytes). It may hold the state_dict itself or a dict with a
    ``"state_dict"`` or ``"model"`` entry holding one. A leading ``module.`` (DataParallel) prefix is
    stripped; ``running_mean``/``running_var`` keys of the instance norms (pre-0.4 PyTorch) and
    ``num_batches_tracked`` keys are dropped. Returns ``(state_dict, notes)``: the 62 tensors in
    ``TransformerNet``'s key order, as float32, and a list of what was changed, one sentence each.

    Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` for anything else: an
    unreadable or truncated file, a pickle that needs code, missing or unexpected keys, wrong
    shapes, non-floating or non-finite tensors.
    """
    path = check_file(path)
    kind = _sniff(path)
    if kind == "torch":
        obj = _read_torch(path)
    elif kind == "safetensors":
        obj = _read_safetensors(path)
    elif kind in ("t7", "t7-ascii"):
        raise _err(path, "is a Torch7 .t7 file, not a PyTorch state_dict (read it with load_t7_model or "
                   "load_johnson)", _PTH_EXPECTED)
    else:
        raise _err(path, "is not a torch.save file or a safetensors file (its first bytes are neither a zip "
                   "archive, a pickle nor a safetensors header)", _PTH_EXPECTED)
    return _check_state(path, obj)


# --------------------------------------------------------------------------------------------
# jcjohnson/fast-neural-style .t7 models
# --------------------------------------------------------------------------------------------

_T7_EXPECTED = ("a jcjohnson/fast-neural-style .t7 checkpoint (torch.save of a table whose model field is an "
                "nn.Sequential)")

# Per-channel constants of the two preprocessings of jcjohnson's preprocess.lua.
_VGG_MEAN_BGR = (103.939, 116.779, 123.68)
_RESNET_MEAN = (0.485, 0.456, 0.406)
_RESNET_STD = (0.229, 0.224, 0.225)
_MAX_DEPTH = 64


class TorchTransformer(nn.Module):
    """A jcjohnson/fast-neural-style network converted from Torch: RGB 0-255 ``[B, 3, H, W]`` in,
    RGB 0-255 out, like ``TransformerNet``.

    ``body`` is the converted ``nn.Sequential`` (``body[i]`` is the checkpoint's
    ``model.modules[i]``, 0-based as in torchfile's lists); it runs in the space of the model's
    ``preprocessing``: ``"vgg"`` (BGR, 0-255, minus the mean pixel [103.939, 116.779, 123.68] in
    B, G, R order) or ``"resnet"`` (RGB in [0, 1], minus [0.485, 0.456, 0.406], divided by
    [0.229, 0.224, 0.225]). ``forward`` converts the input into that space and the body's output
    back (not clamped: the in-graph tanh x 150 can leave 0-255 slightly). Torch's test script also
    applies an optional 3x3 median filter to the output; that is not part of the model.
    """

    def __init__(self, body: nn.Sequential, preprocessing: str = "vgg"):
        super().__init__()
        if preprocessing not in ("vgg", "resnet"):
            raise ValueError(f"preprocessing must be 'vgg' or 'resnet', got {preprocessing!r}")
        self.body = body
        self.preprocessing = preprocessing

    def extra_repr(self) -> str:
        return f"preprocessing={self.preprocessing!r}"

    @staticmethod
    def _vec(values, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"TorchTransformer takes a floating-point RGB 0-255 tensor [B, 3, H, W], got {got}")
        if self.preprocessing == "vgg":
            mean = self._vec(_VGG_MEAN_BGR, x)
            return (self.body(x.flip(1) - mean) + mean).flip(1)
        mean, std = self._vec(_RESNET_MEAN, x), self._vec(_RESNET_STD, x)
        return (self.body((x / 255.0 - mean) / std) * std + mean) * 255.0


class _ConcatTable(nn.ModuleList):
    """nn.ConcatTable: every branch on the same input; returns the list of their outputs."""

    def forward(self, x):
        return [branch(x) for branch in self]


class _CAddTable(nn.Module):
    """nn.CAddTable: the sum of a list of tensors."""

    def forward(self, xs):
        if not isinstance(xs, (list, tuple)) or not xs:
            raise ValueError("CAddTable takes a non-empty list of tensors (the output of a ConcatTable)")
        out = xs[0]
        for t in xs[1:]:
            out = out + t
        return out


class _MulConstant(nn.Module):
    def __init__(self, constant: float):
        super().__init__()
        self.constant = float(constant)

    def extra_repr(self) -> str:
        return f"{self.constant!r}"

    def forward(self, x):
        return x * self.constant


class _ShaveImage(nn.Module):
    """jcjohnson's nn.ShaveImage: crops ``size`` pixels from each of the four borders."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def forward(self, x):
        s = self.size
        h, w = x.shape[-2], x.shape[-1]
        if h <= 2 * s or w <= 2 * s:
            raise ValueError(f"ShaveImage({s}) needs an input larger than {2 * s}x{2 * s}, got {h}x{w}")
        return x[..., s:h - s, s:w - s]


class _TorchBatchNorm(nn.Module):
    """nn.SpatialBatchNormalization as Torch's test mode runs it: always the running statistics."""

    def __init__(self, mean, var, weight, bias, eps: float):
        super().__init__()
        self.register_buffer("running_mean", mean)
        self.register_buffer("running_var", var)
        self.weight = None if weight is None else nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"{self.running_mean.numel()}, eps={self.eps}, affine={self.weight is not None}"

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


def _import_torchfile():
    try:
        import torchfile
    except ImportError:
        raise ImportError("reading .t7 files needs the torchfile package: pip install torchfile") from None
    return torchfile


def _reader_class(torchfile):
    class Reader(torchfile.T7Reader):
        """torchfile's reader with Torch's C ``long`` of a fixed size (8 bytes: files written on
        64-bit Linux and macOS; 4 on retry), whatever this platform's ``long`` is."""

        long_format = "<q"

        def _left(self) -> int:
            return os.fstat(self.f.fileno()).st_size - self.f.tell()

        def read_long(self):  # storage sizes and offsets: never more than the bytes left
            v = self._read(self.long_format)[0]
            if v > self._left():
                raise EOFError(f"a storage size or offset ({v}) larger than the rest of the file")
            return v

        def read_string(self, disable_utf8=False):
            n = self.read_int()
            if n < 0:
                raise ValueError(f"a negative string length ({n})")
            if n > self._left():
                raise EOFError(f"a string length ({n}) larger than the rest of the file")
            s = self.f.read(n)
            return s if disable_utf8 or not self.utf8_decode_strings else s.decode("utf8")

        def read_long_array(self, n):
            return [self.read_long() for _ in range(n)]

    return Reader


def _parse_t7(path: str):
    torchfile = _import_torchfile()
    import numpy as np  # noqa: F401  (torchfile needs it; fail here, not in the middle of a read)

    reader_cls = _reader_class(torchfile)
    first_error = None
    for long_format in ("<q", "<i"):
        try:
            with open(path, "rb") as f, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reader = reader_cls(f, force_8bytes_long=True)
                reader.long_format = long_format
                return reader.read_obj()
        except RecursionError:
            detail = "objects nested too deeply"
        except (struct.error, EOFError):
            detail = "the file ends early: truncated"
        except MemoryError:
            detail = "a size too large for memory"
        except Exception as exc:  # noqa: BLE001 - a corrupt file can fail anywhere in torchfile
            detail = f"{type(exc).__name__}: {_first_line(str(exc))}".rstrip(": ")
        if first_error is None:
            first_error = detail
    raise _err(path, f"cannot parse it as a Torch7 binary file ({first_error})", _T7_EXPECTED)


def _kind(value) -> str:
    typename = getattr(type(value), "__name__", "?")
    if typename == "TorchObject":
        return _typename(value)
    return {"hashable_uniq_dict": "table", "list": "table", "bytes": "string", "ndarray": "tensor",
            "NoneType": "nil", "int": "number", "float": "number", "bool": "boolean"}.get(typename, typename)


def _typename(obj) -> str:
    name = obj.torch_typename()
    return name.decode("latin-1") if isinstance(name, bytes) else str(name)


def _table(value) -> dict | None:
    """A torchfile table as a dict with str keys (an empty table comes back as [])."""
    if isinstance(value, list):
        return {} if not value else None
    if not isinstance(value, dict):
        return None
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in value.items()}


def _in_storage(a) -> bool:
    """Whether every element of ``a`` (a numpy view torchfile made with as_strided) lies inside the
    storage array it was made from."""
    root = a
    while not (hasattr(root, "flags") and root.flags.owndata):
        root = getattr(root, "base", None)
        if root is None:
            return False
    if a.size == 0:
        return True
    lo = hi = a.__array_interface__["data"][0]
    for n, s in zip(a.shape, a.strides):
        if s >= 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    hi += a.itemsize
    start = root.__array_interface__["data"][0]
    return start <= lo and hi <= start + root.nbytes


class _Layer:
    """The fields of one Torch module, read with checks."""

    def __init__(self, path: str, where: str, obj, dtype: torch.dtype):
        self.path, self.where, self.dtype = path, where, dtype
        self.type = _typename(obj)
        fields = _table(obj._obj)
        if fields is None:
            raise self.error("its fields", f"are a {_kind(obj._obj)}", "a table of fields")
        self.fields = fields

    def error(self, name: str, problem: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {self.type} at {self.where}: {name} {problem}; expected {expected}")

    def has(self, name: str) -> bool:
        return self.fields.get(name) is not None

    def number(self, name: str, default=None, *, integer: bool = True, minimum=None, maximum=None):
        what = "an integer" if integer else "a finite number"
        if minimum is not None and maximum is not None:
            what += f" equal to {minimum}" if minimum == maximum else f" from {minimum} to {maximum}"
        elif minimum is not None or maximum is not None:
            what += f" >= {minimum}" if minimum is not None else f" <= {maximum}"
        v = self.fields.get(name)
        if v is None:
            if default is None:
                raise self.error(name, "is missing", what)
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(name, f"is a {_kind(v)}", what)
        if not math.isfinite(v) or (integer and v != int(v)):
            raise self.error(name, f"is {v!r}", what)
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise self.error(name, f"is {v!r}", what)
        return int(v) if integer else float(v)

    def boolean(self, name: str, default: bool) -> bool:
        v = self.fields.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(name, f"is a {_kind(v)}", "a boolean")
        return v

    def tensor(self, name: str, shape, describe: str, *, optional: bool = False, alt_shapes=()):
        import numpy as np

        want = f"a float tensor of shape {_fmt_shape(shape)} ({describe})"
        v = self.fields.get(name)
        if v is None or (isinstance(v, np.ndarray) and v.size == 0 and optional):
            if optional:
                return None
            raise self.error(name, "is missing", want)
        if not isinstance(v, np.ndarray):
            raise self.error(name, f"is a {_kind(v)}", want)
        if v.dtype not in (np.float32, np.float64):
            raise self.error(name, f"has dtype {v.dtype}", want)
        if tuple(v.shape) != tuple(shape) and tuple(v.shape) not in alt_shapes:
            raise self.error(name, f"has shape {_fmt_shape(v.shape)}", want)
        if not _in_storage(v):
            raise self.error(name, "points outside its storage", want + " inside its storage")
        t = torch.from_numpy(np.array(v, dtype=v.dtype, copy=True)).reshape(shape).to(self.dtype)
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise self.error(name, f"holds {bad} NaN/Inf value{'s' if bad > 1 else ''}", want + ", finite")
        return t


def _check_channels(layer: _Layer, cin, expected: int, what: str) -> None:
    if cin is not None and cin != expected:
        raise layer.error(what, f"is {expected} but the layer receives {cin} channels",
                          f"{cin}, the channels of the previous layer's output")


def _conv(layer: _Layer, cin):
    nin = layer.number("nInputPlane", minimum=1)
    nout = layer.number("nOutputPlane", minimum=1)
    _check_channels(layer, cin, nin, "nInputPlane")
    kw, kh = layer.number("kW", minimum=1), layer.number("kH", minimum=1)
    dw, dh = layer.number("dW", 1, minimum=1), layer.number("dH", 1, minimum=1)
    if layer.has("padding"):  # nn before the padW/padH split
        pw = ph = layer.number("padding", minimum=0)
    else:
        pw = layer.number("padW", 0, minimum=0)
        ph = layer.number("padH", 0, minimum=0)
    layer.number("groups", 1, minimum=1, maximum=1)  # cudnn layers record it
    shape = (nout, nin, kh, kw)
    w = layer.tensor("weight", shape, "nOutputPlane, nInputPlane, kH, kW", alt_shapes=[(nout, nin * kh * kw)])
    b = layer.tensor("bias", (nout,), "nOutputPlane", optional=True)
    conv = nn.Conv2d(nin, nout, (kh, kw), (dh, dw), (ph, pw), bias=b is not None, dtype=layer.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
    return conv, nout


def _full_conv(layer: _Layer, cin):
    nin = layer.number("nInputPlane", minimum=1)
    nout = layer.number("nOutputPlane", minimum=1)
    _check_channels(layer, cin, nin, "nInputPlane")
    kw, kh = layer.number("kW", minimum=1), layer.number("kH", minimum=1)
    dw, dh = layer.number("dW", 1, minimum=1), layer.number("dH", 1, minimum=1)
    pw, ph = layer.number("padW", 0, minimum=0), layer.number("padH", 0, minimum=0)
    aw = layer.number("adjW", 0, minimum=0, maximum=dw - 1)
    ah = layer.number("adjH", 0, minimum=0, maximum=dh - 1)
    layer.number("groups", 1, minimum=1, maximum=1)
    w = layer.tensor("weight", (nin, nout, kh, kw), "nInputPlane, nOutputPlane, kH, kW")
    b = layer.tensor("bias", (nout,), "nOutputPlane", optional=True)
    conv = nn.ConvTranspose2d(nin, nout, (kh, kw), (dh, dw), (ph, pw), output_padding=(ah, aw),
                              bias=b is not None, dtype=layer.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
    return conv, nout


def _pads(layer: _Layer, minimum):
    left = layer.number("pad_l", minimum=minimum)
    return (left, layer.number("pad_r", left, minimum=minimum), layer.number("pad_t", left, minimum=minimum),
            layer.number("pad_b", left, minimum=minimum))


def _reflection_pad(layer, cin):
    return nn.ReflectionPad2d(_pads(layer, 0)), cin


def _replication_pad(layer, cin):
    return nn.ReplicationPad2d(_pads(layer, 0)), cin


def _zero_pad(layer, cin):  # negative pads crop, as in Torch
    return nn.ZeroPad2d(_pads(layer, None)), cin


def _batch_norm(layer: _Layer, cin):
    import numpy as np

    mean = layer.fields.get("running_mean")
    want = "a 1-D float tensor (nOutput)"
    if mean is None:
        raise layer.error("running_mean", "is missing", want)
    if not isinstance(mean, np.ndarray):
        raise layer.error("running_mean", f"is a {_kind(mean)}", want)
    if mean.ndim != 1 or mean.size == 0:
        raise layer.error("running_mean", f"has shape {_fmt_shape(mean.shape)}", want)
    c = int(mean.shape[0])
    _check_channels(layer, cin, c, "running_mean's length")
    eps = layer.number("eps", 1e-5, integer=False, minimum=0)
    mean = layer.tensor("running_mean", (c,), "nOutput")
    if layer.has("running_var"):
        var = layer.tensor("running_var", (c,), "nOutput")
    elif layer.has("running_std"):  # nn before BatchNormalization version 2 kept 1 / sqrt(var + eps)
        inv_std = layer.tensor("running_std", (c,), "nOutput: 1 / sqrt(running_var + eps)")
        if not bool((inv_std > 0).all()):
            raise layer.error("running_std", "has values <= 0", "positive values (1 / sqrt(running_var + eps))")
        var = inv_std.pow(-2) - eps
    else:
        raise layer.error("running_var", "is missing", f"a float tensor of shape [{c}] (nOutput)")
    if not bool((var + eps > 0).all()):
        raise layer.error("running_var", "has values with running_var + eps <= 0", "variances >= 0")
    affine = layer.boolean("affine", layer.has("weight"))
    weight = layer.tensor("weight", (c,), "nOutput") if affine else None
    bias = layer.tensor("bias", (c,), "nOutput") if affine else None
    return _TorchBatchNorm(mean, var, weight, bias, eps), c


def _instance_norm(layer: _Layer, cin):
    c = layer.number("nOutput", minimum=1)
    _check_channels(layer, cin, c, "nOutput")
    eps = layer.number("eps", 1e-5, integer=False, minimum=0)
    affine = layer.has("weight") or layer.has("bias")
    if affine:  # read (and so check) the tensors before building a module of nOutput channels
        weight, bias = layer.tensor("weight", (c,), "nOutput"), layer.tensor("bias", (c,), "nOutput")
    norm = nn.InstanceNorm2d(c, eps=eps, affine=affine, dtype=layer.dtype)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)
    return norm, c


def _relu(layer: _Layer, cin):
    layer.number("threshold", 0, integer=False, minimum=0, maximum=0)
    layer.number("val", 0, integer=False, minimum=0, maximum=0)
    return nn.ReLU(), cin


def _tanh(layer, cin):
    return nn.Tanh(), cin


def _mul_constant(layer: _Layer, cin):
    return _MulConstant(layer.number("constant_scalar", integer=False)), cin


def _shave(layer: _Layer, cin):
    return _ShaveImage(layer.number("size", minimum=0)), cin


def _identity(layer, cin):
    return nn.Identity(), cin


def _upsample_nearest(layer: _Layer, cin):
    return nn.Upsample(scale_factor=layer.number("scale_factor", minimum=1), mode="nearest"), cin


def _cadd(layer: _Layer, cin):
    if isinstance(cin, list):
        if len(cin) < 1 or any(c is not None and c != cin[0] for c in cin):
            raise layer.error("its input", f"is a table of tensors with {cin} channels", "tensors of equal channels")
        return _CAddTable(), cin[0]
    raise layer.error("its input", "is a single tensor", "a table of tensors (the output of an nn.ConcatTable)")


def _modules(layer: _Layer):
    mods = layer.fields.get("modules")
    if mods is None:
        return []
    if not isinstance(mods, list):
        raise layer.error("modules", f"is a {_kind(mods)} that is not a list", "a list of modules")
    return mods


_CONVERTERS = {
    "nn.SpatialConvolution": _conv,
    "nn.SpatialConvolutionMM": _conv,
    "cudnn.SpatialConvolution": _conv,
    "nn.SpatialFullConvolution": _full_conv,
    "cudnn.SpatialFullConvolution": _full_conv,
    "nn.SpatialReflectionPadding": _reflection_pad,
    "nn.SpatialReplicationPadding": _replication_pad,
    "nn.SpatialZeroPadding": _zero_pad,
    "nn.SpatialBatchNormalization": _batch_norm,
    "cudnn.SpatialBatchNormalization": _batch_norm,
    "nn.InstanceNormalization": _instance_norm,
    "nn.ReLU": _relu,
    "cudnn.ReLU": _relu,
    "nn.Tanh": _tanh,
    "cudnn.Tanh": _tanh,
    "nn.MulConstant": _mul_constant,
    "nn.ShaveImage": _shave,
    "nn.TotalVariation": _identity,
    "nn.Identity": _identity,
    "nn.SpatialUpSamplingNearest": _upsample_nearest,
    "nn.CAddTable": _cadd,
}
_CONTAINERS = ("nn.Sequential", "nn.ConcatTable")
_KNOWN = ", ".join(sorted(set(_CONVERTERS) | set(_CONTAINERS)))


def _convert(path: str, obj, where: str, cin, dtype: torch.dtype, ancestors: tuple):
    """(module, output channels) for one Torch module; channels are an int, None (unknown) or,
    after a ConcatTable, a list."""
    if type(obj).__name__ != "TorchObject":
        raise CheckpointError(f"{path}: {where} is a {_kind(obj)}, not a Torch nn module; expected {_T7_EXPECTED}")
    typename = _typename(obj)
    if typename not in _CONVERTERS and typename not in _CONTAINERS:
        raise CheckpointError(f"{path}: unknown Torch layer {typename} at {where} (fastnst reads: {_KNOWN})")
    if id(obj) in ancestors:
        raise CheckpointError(f"{path}: {typename} at {where} contains itself; expected a tree of modules")
    if len(ancestors) >= _MAX_DEPTH:
        raise CheckpointError(f"{path}: {typename} at {where} is nested {len(ancestors)} containers deep; "
                              f"expected at most {_MAX_DEPTH}")
    layer = _Layer(path, where, obj, dtype)
    if isinstance(cin, list) and typename not in ("nn.CAddTable", "nn.Sequential"):
        raise layer.error("its input", "is a table of tensors (the output of an nn.ConcatTable)",
                          "a single tensor, or nn.CAddTable after an nn.ConcatTable")
    if typename == "nn.Sequential":
        children = []
        for i, child in enumerate(_modules(layer)):
            m, cin = _convert(path, child, f"{where}.{i}", cin, dtype, ancestors + (id(obj),))
            children.append(m)
        return nn.Sequential(*children), cin
    if typename == "nn.ConcatTable":
        branches, outs = [], []
        for i, child in enumerate(_modules(layer)):
            m, c = _convert(path, child, f"{where}.{i}", cin, dtype, ancestors + (id(obj),))
            if isinstance(c, list):
                raise CheckpointError(f"{path}: {_typename(child)} at {where}.{i} outputs a table of tensors; "
                                      "expected every nn.ConcatTable branch to output one tensor")
            branches.append(m)
            outs.append(c)
        if not branches:
            raise layer.error("modules", "is empty", "at least one branch")
        return _ConcatTable(branches), outs
    return _CONVERTERS[typename](layer, cin)


def _load_t7(path, dtype: torch.dtype = torch.float32) -> tuple[TorchTransformer, list[str]]:
    path = check_file(path)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    kind = _sniff(path)
    if kind in ("torch", "safetensors"):
        raise _err(path, f"is a {'torch.save' if kind == 'torch' else 'safetensors'} file, not a Torch7 file (read "
                   "it with load_transformer_state or load_johnson)", _T7_EXPECTED)
    if kind == "t7-ascii":
        raise _err(path, "is a Torch7 file in ASCII format, which fastnst does not read (re-save it with "
                   "torch.save(path, obj) in binary)", _T7_EXPECTED)
    obj = _parse_t7(path)
    notes = []
    preprocessing = "vgg"
    if type(obj).__name__ == "TorchObject":  # scripts/convert_network.lua saves the bare network
        model = obj
        notes.append("the file holds a bare network, with no training options; assuming vgg preprocessing")
    else:
        table = _table(obj)
        if table is None:
            raise _err(path, f"holds a {_kind(obj)}, not a checkpoint table", _T7_EXPECTED)
        model = table.get("model")
        if model is None:
            fields = sorted(str(k) for k in table)
            raise _err(path, f"its checkpoint table has no model field (fields: {_few(fields, 6) or 'none'})",
                       _T7_EXPECTED)
        opt = None if table.get("opt") is None else _table(table["opt"])
        if table.get("opt") is not None and opt is None:
            raise _err(path, f"its opt field is a {_kind(table['opt'])}", "a table of training options")
        p = None if opt is None else opt.get("preprocessing")
        if p is None:
            notes.append("the checkpoint records no preprocessing; assuming vgg (train.lua's default)")
        elif isinstance(p, bytes) and p.decode("latin-1") in ("vgg", "resnet"):
            preprocessing = p.decode("latin-1")
        else:
            shown = repr(p.decode("latin-1")) if isinstance(p, bytes) else f"a {_kind(p)}"
            raise _err(path, f"opt.preprocessing is {shown}", "'vgg' or 'resnet'")
    if type(model).__name__ == "TorchObject" and _typename(model) != "nn.Sequential" \
            and (_typename(model) in _CONVERTERS or _typename(model) in _CONTAINERS):
        raise _err(path, f"its model is an {_typename(model)}", "an nn.Sequential")
    body, cout = _convert(path, model, "model", 3, dtype, ())
    if cout != 3:
        raise _err(path, f"its model outputs {cout} channels", "3 (an RGB image)")
    net = TorchTransformer(body, preprocessing).eval()
    families = {type(m) for m in body.modules()}
    family = "batch norm (eccv16)" if _TorchBatchNorm in families else \
        "instance norm" if nn.InstanceNorm2d in families else "no norm"
    notes.insert(0, f"jcjohnson/fast-neural-style Torch7 model: {len(body)} top-level layers, {family}, "
                    f"{preprocessing} preprocessing")
    return net, notes


def load_t7_model(path, *, dtype: torch.dtype = torch.float32) -> TorchTransformer:
    """Load a jcjohnson/fast-neural-style ``.t7`` checkpoint as a ``TorchTransformer``.

    The file is parsed with the ``torchfile`` package (executes nothing); the checkpoint's ``model``
    (an ``nn.Sequential``; a file holding the bare network, as ``scripts/convert_network.lua``
    writes, is accepted too) is rebuilt from these Torch layers: ``nn.Sequential``,
    ``nn.ConcatTable`` + ``nn.CAddTable``, ``nn.SpatialConvolution(MM)``,
    ``nn.SpatialFullConvolution``, ``nn.Spatial{Reflection,Replication,Zero}Padding``,
    ``nn.SpatialBatchNormalization`` (test mode: running statistics), ``nn.InstanceNormalization``
    (jcjohnson's: instance statistics, biased variance), ``nn.ReLU``, ``nn.Tanh``,
    ``nn.MulConstant``, ``nn.ShaveImage``, ``nn.TotalVariation`` (identity at test time),
    ``nn.Identity``, ``nn.SpatialUpSamplingNearest`` (and the cudnn twins of the conv, BN, ReLU and
    Tanh layers). The preprocessing is ``checkpoint.opt.preprocessing`` ("vgg" or "resnet";
    "vgg", train.lua's default, when not recorded). Parameters are ``dtype`` (float32 by default);
    the module is in eval mode.

    Raises ``FileNotFoundError`` for a missing file, ``ImportError`` without ``torchfile``, and
    ``CheckpointError`` for an unparsable file, an unknown layer, or a missing or misshapen field.
    """
    return _load_t7(path, dtype)[0]


_TORCH_EXTS = (".pth", ".pt", ".model", ".safetensors")


def load_johnson(path) -> tuple[nn.Module, list[str]]:
    """Load any Johnson fast style transfer checkpoint: ``(module, notes)``.

    The file's first bytes choose the loader (a torch.save zip or pickle, or a safetensors header:
    ``TransformerNet`` with ``load_transformer_state``; a Torch7 binary file: ``load_t7_model``);
    failing that, its extension does (``.t7``; ``.pth``/``.pt``/``.model``/``.safetensors``). The
    module takes and returns RGB 0-255 ``[B, 3, H, W]``, in eval mode. ``notes`` says what was
    loaded and what was changed on the way. Raises ``FileNotFoundError`` for a missing file and
    ``CheckpointError`` for anything else.
    """
    path = check_file(path)
    kind = _sniff(path)
    ext = os.path.splitext(path)[1].lower()
    if kind in ("t7", "t7-ascii") or (kind is None and ext == ".t7"):
        return _load_t7(path)
    if kind in ("torch", "safetensors") or (kind is None and ext in _TORCH_EXTS):
        state, notes = load_transformer_state(path)
        net = TransformerNet()
        net.load_state_dict(state)
        net.eval()
        return net, ["pytorch/examples fast_neural_style TransformerNet", *notes]
    raise _err(path, "is not a recognised checkpoint (neither a torch.save file, a safetensors file nor a Torch7 "
               "file)", "a pytorch/examples TransformerNet state_dict (.pth/.pt/.model/.safetensors) or a "
               "jcjohnson/fast-neural-style .t7 checkpoint")
