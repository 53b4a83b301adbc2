"""Config dataclasses: one source of defaults for a method's Python API, its CLI (generated
from the fields), ``--help``, the benchmarks and the README.

``option(default, help, ...)`` is ``dataclasses.field`` with the CLI's metadata: ``help``,
``choices``, ``flag`` (the option name, default ``--field-name``), ``positional``,
``resumable`` (may differ between a checkpoint and the run that resumes it), ``required``
(None by default but must be given) and ``cli=False`` for fields the command line does not set."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices=None, flag: str | None = None,
           positional: bool = False, resumable: bool = False, cli: bool = True, metavar: str | None = None,
           nargs: str | None = None, required: bool = False):
    kw = {}
    if isinstance(default, (list, dict, set)):
        kw["default_factory"] = (lambda d=default: type(d)(d))
    else:
        kw["default"] = default
    return dataclasses.field(metadata={"help": help, "choices": choices, "flag": flag,
                                       "positional": positional, "resumable": resumable, "cli": cli,
                                       "metavar": metavar, "nargs": nargs,
                                       "required": required}, **kw)


def to_dict(cfg) -> dict:
    """The config as plain JSON-able data (tuples become lists)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def differences(saved: dict, cfg) -> list[str]:
    """Fields (not marked ``resumable``) whose value in ``cfg`` differs from ``saved``."""
    now = to_dict(cfg)
    out = []
    for f in dataclasses.fields(cfg):
        if f.metadata.get("resumable"):
            continue
        if f.name in saved and saved[f.name] != now[f.name]:
            out.append(f"{f.name}={saved[f.name]!r} (now {now[f.name]!r})")
        elif f.name not in saved:
            out.append(f"{f.name} (not in the checkpoint)")
    return out


def replace_from(cfg, saved: dict, keep: set[str]):
    """``cfg`` with every field not in ``keep`` taken from the checkpoint's ``saved`` config
    (a resumed run repeats the settings it was started with)."""
    updates = {}
    for f in dataclasses.fields(cfg):
        if f.name in keep or f.name not in saved:
            continue
        v = saved[f.name]
        cur = getattr(cfg, f.name)
        if isinstance(cur, tuple) and isinstance(v, list):
            v = tuple(v)
        updates[f.name] = v
    return dataclasses.replace(cfg, **updates)


@dataclasses.dataclass
class TrainConfig:
    """The engine's settings, shared by every trained method (each overrides the defaults its
    paper uses)."""

    steps: int | None = option(None, "optimiser steps (default: epochs x batches per epoch)", resumable=True)
    epochs: int = option(2, "passes over the data when --steps is not given", resumable=True)
    batch_size: int = option(4, "images per step (over all processes under torchrun)")
    lr: float = option(1e-3, "Adam learning rate")
    lr_schedule: str = option("constant", "learning-rate schedule: constant, cosine (to 0 at the last "
                              "step) or inverse (lr / (1 + lr_decay x step))",
                              choices=("constant", "cosine", "inverse"))
    lr_decay: float = option(0.0, "decay of the inverse schedule")
    precision: str = option("fp32", "fp32, or bf16 / fp16 autocast (weights and optimiser stay fp32)",
                            choices=("fp32", "bf16", "fp16"))
    seed: int = option(0, "seed of the initial weights, the data order and the crops")
    num_workers: int = option(0, "DataLoader worker processes", resumable=True)
    checkpoint_every: int = option(500, "steps between checkpoints (and one at the end)", resumable=True)
    sample_every: int = option(500, "steps between sample images (0: none)", resumable=True)
    plot: bool = option(True, "write loss.png (needs matplotlib) at the end", resumable=True)
    device: str = option("cpu", "cpu or cuda[:N]", resumable=True)
