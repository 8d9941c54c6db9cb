"""tokenizer.fusion through a whole run: the option retrains the tokenizer (and only what follows it),
and the readers of a finished run (fusion view, report, `cemg items add`) work with every variant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from cemg.artifacts import read_manifest

NEW_ITEM = {"item_id": "n1", "title": "Hydrating Night Cream", "brand": "Acme", "categories": ["skin"]}


def test_each_fusion_variant_retrains_the_tokenizer_and_its_run_reports_and_adds_items(tiny_run, tmp_path):
    from cemg.api import Recommender, add_items, compute_fusion_view
    from cemg.config import load_config
    from cemg.pipeline import run_pipeline
    from cemg.report.content import collect
    from cemg.report.render import build_sections

    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps(NEW_ITEM) + "\n", encoding="utf-8")
    base = {stage: read_manifest(Path(tiny_run) / stage)["inputs_hash"]
            for stage in ("features", "collab", "tokenizer", "generator")}
    for kind in ("attention", "concat", "content_attention", "mean"):
        run = tmp_path / kind
        shutil.copytree(tiny_run, run)
        cfg = load_config(run / "config.yaml", [f"run_dir={run}", f"tokenizer.fusion={kind}"])
        result = run_pipeline(cfg)
        assert result.hashes["features"] == base["features"] and result.hashes["collab"] == base["collab"]
        # the paper's attention is the default and stays out of the hash: earlier tokenizers stay valid
        assert (result.hashes["tokenizer"] == base["tokenizer"]) == (kind == "attention")
        assert (result.hashes["generator"] == base["generator"]) == (kind == "attention")
        report = json.loads((run / "tokenizer" / "report.json").read_text(encoding="utf-8"))
        assert report["inputs"]["fusion"] == kind

        view = compute_fusion_view(run)
        some = view.has_image | view.has_text
        assert np.allclose(view.alphas[some].sum(1), 1.0)
        if kind in ("mean", "concat"):
            assert (view.alphas[view.has_image & view.has_text] == 0.5).all()
        sections = {s.title: s for s in build_sections(collect(run, n_examples=1, k=3))}
        assert (f"tokenizer.fusion: {kind}" in sections["Fusion attention"].blocks[0]) == (kind != "attention")
        # learned weights are broken down by popularity; the fixed 1/2 of "mean" and "concat" are not
        by_popularity = sections["Fusion weights by popularity"].blocks
        assert ("fixed by construction" in by_popularity[0]) == (kind in ("mean", "concat"))

        # both collaborative stand-ins: "zeros" where the query does not read e_c anyway
        summary = add_items(run, items, collab="zeros" if kind == "content_attention" else "content")
        assert summary.items_after == summary.items_before + 1
        assert summary.added[0].fusion_weights == {"image": 0.0, "text": 1.0}  # no image: text alone
        rec = Recommender.load(run, device="cpu")
        assert rec.index("n1") == summary.items_before
