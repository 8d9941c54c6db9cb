"""A schema-driven client against a live `cemg serve`: schemathesis reads the service's own OpenAPI
description, generates valid and invalid requests for every operation from it, and checks each
answer: no server error, a status the schema declares, a body that matches the declared schema,
the declared content type, and invalid requests rejected.

Only schema-valid requests that name an item the run does not have are allowed a 4xx (404 at
/items, 422 in a /recommend history, 422 for `by=index` with a non-numeric id): which keys exist is
the run's data, not something the schema can state (Beauty has 12,101 keys), so schemathesis'
"schema-valid request rejected" check (ST202) is told so, as its own documentation advises.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extras: pip install -e .[test]")
from schemathesis.config import SchemathesisConfig  # noqa: E402

# Bounded so the whole module stays under ~60 s on 2 shared cores, beam search included.
CONFIG = SchemathesisConfig.from_dict({
    "seed": 15,
    "generation": {"max-examples": 30},
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "422"]}},
})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_service(tiny_run):
    """`cemg serve RUN` as a user starts it: its own process, on a free loopback port."""
    port = _free_port()
    cmd = [sys.executable, "-m", "cemg", "serve", str(tiny_run), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer /health within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_service_answers_as_its_openapi_schema_says(live_service):
    # Each operation's cases are drawn by hypothesis from schemathesis' strategy and checked one by
    # one (rather than schemathesis' pytest plugin, whose fixture-based collection fails under pytest 9).
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{live_service}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/recommend", "/items/{item_id}", "/health"}
    calls = {}
    for operation in operations:
        @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            calls[operation.path] = calls.get(operation.path, 0) + 1
            case.call_and_validate()

        check()
    # every operation was exercised; those with inputs with many generated cases
    assert all(calls.get(op.path, 0) >= 1 for op in operations), calls
    assert calls["/recommend"] >= 10 and calls["/items/{item_id}"] >= 10, calls
