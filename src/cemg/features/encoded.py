"""What an item encoder returns before PCA, and the on-disk cache that makes reruns skip the encoder.

Encoding 12k texts or a few thousand posters takes minutes on a CPU; every later stage and every
rerun with the same inputs should pay that once. Vectors are cached per content (a hash of the text,
or of the image bytes) inside one folder per encoder configuration, so a changed item only costs
its own forward pass and two items with the same content share one entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cemg.artifacts import atomic_write_text

log = logging.getLogger(__name__)


class EncoderUnavailable(RuntimeError):
    """A requested encoder cannot be loaded here (package missing, weights not on disk)."""


@dataclass(frozen=True)
class EncodedModality:
    """Raw encoder outputs for one modality, row i for item i, before PCA."""

    vectors: np.ndarray  # (n_items, raw_dim) float32; zero rows where mask is False
    mask: np.ndarray  # (n_items,) bool: the item has this modality and it was encoded
    info: dict = field(default_factory=dict)  # model, raw dim, counts, timings

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.mask.shape != (self.vectors.shape[0],):
            raise ValueError(f"vectors {self.vectors.shape} and mask {self.mask.shape} do not match")


def content_key(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:32]


class VectorCache:
    """Vectors keyed by content hash, stored as append-only shard files in one folder.

    Shards (rather than one file rewritten each time) let an interrupted run keep what it already
    encoded and let two processes add entries to the same folder without clobbering each other.
    `folder=None` gives a cache that remembers nothing. New vectors are written as a shard once
    `flush_every` are pending or, with `flush_seconds`, once the oldest pending one is that old:
    what a killed run loses is bounded by both.
    """

    def __init__(self, folder: Path | None, description: dict | None = None, flush_every: int = 2048,
                 flush_seconds: float | None = None):
        self.folder = None if folder is None else Path(folder)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._pending_since: float | None = None
        self._known: dict[str, np.ndarray] = {}
        self._pending_keys: list[str] = []
        self._pending: list[np.ndarray] = []
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        about = self.folder / "encoder.json"
        if description is not None and not about.exists():
            atomic_write_text(about, json.dumps(description, indent=2, default=str))
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard) as arrays:
                    self._known.update(zip(arrays["keys"].tolist(), arrays["vectors"]))
            except (OSError, ValueError, KeyError) as err:
                log.warning("%s: unreadable cache shard ignored (%s)", shard, err)
        if self._known:
            log.info("%s: %d cached vectors", self.folder, len(self._known))

    def __len__(self) -> int:
        return len(self._known)

    def get(self, key: str) -> np.ndarray | None:
        return self._known.get(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        vector = np.asarray(vector, dtype=np.float32)
        self._known[key] = vector
        if self.folder is None:
            return
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending_keys.append(key)
        self._pending.append(vector)
        if len(self._pending) >= self.flush_every or (
            self.flush_seconds is not None and time.monotonic() - self._pending_since >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if self.folder is None or not self._pending:
            return
        name = f"shard-{uuid.uuid4().hex[:12]}.npz"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(self._pending_keys), vectors=np.stack(self._pending))
        os.replace(tmp, self.folder / name)
        self._pending_keys, self._pending = [], []
