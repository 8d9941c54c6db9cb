"""Items added to a trained run without retraining (cemg.added_items, `cemg items add`, /admin/reload)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

NEW_ITEMS = [
    {"item_id": "n1", "title": "Velvet Matte Lipstick Ruby", "brand": "Acme", "categories": ["lips"],
     "image": "i0001.png"},
    {"item_id": "n2", "title": "Hydrating Night Cream", "brand": "Acme", "categories": ["skin"],
     "image": "no-such-image.png"},
]


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _items_file(tmp_path: Path, rows=NEW_ITEMS, name="new.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file a reader could see (hidden temporaries of a killed writer left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def test_added_items_are_in_catalogue_tree_and_beam_search(tiny_run, tmp_path):
    from cemg.api import Recommender, add_items

    run = _copy(tiny_run, tmp_path)
    summary = add_items(run, _items_file(tmp_path))
    assert (summary.items_before, summary.items_after) == (40, 42)
    assert [a.key for a in summary.added] == ["n1", "n2"]
    assert summary.images_not_found == ["n2"]  # reported; coded from its text alone
    assert summary.added[1].fusion_weights == {"image": 0.0, "text": 1.0}

    rec = Recommender.load(run, device="cpu")
    assert rec.n_items == 42 and rec.catalogue.n_trained == 40
    assert rec.index("n1") == 40 and rec.catalogue.title(41) == "Hydrating Night Cream"
    # unique ids, and both new items are leaves of the generator's prefix tree
    assert len({tuple(r) for r in rec.catalogue.semantic_ids.codes.tolist()}) == 42
    assert {40, 41} <= set(rec.generator.tree.leaf_item.tolist())
    explained = rec.explain("n1")
    assert explained.codes == summary.added[0].codes and explained.neighbours
    # a beam as wide as the catalogue ranks every item: the new ones come back with finite scores
    rows = rec.recommend(["i0001", "i0002", "i0003"], k=42, exclude_history=False)
    assert len(rows) == 42 and {"n1", "n2"} <= {r.key for r in rows}
    assert all(np.isfinite(r.score) for r in rows)

    # a second add extends the first generation; keys are never duplicated
    again = add_items(run, _items_file(tmp_path, [{"item_id": "n3", "title": "Rose Lip Balm", "brand": "Acme",
                                                   "categories": ["lips"]}], "more.jsonl"), collab="zeros")
    assert again.items_after == 43 and Recommender.load(run, device="cpu").index("n3") == 42


def test_a_content_reading_generator_scores_added_items_by_their_content(tiny_run, tmp_path):
    from cemg.api import Recommender, add_items
    from cemg.config import load_config
    from cemg.pipeline import run_pipeline

    run = _copy(tiny_run, tmp_path)
    cfg = load_config(run / "config.yaml", ["generator.causal.content_features=true", f"run_dir={run}"])
    run_pipeline(cfg)  # only the generator and evaluation stages rebuild
    add_items(run, _items_file(tmp_path))
    rec = Recommender.load(run, device="cpu")
    model = rec.generator.model
    assert model.item_content.shape[0] == 42
    # the new rows are their own content (unit text block; the missing image of n2 a zero block)
    dims = [rec.config.features.dim] * 2
    np.testing.assert_allclose(np.linalg.norm(model.item_content[40:, : dims[0]].numpy(), axis=1), 1.0, rtol=1e-5)
    assert np.abs(model.item_content[41, dims[0]:].numpy()).max() == 0.0
    rows = rec.recommend(["i0001", "i0002", "i0003"], k=42, exclude_history=False)
    assert {"n1", "n2"} <= {r.key for r in rows} and all(np.isfinite(r.score) for r in rows)


def test_bad_input_is_named_and_changes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    from cemg.api import add_items
    from cemg.cli import main
    from cemg.data.errors import DataError

    run = _copy(tiny_run, tmp_path)
    before = _snapshot(run)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(NEW_ITEMS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl, line 2: not valid JSON"):
        add_items(run, broken)
    with pytest.raises(DataError, match=r"'i0001' .*already in the catalogue"):
        add_items(run, _items_file(tmp_path, [{**NEW_ITEMS[0], "item_id": "i0001"}], "dup.jsonl"))
    # the command prints one line, no traceback, exit code 2
    monkeypatch.setattr(sys, "argv", ["cemg", "items", "add", str(run), "--items", str(broken), "--quiet"])
    with pytest.raises(SystemExit) as done:
        main()
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert done.value.code == 2 and "broken.jsonl, line 2: not valid JSON" in err and "Traceback" not in err
    assert _snapshot(run) == before


def test_killed_add_leaves_the_run_as_it_was(tiny_run, tmp_path):
    from cemg.added_items import PAUSE_ENV
    from cemg.api import Recommender

    run = _copy(tiny_run, tmp_path)
    before = _snapshot(run)
    env = {**os.environ, PAUSE_ENV: "120", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cemg", "items", "add", str(run), "--items",
                             str(_items_file(tmp_path)), "--quiet"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the new generation is fully written
        assert "about to publish" in line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert _snapshot(run) == before
    assert Recommender.load(run, device="cpu").n_items == 40


def test_reload_under_concurrent_requests(tiny_run, tmp_path):
    from fastapi.testclient import TestClient

    from cemg.api import Recommender, add_items
    from cemg.serve.app import create_app

    run = _copy(tiny_run, tmp_path)
    app = create_app(Recommender.load(run, device="cpu"))
    body = {"history": ["i0001", "i0002", "i0003"], "k": 50, "exclude_history": False}
    with TestClient(app, client=("127.0.0.1", 4000)) as local, TestClient(app) as remote:
        old = [r["key"] for r in local.post("/recommend", json=body).json()["items"]]
        add_items(run, _items_file(tmp_path))
        assert local.get("/health").json()["items"] == 40  # nothing changes before a reload
        assert remote.post("/admin/reload").status_code == 403  # not from loopback

        answers, statuses, stop = [], [], threading.Event()

        def hammer():
            while not stop.is_set():
                response = local.post("/recommend", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    answers.append([r["key"] for r in response.json()["items"]])
                statuses.append(local.get("/items/i0005").status_code)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        reloaded = local.post("/admin/reload")
        for _ in range(3):  # a few requests on the new catalogue too
            local.post("/recommend", json=body)
        stop.set()
        for t in threads:
            t.join()
        assert reloaded.status_code == 200 and reloaded.json()["added_items"] == 2
        new = [r["key"] for r in local.post("/recommend", json=body).json()["items"]]
        assert len(old) == 40 and len(new) == 42 and {"n1", "n2"} <= set(new)
        assert statuses and all(code == 200 for code in statuses)
        assert answers and all(a in (old, new) for a in answers)
        item = local.get("/items/n1").json()
        assert item["item"] == 40 and len(item["codes"]) == 3 and item["neighbours"]
