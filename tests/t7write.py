"""A small Torch7 binary serialiser for the tests: just enough of the format ``torch.save`` writes
on a 64-bit little-endian machine to write jcjohnson/fast-neural-style checkpoints.

The format, as Torch7's File:writeObject defines it: every object starts with an int type tag
(0 nil, 1 number, 2 string, 3 table, 4 Torch object, 5 boolean). A number is a double; a boolean
an int 0/1; a string an int length and its bytes. Tables and Torch objects then carry an int
reference index (1, 2, ... in writing order); an object already written is written again as its
tag and index only. A table continues with an int pair count and the key/value pairs; a Torch
object with the strings "V <version>" and its class name, then its own data: a tensor its int
ndim, ndim C longs of sizes, ndim longs of strides (in elements), a long 1-based storage offset
and its storage (nil for an empty tensor); a storage its long element count and raw elements; any
other class (nn modules) the table of its fields.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = 0, 1, 2, 3, 4, 5

_TENSOR_TYPES = {
    np.dtype(np.float32): "Float",
    np.dtype(np.float64): "Double",
    np.dtype(np.int64): "Long",
    np.dtype(np.int32): "Int",
    np.dtype(np.uint8): "Byte",
}


class TorchClass:
    """An instance of a Lua Torch class that serialises as its field table (an nn module)."""

    def __init__(self, typename: str, fields: dict | None = None, version: int = 1):
        self.typename = typename
        self.fields = dict(fields or {})
        self.version = version

    def __repr__(self):
        return f"TorchClass({self.typename!r})"


class Storage:
    """A torch.<Type>Storage: a 1-D block of elements."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(np.asarray(data).reshape(-1))


class Tensor:
    """A torch.<Type>Tensor: a view (sizes, strides in elements, 0-based offset) onto a Storage."""

    def __init__(self, storage: Storage | None, size, stride=None, offset: int = 0):
        self.storage = storage
        self.size = [int(s) for s in size]
        if stride is None:
            stride, acc = [], 1
            for s in reversed(self.size):
                stride.insert(0, acc)
                acc *= s
        self.stride = [int(s) for s in stride]
        self.offset = int(offset)

    @classmethod
    def of(cls, t) -> Tensor:
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if a.size == 0:
            return cls(None, [], [], 0)
        return cls(Storage(a), a.shape)


def empty() -> Tensor:
    """torch.Tensor(): no dimensions, no storage (what clearState leaves in output, gradInput, ...)."""
    return Tensor(None, [], [], 0)


class Writer:
    def __init__(self, f, long_format: str = "<q"):
        self.f = f
        self.long_format = long_format
        self.index: dict[int, int] = {}
        self.keep: list = []  # objects indexed by id() stay alive while writing
        self.tensors: dict[int, Tensor] = {}

    def _int(self, v: int):
        self.f.write(struct.pack("<i", v))

    def _long(self, v: int):
        self.f.write(struct.pack(self.long_format, v))

    def _bytes(self, s: bytes):
        self._int(len(s))
        self.f.write(s)

    def _reference(self, tag: int, obj) -> bool:
        """Write the tag and index; True when the object was written before (index only)."""
        self._int(tag)
        key = id(obj)
        if key in self.index:
            self._int(self.index[key])
            return True
        self.index[key] = len(self.index) + 1
        self.keep.append(obj)
        self._int(self.index[key])
        return False

    def _class_header(self, version: int, typename: str):
        self._bytes(f"V {version}".encode())
        self._bytes(typename.encode())

    def write(self, obj):
        if obj is None:
            self._int(NIL)
        elif isinstance(obj, bool):
            self._int(BOOLEAN)
            self._int(1 if obj else 0)
        elif isinstance(obj, (int, float)):
            self._int(NUMBER)
            self.f.write(struct.pack("<d", float(obj)))
        elif isinstance(obj, (str, bytes)):
            self._int(STRING)
            self._bytes(obj.encode() if isinstance(obj, str) else obj)
        elif isinstance(obj, (dict, list)):
            if self._reference(TABLE, obj):
                return
            items = list(obj.items()) if isinstance(obj, dict) else [(i + 1, v) for i, v in enumerate(obj)]
            self._int(len(items))
            for k, v in items:
                self.write(k)
                self.write(v)
        elif isinstance(obj, torch.Tensor):
            self.write(self._tensor_of(obj))
        elif isinstance(obj, Tensor):
            if self._reference(TORCH, obj):
                return
            dtype = obj.storage.data.dtype if obj.storage is not None else np.dtype(np.float32)
            self._class_header(1, f"torch.{_TENSOR_TYPES[dtype]}Tensor")
            self._int(len(obj.size))
            for s in obj.size:
                self._long(s)
            for s in obj.stride:
                self._long(s)
            self._long(obj.offset + 1)
            self.write(obj.storage)
        elif isinstance(obj, Storage):
            if self._reference(TORCH, obj):
                return
            self._class_header(1, f"torch.{_TENSOR_TYPES[obj.data.dtype]}Storage")
            self._long(obj.data.size)
            self.f.write(obj.data.astype(obj.data.dtype.newbyteorder("<"), copy=False).tobytes())
        elif isinstance(obj, TorchClass):
            if self._reference(TORCH, obj):
                return
            self._class_header(obj.version, obj.typename)
            self.write(obj.fields)
        else:
            raise TypeError(f"t7write cannot write a {type(obj).__name__}")

    def _tensor_of(self, t: torch.Tensor) -> Tensor:
        """The same torch.Tensor object always maps to the same Tensor (so a reference repeats)."""
        if id(t) not in self.tensors:
            self.tensors[id(t)] = Tensor.of(t)
            self.keep.append(t)
        return self.tensors[id(t)]


def save(path, obj, long_format: str = "<q") -> None:
    """Write ``obj`` (None, bool, int, float, str, bytes, dict/list tables, torch.Tensor, Tensor,
    Storage, TorchClass) to ``path`` as torch.save would."""
    with open(path, "wb") as f:
        Writer(f, long_format).write(obj)


def dumps(obj, long_format: str = "<q") -> bytes:
    import io

    buf = io.BytesIO()
    Writer(buf, long_format).write(obj)
    return buf.getvalue()
