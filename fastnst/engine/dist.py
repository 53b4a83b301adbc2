"""Data-parallel training under torchrun: one process per rank, DistributedDataParallel over
gloo (CPU) or nccl (CUDA), rank 0 the only writer.

``setup(device)`` initialises the process group from torchrun's environment (WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) when WORLD_SIZE > 1 and returns a ``World``;
outside torchrun it is a one-process world and nothing is initialised."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from fastnst.data import world as _env_world


@dataclasses.dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints, logs, samples and the exported weights."""
        return self.rank == 0


def setup(device: str | torch.device = "cpu") -> World:
    """The world of this process, with the process group initialised for WORLD_SIZE > 1
    (backend gloo for CPU devices, nccl for CUDA; each rank on ``cuda:LOCAL_RANK``)."""
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        size, rank = dist.get_world_size(), dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return World(size, rank, local, _rank_device(device, local), False)
    size, rank = _env_world()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if size == 1:
        return World(1, 0, 0, device, False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={size} but {var} is not set: start distributed runs with "
                               "torchrun --nproc_per_node=N -m fastnst train ...")
    dev = _rank_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=size)
    return World(size, rank, local, dev, True)


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def wrap(model: torch.nn.Module, w: World) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` in a distributed world, else ``model``."""
    if not w.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [w.device.index] if w.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def mean_over_ranks(values: dict[str, float], w: World) -> dict[str, float]:
    """The mean of each value over the ranks (for logging the global batch's losses)."""
    if not w.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=w.device if w.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    t /= w.size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def barrier(w: World) -> None:
    if w.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, w: World) -> bool:
    """Rank 0's ``flag`` on every rank (so all ranks stop together)."""
    if not w.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, 0)
    return bool(t.item())


def teardown(w: World) -> None:
    if w.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
