"""The HTTP service around a loaded `cemg.api.Recommender` (FastAPI; `cemg serve RUN_DIR` runs it).

    POST /recommend      {"history": ["i0001", 17], "k": 10}  -> ranked items with titles and scores
    GET  /items/{id}     an item's metadata, semantic id, fusion weights and code-prefix neighbours
                         (id is the raw item key; `?by=index` reads it as an item index)
    GET  /health         liveness and what is loaded
    GET  /metrics        request counts, status codes and latency percentiles per endpoint, and the
                         micro-batcher's batch sizes
    POST /admin/reload   reload the run from disk (items added by `cemg items add`); loopback only
    GET  /docs, /openapi.json   FastAPI's OpenAPI description

Errors are 422 (a malformed request, or an item the run does not have in a /recommend history) and
404 (no such item at /items), all with the body `ErrorOut` that the OpenAPI schema declares.

History items are JSON integers (item indices) or strings (raw item keys), never coerced into each
other: on ML-100K the key "5" and the index 5 are different movies.

Reload: the new Recommender is built off to the side and replaces the served one in a single
reference assignment. Each request reads that reference once, so it is answered wholly by the old
object or wholly by the new one; a batch already being scored keeps the object it started with.
Added items only append to the catalogue, so an item index or key valid before a reload stays valid.

Concurrent /recommend requests are scored together in one generator call (cemg.serve.batching);
`create_app(rec, BatchingConfig(enabled=False))` scores each on its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections import Counter, deque
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

import cemg
from cemg.api import Recommender, UnknownItem
from cemg.serve.batching import BatchingConfig, MicroBatcher

ItemIndex = Annotated[StrictInt, Field(ge=0)]
ItemKey = Annotated[StrictStr, Field(min_length=1, max_length=256)]
MAX_HISTORY = 200  # items per request; longer histories are cut to data.max_history anyway
MAX_K = 100
LATENCY_WINDOW = 2048  # latest requests per endpoint kept for the percentiles


# --- request and response bodies -----------------------------------------------------------------


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[ItemIndex | ItemKey] = Field(
        min_length=1, max_length=MAX_HISTORY,
        description="The user's items, oldest first: item indices (integers) or raw item keys (strings).",
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_history: StrictBool | None = Field(
        None, description="Never recommend an item of the history (default: the run's evaluation.mask_history).",
    )


class RecommendedItem(BaseModel):
    rank: int
    item: int
    key: str
    title: str
    score: float
    source: str


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    k: int
    history_length: int
    model: str
    mode: Literal["semantic", "hybrid"] = Field(description="The generator's mode: `semantic` (no per-item "
                                                "parameter, the paper's model class) or `hybrid` (per-item vectors).")


class NeighbourOut(BaseModel):
    item: int
    key: str
    title: str
    shared_levels: int
    distance: float | None


class ItemOut(BaseModel):
    item: int
    key: str
    title: str
    fields: dict[str, str | None]
    image: str | None
    codes: list[int]
    codebook_sizes: list[int]
    disambiguation_level: bool
    fusion_weights: dict[str, float] | None
    neighbours: list[NeighbourOut]


class ErrorDetail(BaseModel):
    loc: list[StrictStr | StrictInt] = Field(description='Where the problem is, e.g. ["body", "history", 2].')
    msg: str
    type: str = Field(description="`unknown_item` for an item the run does not have; otherwise pydantic's "
                                   "error type for a malformed request.")
    input: Any = Field(None, description="The offending value, as received.")
    ctx: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    """Every 404 and 422 answer: FastAPI's validation-error shape, so a client handles both one way."""

    detail: list[ErrorDetail]


class ReloadOut(BaseModel):
    items_before: int
    items: int
    added_items: int = Field(description="Items added after training (`cemg items add`) now served.")
    seconds: float


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    dataset: str
    items: int
    generator: str
    mode: Literal["semantic", "hybrid"]
    device: str
    run_dir: str | None
    uptime_seconds: float


# --- metrics ------------------------------------------------------------------------------------


class RequestMetrics:
    """Per-endpoint request counts, status codes and latency percentiles over the latest `window`
    requests of each endpoint.

    Written here rather than taken from prometheus_client: that library is not a dependency, and its
    histograms give bucket counts while what is wanted here is percentiles in plain JSON.
    """

    def __init__(self, window: int = LATENCY_WINDOW):
        self.window = window
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._status: dict[str, Counter[int]] = {}
        self._latency: dict[str, deque[float]] = {}

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[endpoint] += 1
            self._status.setdefault(endpoint, Counter())[status] += 1
            self._latency.setdefault(endpoint, deque(maxlen=self.window)).append(seconds * 1000.0)

    def snapshot(self) -> dict:
        with self._lock:
            out = {}
            for endpoint, count in sorted(self._counts.items()):
                ms = np.asarray(self._latency[endpoint])
                p50, p90, p99 = np.percentile(ms, [50, 90, 99])
                out[endpoint] = {
                    "count": count,
                    "status": {str(code): n for code, n in sorted(self._status[endpoint].items())},
                    "latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99),
                                   "max": float(ms.max()), "mean": float(ms.mean()), "window": len(ms)},
                }
            return out


# --- the app ------------------------------------------------------------------------------------


def _json_safe(value):
    """Error details echo the client's input, which may hold what JSON cannot carry: NaN/Infinity
    (Python's parser accepts them) and lone UTF-16 surrogates (from `\\ud800` escapes). Starlette's
    encoder raises on both, turning a 422 into a 500; write them as text instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes):  # a non-JSON body is echoed as bytes, not always UTF-8
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        return json.dumps(_json_safe(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _unknown(err: UnknownItem, loc: list, status: int) -> JSONResponse:
    # Same shape as FastAPI's own validation errors, so a client handles both one way.
    detail = [{"loc": loc, "msg": str(err), "type": "unknown_item", "input": err.item}]
    return SafeJSONResponse({"detail": detail}, status_code=status)


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Served:
    """The recommender being served, swapped whole by a reload. Readers take `current` once per
    request; one reload runs at a time."""

    def __init__(self, recommender: Recommender):
        self.current = recommender
        self.reload_lock = threading.Lock()


def create_app(recommender: Recommender, batching: BatchingConfig | None = None,
               reload: Any = None) -> FastAPI:
    """A FastAPI app serving `recommender`; run it with uvicorn (see `cemg serve`). With
    `batching.enabled` (default: BatchingConfig()), concurrent /recommend requests share generator calls.
    `reload`: a function returning a freshly loaded Recommender for POST /admin/reload (default:
    `Recommender.load` of the served run folder and device)."""
    batching = batching or BatchingConfig()
    served = Served(recommender)
    if reload is None and recommender.run_dir is not None:
        def reload():
            return Recommender.load(recommender.run_dir, device=str(recommender.generator.device))
    batcher = MicroBatcher(recommender, batching.max_batch, batching.max_wait_ms) if batching.enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if batcher is not None:  # answers what is queued, then stops the worker thread
            await run_in_threadpool(batcher.close)

    app = FastAPI(
        title="cemg recommender",
        version=cemg.__version__,
        description="Next-item recommendations from a trained CEMG run (semantic ids + generator).",
        lifespan=lifespan,
    )
    metrics = RequestMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        return SafeJSONResponse({"detail": jsonable_encoder(_json_safe(exc.errors()))}, status_code=422)
    started = time.time()

    # The error answers are declared with their body: a bare description left a client (and
    # schemathesis) with a 422 whose content the schema did not describe.
    @app.post("/recommend", response_model=RecommendResponse, responses={422: {
        "model": ErrorOut,
        "description": "A malformed body, or a history item the run does not have (an unknown key or an "
                       "index out of range: `type` is `unknown_item` and `loc` points at the item).",
    }})
    async def recommend(request: RecommendRequest):
        # async so that a batch can hold more requests than a thread pool has threads; the beam
        # search itself runs in the batcher's worker thread (or the pool), never on the event loop.
        recommender = served.current
        try:
            if batcher is not None:
                rows = await batcher.recommend(request.history, request.k, request.exclude_history)
            else:
                rows = await run_in_threadpool(recommender.recommend, request.history, request.k,
                                               request.exclude_history)
        except UnknownItem as err:
            position = next(i for i, item in enumerate(request.history) if item == err.item)
            return _unknown(err, ["body", "history", position], 422)
        return RecommendResponse(
            items=[RecommendedItem(**dataclasses.asdict(row)) for row in rows],
            k=request.k,
            history_length=len(request.history),
            model=recommender.backbone,
            mode=recommender.mode,
        )

    @app.get("/items/{item_id}", response_model=ItemOut, responses={
        404: {"model": ErrorOut, "description": "No such item (the message names it)."},
        422: {"model": ErrorOut, "description": "A malformed query, or `by=index` with an id that is not a "
                                                "non-negative integer."},
    })
    def item(
        item_id: str,
        by: Literal["key", "index"] = Query("key", description="Read item_id as a raw key or an item index."),
        neighbours: int = Query(5, ge=0, le=50, description="Nearest items sharing a code prefix."),
    ):
        recommender = served.current
        catalogue = recommender.catalogue
        ref: int | str = item_id
        if by == "index":
            if not item_id.isascii() or not item_id.isdigit():
                return _unknown(UnknownItem(item_id, f"item index {item_id!r} is not a non-negative integer"),
                                ["path", "item_id"], 422)
            if len(item_id.lstrip("0")) > len(str(len(catalogue))):  # int() refuses 4,300+ digits
                return _unknown(UnknownItem(item_id, f"item index {item_id[:20]}... is out of range: the run "
                                                     f"has {len(catalogue)} items"), ["path", "item_id"], 404)
            ref = int(item_id)
        try:
            explanation = recommender.explain(ref, neighbours)
        except UnknownItem as err:
            return _unknown(err, ["path", "item_id"], 404)
        return ItemOut(**dataclasses.asdict(explanation))

    @app.post("/admin/reload", response_model=ReloadOut, responses={
        403: {"description": "Asked from another host than this one (loopback only)."},
        409: {"description": "The app was built without a run folder to reload from."},
    })
    async def admin_reload(request: Request):
        """Load the run again (e.g. after `cemg items add`) and serve it from the next request on;
        requests in flight finish on the object they started with."""
        if request.client is None or request.client.host not in LOOPBACK:
            return SafeJSONResponse({"detail": "reload is allowed from this host only (loopback)"}, status_code=403)
        if reload is None:
            return SafeJSONResponse({"detail": "this app serves a Recommender without a run folder"}, status_code=409)

        def swap() -> ReloadOut:
            with served.reload_lock:
                start, before = time.perf_counter(), served.current.n_items
                fresh = reload()
                served.current = fresh  # one reference assignment: the swap
                if batcher is not None:
                    batcher.recommender = fresh
                catalogue = fresh.catalogue
                return ReloadOut(items_before=before, items=len(catalogue),
                                 added_items=len(catalogue) - catalogue.n_trained,
                                 seconds=time.perf_counter() - start)

        return await run_in_threadpool(swap)

    @app.get("/health", response_model=HealthOut)
    def health():
        recommender = served.current
        catalogue = recommender.catalogue
        return HealthOut(
            status="ok",
            version=cemg.__version__,
            dataset=catalogue.dataset.name,
            items=len(catalogue),
            generator=recommender.backbone,
            mode=recommender.mode,
            device=str(recommender.generator.device),
            run_dir=None if recommender.run_dir is None else str(recommender.run_dir),
            uptime_seconds=time.time() - started,
        )

    @app.get("/metrics")
    def metrics_endpoint() -> dict:
        """Per endpoint (`METHOD /route`): request count, responses by status, latency percentiles (ms);
        under "batching", the micro-batcher's generator calls and how many had each batch size."""
        out = metrics.snapshot()
        if batcher is not None:
            out["batching"] = batcher.stats()
        return out

    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.served = served
    return app


class MetricsMiddleware:
    """Pure ASGI middleware feeding `RequestMetrics` (Starlette's BaseHTTPMiddleware would wrap every
    response body in a stream). Endpoints are keyed by route template (`GET /items/{item_id}`), which
    the router writes into the shared scope, so arbitrary paths cannot grow the table; requests that
    match no route count under "unmatched"."""

    def __init__(self, app, metrics: RequestMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}  # what the client gets if the app raises before answering

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", None)
            self.metrics.record(f"{scope['method']} {path}" if path else "unmatched", status["code"],
                                time.perf_counter() - start)
