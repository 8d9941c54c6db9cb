"""Training checkpoints: a training loop's whole state, written atomically, so a killed run resumes.

A stage's artifact is written only when its training has finished (cemg.artifacts); for a run of
minutes to hours that is not enough, because a `kill -9`, an out-of-memory kill or a lost machine
throws the whole stage away. Every training loop (LightGCN, the RQ-VAE, the generator's shared
loop) therefore saves, at the end of an epoch (and, for loops with long epochs, after a step)
once `every_seconds` have passed since the last save:

- the model's, optimiser's and learning-rate scheduler's state dicts;
- every random stream the loop draws from: torch's global CPU (and CUDA) generator, Python's and
  NumPy's global generators, and the loop's own named `torch.Generator` / `np.random.Generator`s;
- the loop's progress, as keyword arguments: epoch (and step), best-so-far model and score,
  early-stopping counter, curve.

Restoring all of it makes the rest of a resumed run draw the same batches, dropout masks and
negatives as an uninterrupted one, so on CPU it ends with bit-identical weights (tests/test_checkpoint.py,
bench/kill_resume.py). The file is written under a temporary name and renamed into place
(os.replace is atomic on POSIX), so a kill during a save leaves the previous checkpoint intact.

Under torchrun (cemg.distributed) a data-parallel loop's checkpoint is collective: rank 0 writes
one file holding every rank's random streams and each rank restores its own; the model and
optimiser are the same on every rank. A loop that runs on rank 0 alone (LightGCN) takes a
checkpoint with `collective=False`.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cemg import distributed

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
_FORMAT = 1  # bumped when the layout of the saved dict changes; other versions are ignored
Generators = dict[str, "torch.Generator | np.random.Generator"]


def _rng_state(generators: Generators) -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    # weights_only loading accepts tensors and plain Python values, not NumPy arrays.
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": numpy_state,
        "named": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in generators.items():
        if isinstance(gen, torch.Generator):
            state["named"][name] = gen.get_state()
        elif isinstance(gen, np.random.Generator):
            state["named"][name] = gen.bit_generator.state
        else:
            raise TypeError(f"generator {name!r}: expected torch.Generator or numpy Generator, got {type(gen)}")
    return state


def _set_rng_state(state: dict[str, Any], generators: Generators) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].numpy().astype(np.uint32)}
    np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    missing = set(generators) - set(state["named"])
    if missing:
        raise KeyError(f"checkpoint has no state for generators {sorted(missing)}")
    for name, gen in generators.items():
        if isinstance(gen, torch.Generator):
            gen.set_state(state["named"][name])
        else:
            gen.bit_generator.state = state["named"][name]


class TrainingCheckpoint:
    """The resumable state of one training run, kept in `folder/state.pt`.

    `folder=None` is a checkpoint that never saves and never restores, so training functions take
    one unconditionally. `every_seconds=0` saves at every opportunity (tests, bench/kill_resume.py).
    """

    def __init__(self, folder: Path | None, every_seconds: float = 60.0, collective: bool = True):
        self.folder = None if folder is None else Path(folder)
        self.every_seconds = float(every_seconds)
        self.collective = collective
        self._last_save = time.monotonic()
        self.saves = 0

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / STATE_FILE

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def due(self) -> bool:
        """Whether enough time has passed to save again. Under torchrun rank 0's clock decides,
        since saving is a collective step every rank must take together."""
        if self.folder is None:
            return False
        due = time.monotonic() - self._last_save >= self.every_seconds
        return bool(distributed.broadcast_object(due)) if self._together else due

    @property
    def _together(self) -> bool:
        return self.collective and distributed.is_distributed()

    def save(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        generators: Generators | None = None,
        **progress: Any,
    ) -> None:
        """Write the state atomically (temp file + os.replace). Every rank must call it."""
        if self.folder is None:
            return
        rng = _rng_state(generators or {})
        ranks = distributed.gather_object(rng) if self._together else [rng]
        if distributed.is_main() or not self.collective:
            state = {
                "format": _FORMAT,
                "model": model.state_dict(),
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "rng": ranks,
                "progress": progress,
            }
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{STATE_FILE}.tmp-{uuid.uuid4().hex[:8]}"
            start = time.perf_counter()
            try:
                with open(tmp, "wb") as fh:
                    torch.save(state, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            log.debug("checkpoint %s written in %.2fs", self.path, time.perf_counter() - start)
        self._last_save = time.monotonic()
        self.saves += 1

    def restore(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        generators: Generators | None = None,
    ) -> dict[str, Any] | None:
        """Load a saved state into the given objects and return its progress; None when there is
        nothing (usable) to resume from, in which case nothing was changed."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file means "start afresh"
            log.warning("%s: unreadable checkpoint ignored (%s)", self.path, err)
            return None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            log.warning("%s: checkpoint of another format ignored", self.path)
            return None
        model.load_state_dict(state["model"])
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        ranks = state["rng"]
        rank = distributed.rank() if self.collective else 0
        if rank >= len(ranks):
            log.warning("checkpoint saved by %d processes, this is rank %d: using rank 0's random streams",
                        len(ranks), rank)
        _set_rng_state(ranks[rank if rank < len(ranks) else 0], generators or {})
        self._last_save = time.monotonic()
        progress = state["progress"]
        log.info("resuming from %s (%s)", self.path,
                 ", ".join(f"{k} {progress[k]}" for k in ("epoch", "step") if k in progress))
        return progress

    def clear(self) -> None:
        """Remove the checkpoint folder (once the stage's artifact is safely written)."""
        if self.folder is not None and (distributed.is_main() or not self.collective):
            shutil.rmtree(self.folder, ignore_errors=True)
