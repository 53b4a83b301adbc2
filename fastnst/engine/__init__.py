"""The training engine shared by every trained method (DESIGN.md, "Methods layer"): the loop,
precision, samples, the JSONL log and loss plot, atomic checkpoints with exact resume,
torchrun / DistributedDataParallel, tqdm progress. It never imports a method."""

from fastnst.engine.checkpoint import CheckpointError, export_weights, read_weights
from fastnst.engine.config import TrainConfig, option
from fastnst.engine.trainer import Task, TrainResult, train

__all__ = ["CheckpointError", "Task", "TrainConfig", "TrainResult", "export_weights", "option",
           "read_weights", "train"]
