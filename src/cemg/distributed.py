"""Data-parallel training under `torchrun`, with nothing to change in the command or the config.

`torchrun --nproc_per_node=N -m cemg.cli run ...` starts N copies of the pipeline with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. The training loops that scale out (the
RQ-VAE, the T5 and the causal generator) call `setup(device)`, which joins the process group (NCCL
on CUDA, Gloo on CPU) and gives each process its own GPU; then

- every rank builds the same model from the same seed and draws the same shuffled batch list;
  each takes its own slice of every batch (`shard`), so a step sees the same global batch as a
  single process would, and DistributedDataParallel (`wrap`) averages the gradients;
- only rank 0 evaluates and writes artifacts and checkpoints; early-stopping decisions are
  broadcast from it (`broadcast_object`), so every rank stops at the same epoch.

Without WORLD_SIZE > 1 in the environment every function here is a no-op and the loops run as a
single process. Written here rather than taken from a trainer framework (Accelerate, Lightning)
because the loops are plain PyTorch and need only these few calls.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# A non-distributed stage (features on a large catalogue) runs on rank 0 while the others wait at
# a barrier; the default 30 minutes is too short for that.
_TIMEOUT = datetime.timedelta(hours=6)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> str:
    """Join the process group when launched by torchrun (idempotent); return this rank's device.

    "cuda" becomes "cuda:LOCAL_RANK" so each process drives its own GPU.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda")
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=_TIMEOUT)
        log.info("distributed: rank %d of %d (%s, %s)", dist.get_rank(), dist.get_world_size(), backend, device)
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank `src`'s value on every rank (a metric, a stop decision)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum(value: float | int, device: str | torch.device = "cpu") -> float:
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def shard(rows: np.ndarray) -> np.ndarray:
    """This rank's part of a global batch: every world_size-th row from its rank on.

    Ranks hold the same batch list (same seed), so together they cover each batch exactly once,
    the equivalent of DistributedSampler for the loops' length-bucketed batches.
    """
    return rows[rank() :: world_size()] if is_distributed() else rows


def wrap(module: torch.nn.Module, device: str | torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `module` when distributed, else `module` itself.

    Call state_dict() and evaluation on the unwrapped module; only the training forward goes
    through the wrapper (its backward averages the gradients over ranks). `find_unused_parameters`
    for modules holding parameters no step uses (a backbone's unused token table).
    """
    if not is_distributed():
        return module
    device = torch.device(device)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                     find_unused_parameters=find_unused_parameters)


def seed_per_rank(seed: int) -> None:
    """Different dropout masks on each rank (all ranks built the model from `seed` first)."""
    if is_distributed():
        torch.manual_seed(seed + 1_000_003 * rank())


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's module (in place)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)
