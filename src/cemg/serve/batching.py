"""Micro-batching for `POST /recommend`: requests that arrive while the generator is busy are scored
together in one `Recommender.recommend_batch` call.

One beam search over many histories costs little more CPU than over one (the model's matrix
products just get taller), so under concurrent load a batch of requests is far cheaper than the
same requests one by one: bench/load_service.py measured 5.2-5.5x less server CPU per request on
the demo run with 1,000 requests in flight, 1.25-2.6x with 64 (docs/reliability.md, "Load"), with
the same items returned. A request that finds the generator idle waits at most `max_wait_ms` for
company (default 0: batches form from the requests that queue while a batch runs).

Written here rather than taken from a serving framework (Ray Serve, Triton, TorchServe all batch):
each is a server of its own to deploy, while this is a queue and one thread inside the FastAPI app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cemg.api import ItemRef, Recommendation, Recommender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    """How `cemg serve` batches requests (`--no-batching`, `--max-batch`, `--max-wait-ms`)."""

    enabled: bool = True
    # Histories scored in one generator call at most; on the demo run a call of 64 takes well under
    # a second on one CPU thread (bench/load_service.py, docs/reliability.md "Load").
    max_batch: int = 64
    # How long a request that finds the generator idle waits for others to join it. 0: no waiting;
    # batches still form from the requests that queue while the generator is busy, which is where
    # the savings come from. On the 2-core demo bench a 2 ms wait saved no more CPU under load, and
    # a lone request paid ~4 ms for it (a sleeping thread waits to be rescheduled on a busy machine).
    max_wait_ms: float = 0.0

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if not 0.0 <= self.max_wait_ms <= 1000.0:
            raise ValueError(f"max_wait_ms must be in 0..1000, got {self.max_wait_ms}")


@dataclass
class _Job:
    history: list[ItemRef]
    k: int
    exclude_history: bool
    future: concurrent.futures.Future


class MicroBatcher:
    """Queues recommendation requests; one worker thread drains the queue and scores up to
    `max_batch` waiting histories with the same `k` and exclusion in one `recommend_batch` call.

    The worker is a thread rather than a task so the beam search never blocks the event loop; an
    async endpoint awaits `recommend`, so the batch size is not capped by a thread pool (behind a
    sync endpoint it was: anyio's 40 threads, measured in docs/reliability.md).
    """

    def __init__(self, recommender: Recommender, max_batch: int = BatchingConfig.max_batch,
                 max_wait_ms: float = BatchingConfig.max_wait_ms):
        BatchingConfig(True, max_batch, max_wait_ms)  # validates
        self.recommender = recommender
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stats_lock = threading.Lock()
        self._sizes: Counter[int] = Counter()  # batch size -> generator calls of that size
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(
        self, history: Sequence[ItemRef], k: int = 10, exclude_history: bool | None = None
    ) -> concurrent.futures.Future[list[Recommendation]]:
        """Queue one request; the future holds its rows (or the batch's error). Unknown items raise
        UnknownItem here, before queuing, so one bad request cannot fail the batch it would join."""
        if isinstance(history, (str, bytes)):
            raise ValueError(f"a history is a list of items, not the string {history!r}")
        for item in history:
            self.recommender.index(item)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer of at least 1, got {k!r}")
        if exclude_history is None:  # resolved now so that None and the run's default share a batch
            exclude_history = self.recommender.config.evaluation.mask_history
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._start_lock:  # with the start check, so no job lands behind close()'s stop mark
            self._ensure_worker()
            self._queue.put(_Job(list(history), int(k), bool(exclude_history), future))
        return future

    async def recommend(
        self, history: Sequence[ItemRef], k: int = 10, exclude_history: bool | None = None
    ) -> list[Recommendation]:
        """`Recommender.recommend`, batched with whatever else is waiting. If the caller is cancelled
        (a client that hung up) before its batch starts, its history is dropped from the batch."""
        return await asyncio.wrap_future(self.submit(history, k, exclude_history))

    def stats(self) -> dict:
        """Generator calls and requests scored so far, and how many calls had each batch size."""
        with self._stats_lock:
            sizes = dict(sorted(self._sizes.items()))
        return {
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000.0,
            "generator_calls": sum(sizes.values()),
            "requests": sum(size * n for size, n in sizes.items()),
            "batch_sizes": {str(size): n for size, n in sizes.items()},
        }

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued requests and stop the worker; later submits start a new one."""
        with self._start_lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    # --- the worker ---------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        # Started on first use, not in __init__: an app that is built but never served (or a test
        # client without its lifespan) then leaves no idle thread behind. Caller holds _start_lock.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, daemon=True, name="cemg-micro-batcher")
            self._thread.start()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            try:
                self._run(batch)
            except Exception:  # a bug here must not kill the worker and hang every later request
                log.exception("micro-batcher: batch of %d failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("the batch this request was in failed"))
            if stop:
                return

    def _run(self, batch: list[_Job]) -> None:
        # set_running_or_notify_cancel drops requests whose caller gave up, and makes the rest
        # uncancellable, so set_result below cannot meet a cancelled future.
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        # Read once: a reload (serve.app) may swap the attribute while this batch is scored.
        recommender = self.recommender
        groups: dict[tuple[int, bool], list[_Job]] = {}
        for job in live:
            groups.setdefault((job.k, job.exclude_history), []).append(job)
        for (k, exclude), jobs in groups.items():
            with self._stats_lock:
                self._sizes[len(jobs)] += 1
            try:
                results = recommender.recommend_batch([job.history for job in jobs], k, exclude)
            except Exception as err:  # every request of the group re-raises it
                for job in jobs:
                    job.future.set_exception(err)
                continue
            for job, rows in zip(jobs, results):
                job.future.set_result(rows)
