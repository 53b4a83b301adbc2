"""Checkpoints written atomically and read without executing code.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, numbers, strings,
lists, dicts), so ``torch.load(weights_only=True)`` reads it::

    {"fastnst_checkpoint": 1, "method": "johnson", "config": {...}, "step": 1200,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}, "world_size": 1}

Writes go to a temporary file in the destination's folder, are flushed and fsynced, then
renamed over the destination (``os.replace``, atomic on POSIX and Windows) and the folder is
fsynced: a process killed at any moment leaves either the previous file or the new one, never a
mix. A temporary file left by a killed writer is removed by the next write.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tempfile

import torch

FORMAT = 1
_TMP_SUFFIX = ".tmp"


from fastnst.models.loaders import CheckpointError  # noqa: E402  (one error class for every bad file)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def remove_stale(path: str) -> list[str]:
    """Remove temporary files a killed writer of ``path`` left behind; returns them."""
    folder = os.path.dirname(os.path.abspath(path))
    stale = glob.glob(os.path.join(glob.escape(folder), glob.escape(_tmp_prefix(path)) + "*" + _TMP_SUFFIX))
    for f in stale:
        try:
            os.unlink(f)
        except OSError:
            pass
    return stale


def write_bytes_atomic(path: str, write) -> str:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it to ``path``.
    On any error (or KeyboardInterrupt) the temporary file is removed and ``path`` untouched."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def save(obj: dict, path: str) -> str:
    """``torch.save(obj)`` to ``path`` atomically."""
    return write_bytes_atomic(path, lambda f: torch.save(obj, f))


def _load_raw(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a fastnst checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, truncation, unsafe globals
        import re

        text = str(e)
        glob_ = re.search(r"(?:unsupported GLOBAL|Unsupported global:?) ?(?:GLOBAL )?([\w.]+)", text)
        if glob_:
            why = (f"it needs code to be unpickled ({glob_.group(1)}; fastnst reads checkpoints with "
                   "weights_only=True)")
        else:
            detail = [ln.strip() for ln in text.splitlines() if ln.strip()]
            detail = [ln for ln in detail if "Weights only load failed" not in ln and "file an issue" not in ln
                      and "documentation" not in ln] or [type(e).__name__]
            why = f"it cannot be read ({detail[0][:200]})"
        raise CheckpointError(f"{path} is not a fastnst checkpoint: {why}") from None


def load(path: str, method: str | None = None) -> dict:
    """Read a checkpoint written by ``save`` (``weights_only=True``: nothing is executed) and
    check that it is one, of ``method`` when given."""
    ck = _load_raw(path)
    if not isinstance(ck, dict) or "fastnst_checkpoint" not in ck:
        raise CheckpointError(f"{path} is not a fastnst checkpoint (no 'fastnst_checkpoint' entry; "
                              "exported weights are not resumable: pass the run folder's checkpoint.pt)")
    if ck["fastnst_checkpoint"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ck['fastnst_checkpoint']!r}, this fastnst "
                              f"reads format {FORMAT}")
    for key in ("method", "config", "step", "model", "optimizer"):
        if key not in ck:
            raise CheckpointError(f"{path}: a fastnst checkpoint without its {key!r} entry")
    if method is not None and ck["method"] != method:
        raise CheckpointError(f"{path} is a checkpoint of the {ck['method']!r} method, not {method!r}")
    return ck


def load_state(model, state: dict, context: str) -> None:
    """``model.load_state_dict(state)`` (strict); a mismatch is a CheckpointError
    "<context>: <torch's message on one line>"."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())[:400]
        raise CheckpointError(f"{context}: {detail}") from None


def export_weights(state_dict: dict, path: str, metadata: dict | None = None) -> str:
    """Write a model's weights for use without fastnst's training state: ``.safetensors``
    (with ``metadata`` as JSON strings) or ``.pth`` / ``.pt`` (a plain state_dict that
    ``torch.load(weights_only=True)`` reads). Atomic like ``save``."""
    ext = os.path.splitext(path)[1].lower()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if ext == ".safetensors":
        try:
            from safetensors.torch import save as st_save
        except ImportError:
            raise ImportError("writing .safetensors needs the safetensors package: "
                              "pip install safetensors") from None
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        blob = st_save(tensors, metadata=meta)
        return write_bytes_atomic(path, lambda f: f.write(blob))
    if ext in (".pth", ".pt"):
        buf = io.BytesIO()
        torch.save(tensors, buf)
        return write_bytes_atomic(path, lambda f: f.write(buf.getvalue()))
    raise ValueError(f"exported weights are .safetensors, .pth or .pt files, got {path!r}")


def read_weights(path: str) -> tuple[dict, dict]:
    """(state_dict, metadata) of a file ``export_weights`` wrote, or of a fastnst checkpoint
    (its model entry); nothing executed."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError("reading .safetensors needs the safetensors package: "
                              "pip install safetensors") from None
        try:
            with safe_open(path, "pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({str(e)[:200]})") from None
        return state, meta
    obj = _load_raw(path)
    if isinstance(obj, dict) and "fastnst_checkpoint" in obj:
        return obj["model"], {"method": obj.get("method"), "config": json.dumps(obj.get("config"))}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(f"{path} holds no state_dict (a dict of tensors)")
