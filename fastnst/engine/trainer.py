"""One training loop for every trained method.

A method hands the engine a ``Task`` (its model, data set, loss and sample function, and its
config, a ``TrainConfig`` subclass) and ``train(task, output)`` does the rest:

- Adam with the config's learning rate and schedule, for ``steps`` steps (or ``epochs`` passes);
- ``precision`` fp32 / bf16 / fp16 (autocast; fp16 with loss scaling);
- ``log.jsonl`` in the run folder: every step's total loss and weighted terms, learning rate,
  epoch and elapsed seconds; ``loss.png`` drawn from it at the end; sample images of the
  task's fixed inputs every ``sample_every`` steps in ``samples/``; a tqdm progress bar;
- ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end (model, optimiser,
  schedule, loss scaler, step, RNG states, config; atomic), and ``resume=`` continues from
  one exactly: the data order, crops and every later loss are those of the run that was not
  stopped;
- exported weights at ``output`` (``.safetensors`` or ``.pth``) at the end;
- under torchrun: DistributedDataParallel (gloo on CPU, nccl on CUDA), ``batch_size`` is the
  global batch split over the ranks, rank 0 alone writes. Losses are batch means, so 2
  processes x 2 images step exactly as 1 process x 4 images (up to float rounding).

The run folder defaults to ``<output without extension>_run``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from fastnst.data import make_loader
from fastnst.engine import checkpoint as ckpt
from fastnst.engine import dist, precision, progress
from fastnst.engine import log as runlog
from fastnst.engine.config import TrainConfig, differences, to_dict

Batch = Any


@dataclasses.dataclass
class Task:
    """What a method gives the engine.

    - ``method``: its name (checkpoints of another method are refused on resume).
    - ``config``: its config (a ``TrainConfig`` subclass), saved in every checkpoint.
    - ``model``: the network to train (float32; the engine moves it to the device).
    - ``dataset``: items for ``fastnst.data.make_loader``.
    - ``loss(model, batch) -> (total, {name: weighted term, detached})``: the loss to minimise
      (a batch mean) and its terms for the log (``fastnst.losses.PerceptualLoss``'s output).
    - ``sample(model) -> [N, 3, H, W] in [0, 1]`` or None: images of fixed inputs.
    - ``to(device)``: move whatever else the loss needs (the encoder, targets).
    - ``export(model) -> state_dict``: the weights to export (default ``model.state_dict()``).
    """

    method: str
    config: TrainConfig
    model: nn.Module
    dataset: Any
    loss: Callable[[nn.Module, Batch], tuple]
    sample: Callable[[nn.Module], torch.Tensor] | None = None
    to: Callable[[torch.device], None] | None = None
    export: Callable[[nn.Module], dict] | None = None


@dataclasses.dataclass
class TrainResult:
    steps: int
    records: list[dict]
    seconds: float
    output: str | None
    checkpoint: str | None
    log: str | None
    plot: str | None

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records]


def default_run_dir(output: str) -> str:
    return os.path.splitext(os.path.abspath(output))[0] + "_run"


def _schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    kind, decay = cfg.lr_schedule, float(cfg.lr_decay)
    if kind == "constant":
        return lambda s: 1.0
    if kind == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / max(total, 1)))
    if kind == "inverse":
        return lambda s: 1.0 / (1.0 + decay * s)
    raise ValueError(f"lr_schedule must be constant, cosine or inverse, got {kind!r}")


def _positive_int(name: str, v, zero_ok: bool = False) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if zero_ok else 1):
        raise ValueError(f"{name} must be an integer >= {0 if zero_ok else 1}, got {v!r}")
    return v


def check_config(cfg: TrainConfig) -> None:
    """The engine's part of a config: numbers in range, a precision the device runs."""
    if cfg.steps is not None:
        _positive_int("steps", cfg.steps)
    _positive_int("epochs", cfg.epochs)
    _positive_int("batch_size", cfg.batch_size)
    _positive_int("num_workers", cfg.num_workers, zero_ok=True)
    _positive_int("checkpoint_every", cfg.checkpoint_every)
    _positive_int("sample_every", cfg.sample_every, zero_ok=True)
    for name in ("lr", "lr_decay"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 \
                or (name == "lr" and v == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {v!r}")
    if cfg.lr_schedule not in ("constant", "cosine", "inverse"):
        raise ValueError(f"lr_schedule must be constant, cosine or inverse, got {cfg.lr_schedule!r}")
    precision.check(cfg.precision, cfg.device)
    if cfg.plot:
        runlog.require_matplotlib()


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _tile(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] → [1, 3, H, N·W] (side by side)."""
    images = images.detach().float().clamp(0, 1).cpu()
    return torch.cat(list(images), dim=-1).unsqueeze(0)


def check_writable(path: str, overwrite: bool, what: str = "output") -> None:
    """Refuse, before any work, an output path that could not be written: a folder, an
    existing file without ``overwrite``, a missing parent folder, or one where no file can be
    created (tested by creating and removing an empty temporary file)."""
    import tempfile

    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write the {what} {path}: it is a folder, expected a file path")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write the {what} {path}: folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    except OSError as e:
        raise type(e)(f"cannot write the {what} {path}: cannot create a file in {parent}: "
                      f"{e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def prepare_output(output: str, run_dir: str | None, resume: str | None, overwrite: bool) -> str:
    """Check, before any work, that the exported weights and the run folder can be written;
    returns the run folder."""
    ext = os.path.splitext(output)[1].lower()
    if ext not in (".safetensors", ".pth", ".pt"):
        raise ValueError(f"the output weights are a .safetensors, .pth or .pt file, got {output!r}")
    # Resuming rewrites the run's own output: allowed without --overwrite.
    check_writable(output, overwrite or resume is not None, "output weights")
    run_dir = os.path.abspath(run_dir or default_run_dir(output))
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise NotADirectoryError(f"run folder {run_dir} exists and is not a folder")
    existing = os.path.join(run_dir, "checkpoint.pt")
    if resume is None and os.path.exists(existing) and not overwrite:
        raise FileExistsError(f"run folder {run_dir} already holds a run ({existing}); resume it with "
                              f"--resume {existing}, or start over with overwrite=True")
    if os.path.isdir(run_dir):
        check_writable(existing, True, "checkpoint")
    elif not os.path.isdir(os.path.dirname(run_dir)):
        raise FileNotFoundError(f"cannot create the run folder {run_dir}: "
                                f"{os.path.dirname(run_dir)} does not exist")
    return run_dir


def train(task, output: str, *, run_dir: str | None = None, resume: str | None = None,
          progress_bar: bool = True, overwrite: bool = False) -> TrainResult:
    """Train ``task.model`` (see the module docstring); returns the steps run, the log records
    and the written paths (None on ranks other than 0).

    ``task`` is a ``Task``, or ``(config, make_task)``: then the config and the output paths
    are checked first and ``make_task(config)`` (which loads data and weights) runs after, so
    a bad setting or an unwritable output is refused before any of that work."""
    if isinstance(task, tuple):
        cfg, make_task = task
    else:
        cfg, make_task = task.config, None
    check_config(cfg)
    run_dir = prepare_output(output, run_dir, resume, overwrite)
    if make_task is not None:
        task = make_task(cfg)
    w = dist.setup(cfg.device)
    try:
        return _train(task, cfg, w, output, run_dir, resume, progress_bar)
    finally:
        dist.teardown(w)


def _train(task: Task, cfg: TrainConfig, w: dist.World, output: str, run_dir: str, resume,
           progress_bar) -> TrainResult:
    if cfg.batch_size % w.size:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the number of processes ({w.size})")
    local_batch = cfg.batch_size // w.size
    if len(task.dataset) < cfg.batch_size:
        raise ValueError(f"the data set has {len(task.dataset)} items, fewer than one batch "
                         f"(batch_size {cfg.batch_size})")
    device = w.device
    ck = None
    if resume is not None:
        ck = ckpt.load(resume, task.method)
        diff = differences(ck["config"], cfg)
        if diff:
            raise ckpt.CheckpointError(f"--resume {resume}: the run was started with other settings: "
                                       + "; ".join(diff[:6]) + " (a resumed run keeps them; only steps, "
                                       "epochs, checkpoint_every, sample_every, plot, num_workers and device "
                                       "may change)")
        # Another process count is fine: the global batch and data order do not depend on it.
    model = task.model.to(device)
    if task.to is not None:
        task.to(device)
    if ck is not None:
        ckpt.load_state(model, ck["model"], f"--resume {resume}: its weights do not fit the model")
    model.train()
    net = dist.wrap(model, w)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    loader = make_loader(task.dataset, batch_size=local_batch, shuffle=True, num_workers=cfg.num_workers,
                         seed=cfg.seed, drop_last=True, num_replicas=w.size, rank=w.rank)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError(f"the data set has {len(task.dataset)} items: not one full batch of "
                         f"{cfg.batch_size} over {w.size} process(es)")
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total))
    scaler = precision.grad_scaler(cfg.precision, device)
    step = 0
    if ck is not None:
        try:
            opt.load_state_dict(ck["optimizer"])
            if ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler") is not None:
                scaler.load_state_dict(ck["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"--resume {resume}: its optimiser state does not fit: {e}") from None
        step = int(ck["step"])
        _set_rng_state(ck["rng"], device)
        if step >= total:
            raise ValueError(f"--resume {resume}: the run already did {step} steps; ask for more "
                             f"with --steps (now {total})")
    writer = w.is_writer
    log_path = os.path.join(run_dir, "log.jsonl")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    records: list[dict] = []
    if writer:
        os.makedirs(run_dir, exist_ok=True)
        ckpt.remove_stale(ckpt_path)
        if ck is not None:
            records = runlog.truncate(log_path, step)
        elif os.path.exists(log_path):
            os.unlink(log_path)
    dist.barrier(w)
    log = runlog.Writer(log_path if writer else None)
    bar = progress.bar(total, f"{task.method}", progress_bar and writer, initial=step)
    t0 = time.perf_counter() - (records[-1]["seconds"] if records else 0.0)

    def save_checkpoint() -> None:
        if not writer:
            return
        ckpt.save({"fastnst_checkpoint": ckpt.FORMAT, "method": task.method, "config": to_dict(cfg),
                   "step": step, "model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                   "scheduler": sched.state_dict(), "scaler": None if scaler is None else scaler.state_dict(),
                   "rng": _rng_state(device), "world_size": w.size, "epoch": step // per_epoch},
                  ckpt_path)

    def save_sample() -> None:
        if not writer or task.sample is None:
            return
        from fastnst.image import save_image

        was = model.training
        model.eval()
        with torch.no_grad(), precision.autocast(cfg.precision, device):
            imgs = task.sample(_unwrap(model))
        model.train(was)
        if imgs is not None:
            os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
            save_image(_tile(imgs), os.path.join(run_dir, "samples", f"step_{step:07d}.png"), overwrite=True)

    try:
        while step < total:
            epoch, within = divmod(step, per_epoch)
            loader.set_epoch(epoch)
            loader.sampler.skip_next(within * local_batch)
            for batch in loader:
                batch = _to_device(batch, device)
                with precision.autocast(cfg.precision, device):
                    loss, terms = task.loss(net, batch)
                if not torch.isfinite(loss.detach()).all():
                    raise FloatingPointError(f"step {step + 1}: the loss is {loss.item()} "
                                             f"({', '.join(f'{k}={float(v):.4g}' for k, v in terms.items())}); "
                                             "lower the learning rate or the loss weights")
                lr_now = sched.get_last_lr()[0]
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                sched.step()
                step += 1
                values = {"loss": float(loss.detach())}
                values.update({k: float(v.detach()) for k, v in terms.items()})
                values = dist.mean_over_ranks(values, w)
                rec = {"step": step, "epoch": epoch, "lr": lr_now, **values,
                       "seconds": round(time.perf_counter() - t0, 4)}
                records.append(rec)
                log.write(rec)
                bar.update(1)
                bar.set_postfix_str(f"loss {values['loss']:.4g}", refresh=False)
                if step % cfg.checkpoint_every == 0 or step == total:
                    save_checkpoint()
                if cfg.sample_every and (step % cfg.sample_every == 0 or step == total):
                    save_sample()
                if step >= total:
                    break
    finally:
        bar.close()
        log.close()
    out_path = plot_path = None
    if writer:
        meta = {"fastnst_method": task.method, "fastnst_config": to_dict(cfg), "fastnst_step": step}
        state = task.export(_unwrap(model)) if task.export else _unwrap(model).state_dict()
        out_path = ckpt.export_weights(state, output, meta)
        if cfg.plot:
            plot_path = runlog.plot(runlog.read(log_path), os.path.join(run_dir, "loss.png"),
                                    f"fastnst {task.method}")
    dist.barrier(w)
    return TrainResult(step, records, time.perf_counter() - t0, out_path, ckpt_path if writer else None,
                       log_path if writer else None, plot_path)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch
