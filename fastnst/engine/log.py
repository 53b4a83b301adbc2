"""The training log: one JSON object per step in ``log.jsonl`` (step, epoch, lr, total loss and
every weighted term), and the loss-curve PNG drawn from it with matplotlib."""

from __future__ import annotations

import io
import json
import math
import os

from fastnst.engine.checkpoint import write_bytes_atomic


def read(path: str) -> list[dict]:
    """The log's records; a last line cut short by a killed process is ignored."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def truncate(path: str, step: int) -> list[dict]:
    """Keep the records up to ``step`` (a resumed run rewrites what followed its checkpoint)."""
    kept = [r for r in read(path) if r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in kept).encode()
    write_bytes_atomic(path, lambda f: f.write(text))
    return kept


class Writer:
    def __init__(self, path: str | None):
        self.path = path
        self._f = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the loss-curve plot needs matplotlib: pip install 'fastnst[plot]' "
                          "(or pip install matplotlib), or turn it off with --no-plot") from None


def plot(records: list[dict], path: str, title: str = "") -> str | None:
    """Draw total loss and each term against the step (log scale) into ``path`` (atomic)."""
    if not records:
        return None
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    skip = {"step", "epoch", "lr", "seconds"}
    keys = [k for k in records[0] if k not in skip]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in records]
    positive = True
    for k in keys:
        ys = [r.get(k, math.nan) for r in records]
        positive &= all(y > 0 for y in ys if y == y)
        ax.plot(steps, ys, label=k, linewidth=1.6 if k == "loss" else 1.0)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, lambda f: f.write(buf.getvalue()))
