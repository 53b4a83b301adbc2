"""argparse options generated from a method's config dataclass (``fastnst.engine.option``
fields): the method is the one source of names, types, defaults, choices and help texts.

- ``--field-name`` per field (or the field's ``flag``); bools get ``--x / --no-x``; tuples of
  strings are comma-separated; ``int | None`` and ``str | None`` take a value or keep None.
- Parsed values land in ``args`` only when given (``argparse.SUPPRESS``), so ``build`` can tell
  a given option from a default: a resumed run takes every option not given from its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _names(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return items


def _base(tp):
    """(base type, optional) of an annotation such as ``int | None``."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _dest(f: dataclasses.Field) -> str:
    return "cfg_" + f.name


def add_config(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), title: str | None = None) -> None:
    """One option per field of ``cls`` (except ``skip`` and fields with ``cli=False``)."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    group = parser.add_argument_group(title) if title else parser
    own = set(cls.__dict__.get("__annotations__", {}))
    fields = dataclasses.fields(cls)  # the method's own settings first, then the inherited ones
    for f in [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]:
        meta = f.metadata
        if f.name in skip or not meta.get("cli", True):
            continue
        tp, optional = _base(hints[f.name])
        default = getattr(defaults, f.name)
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        helptext = meta.get("help", "")
        if meta.get("required"):
            helptext += " (required)"
        elif tp is bool:
            pass
        elif default is not None:
            shown = ",".join(default) if isinstance(default, tuple) else default
            helptext += f" (default: {shown})"
        kw = dict(dest=_dest(f), default=argparse.SUPPRESS, help=helptext)
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               **dict(kw, help=helptext + f" (default: {'on' if default else 'off'})"))
            continue
        origin = typing.get_origin(tp)
        if origin is tuple:
            kw["type"] = _names
            kw["metavar"] = "A,B,..."
        elif tp is float:
            kw["type"] = _finite
        elif tp is int:
            kw["type"] = int
        else:
            kw["type"] = str
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        elif "choices" not in kw and "metavar" not in kw:
            kw["metavar"] = f.name.upper()
        group.add_argument(flag, **kw)


def given(args: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` given on the command line: {field: value}."""
    out = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, _dest(f)):
            out[f.name] = getattr(args, _dest(f))
    return out


def build(args: argparse.Namespace, cls, saved: dict | None = None, command: str = ""):
    """The config: defaults (or, resuming, the checkpoint's ``saved`` settings) overlaid with
    what the command line gave; a required field still missing is an error naming its flag."""
    values = given(args, cls)
    if saved is not None:
        hints = typing.get_type_hints(cls)
        base = {}
        for f in dataclasses.fields(cls):
            if f.name in saved and f.name not in values:
                v = saved[f.name]
                if typing.get_origin(_base(hints[f.name])[0]) is tuple and isinstance(v, list):
                    v = tuple(v)
                base[f.name] = v
        values = {**base, **values}
    missing = [f for f in dataclasses.fields(cls) if f.metadata.get("required") and values.get(f.name) is None]
    if missing:
        flags = ", ".join(f.metadata.get("flag") or "--" + f.name.replace("_", "-") for f in missing)
        raise ValueError(f"{command}: the following arguments are required: {flags}")
    return cls(**values)
