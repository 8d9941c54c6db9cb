"""`cemg report`: files, sections, figures and numbers of a run's report (no browser needed)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cemg.cli import app
from cemg.api import FusionView
from cemg.data.dataset import InteractionDataset
from cemg.data.split import leave_one_out
from cemg.report import SECTIONS, collect, write_report
from cemg.report.content import image_weight_extremes, popularity_edges
from cemg.report.figures import fusion_popularity_figure
from cemg.report.render import build_sections, to_html, to_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    return write_report(tiny_run, tmp_path_factory.mktemp("report") / "out", n_examples=2, k=3)


def test_report_files_and_sections(report):
    md = report.markdown.read_text(encoding="utf-8")
    page = report.html.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"\n## {title}\n" in md
        assert f'id="{title.lower().replace(" ", "-")}"' in page
    assert {p.name for p in report.figures} == {"dataset.png", "training.png", "codebooks.png", "fusion.png",
                                                "fusion_popularity.png"}
    for fig in report.figures:
        assert fig.read_bytes().startswith(PNG_MAGIC)
        assert f"](figures/{fig.name})" in md
    # report.html is self-contained: figures and thumbnails are data URIs, nothing points at a file
    assert page.count("data:image/png;base64,") >= len(report.figures)
    assert not re.search(r'src="(?!data:)', page)


def test_report_numbers_come_from_the_run(tiny_run, report):
    md = report.markdown.read_text(encoding="utf-8")
    test = json.loads((tiny_run / "evaluation" / "test.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| test, all users"))
    assert [f"{test['metrics'][m]:.4f}" for m in test["metrics"]] == [c.strip() for c in row.split("|")[2:-1]]
    tok = json.loads((tiny_run / "tokenizer" / "report.json").read_text())
    for level in tok["levels"]:
        assert f"| {level['level']} | {level['used_codes']}/8 |" in md
    meta = json.loads((tiny_run / "data" / "meta.json").read_text())
    assert f"| items | {len(meta['item_keys']):,} |" in md
    assert "The paper reports no results on 'demo'" in md


def test_examples_show_titles_and_thumbnails(tiny_run, report):
    md = report.markdown.read_text(encoding="utf-8")
    meta = json.loads((tiny_run / "data" / "meta.json").read_text())
    titles = [t for t in meta["fields"]["title"] if t]
    examples = md.split("## Example recommendations")[1]
    assert examples.count("**user ") == 2
    assert sum(t in examples for t in titles) >= 3
    thumbs = list((report.html.parent / "images").glob("item-*.png"))
    assert thumbs and all(p.read_bytes().startswith(PNG_MAGIC) for p in thumbs)  # the demo items have images


def test_paper_numbers_appear_only_for_the_paper_dataset(tiny_run):
    content = collect(tiny_run, n_examples=0)
    content.config = content.config.model_copy(
        update={"data": content.config.data.model_copy(update={"name": "beauty"})}
    )
    md = to_markdown("t", build_sections(content), {})
    row = next(line for line in md.splitlines() if line.startswith("| paper's CEMG"))
    assert "0.0665" in row and "0.0348" in row


def test_partial_run_still_gets_a_report(tiny_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial)
    for stage in ("generator", "evaluation"):
        shutil.rmtree(partial / stage)
    files = write_report(partial)
    assert files.html == partial / "report" / "report.html"
    md = files.markdown.read_text(encoding="utf-8")
    assert "stages missing | generator, evaluation" in md
    assert "The evaluation stage is missing." in md and "No trained generator in this run" in md
    assert "## Fusion attention" in md and "figures/fusion.png" in md


def test_cli_report(tiny_run, tmp_path):
    result = CliRunner().invoke(app, ["report", str(tiny_run), "--out", str(tmp_path / "r"), "--examples", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.html").is_file() and (tmp_path / "r" / "report.md").is_file()
    assert "report.html" in result.output


def test_a_dataset_without_images_says_so_instead_of_empty_frames(tiny_run, tmp_path):
    run = tmp_path / "text-only"
    shutil.copytree(tiny_run, run)
    meta_path = run / "data" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["image_refs"], meta["image_root"] = None, None  # as Beauty: titles, no pictures
    meta_path.write_text(json.dumps(meta))
    content = collect(run, n_examples=2, k=3)
    assert "has no item images" in content.image_note
    # the features still hold image vectors; make the fusion view text-only too, as a Beauty run's is
    content.fusion = dataclasses.replace(content.fusion, has_image=np.zeros_like(content.fusion.has_image))
    sections = build_sections(content)
    page = to_html("t", sections, {})
    assert "no image</div>" not in page and "data:image/png" not in page
    assert page.count("has no item images") == 2  # dataset and examples sections
    assert "| rank | item | title | score |\n" in to_markdown("t", sections, {})  # no empty image column
    fusion = next(s for s in sections if s.title == "Fusion attention")
    assert fusion.blocks == [fusion.blocks[0]] and "text weight exactly 1" in fusion.blocks[0]
    for title in ("Fusion weights by popularity", "Items by image weight"):
        section = next(s for s in sections if s.title == title)
        assert len(section.blocks) == 1 and "no item has an image" in section.blocks[0]
    assert fusion_popularity_figure(content) is None


def test_long_titles_are_cut_in_cards_but_kept_in_the_tooltip():
    from cemg.report.content import ExampleItem
    from cemg.report.render import _html_card

    title = "Dead Sea Salt Deep Hair Conditioner - for Dry or Damaged Hair - " * 4
    card = _html_card(ExampleItem(7, "7", title), rank=1, pictures=False)
    assert f'title="{title}"' in card and "\u2026" in card and "no image" not in card


def test_an_old_run_config_with_dropped_and_missing_keys_still_reports(tiny_run, tmp_path, caplog):
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    text = (run / "config.yaml").read_text()
    # an older version: a generator key since dropped, and no `decoding` (a field added later), at
    # whatever depth of the generator section it lives
    text = re.sub(r"\n +decoding: \w+", "", text).replace("generator:\n", "generator:\n  old_knob: 3\n", 1)
    (run / "config.yaml").write_text(text)
    manifest = json.loads((run / "generator" / "manifest.json").read_text())

    def drop_decoding(section: dict) -> int:
        dropped = int(section.pop("decoding", None) is not None)
        return dropped + sum(drop_decoding(v) for v in section.values() if isinstance(v, dict))

    assert drop_decoding(manifest["config"]) == 1
    (run / "generator" / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="cemg.run_folder"):
        files = write_report(run, tmp_path / "r", n_examples=1, k=3)
    assert "old_knob" in caplog.text
    assert "built with other generator settings" not in caplog.text
    assert "| test, all users" in files.markdown.read_text(encoding="utf-8")


def test_popularity_buckets_start_at_the_cold_start_threshold():
    assert popularity_edges(5) == [(0, 5), (6, 10), (11, 20), (21, 50), (51, None)]
    assert popularity_edges(15) == [(0, 15), (16, 20), (21, 50), (51, None)]


def test_image_weight_extremes_skip_single_modality_items_and_break_ties_by_index():
    image = np.array([0.9, 1.0, 0.2, 0.9, 0.0, 0.5, 0.1])
    fusion = FusionView(np.stack([image, 1 - image], 1), np.zeros((7, 1)),
                        has_image=np.array([1, 1, 1, 1, 0, 1, 1], bool), has_text=np.array([1, 0, 1, 1, 1, 1, 1], bool))
    highest, lowest = image_weight_extremes(fusion, 2)  # item 1 (image only) and 4 (text only) are fixed weights
    assert highest.tolist() == [0, 3] and lowest.tolist() == [6, 2]
    highest, lowest = image_weight_extremes(fusion, 6)  # 5 items with both: 2 each, no item in both lists
    assert highest.tolist() == [0, 3] and lowest.tolist() == [6, 2]


def _section_md(md: str, title: str) -> str:
    return md.split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_fusion_weights_by_popularity_and_extreme_items(tiny_run, report):
    md = report.markdown.read_text(encoding="utf-8")
    page = report.html.read_text(encoding="utf-8")
    content = collect(tiny_run, n_examples=0)
    fusion, counts = content.fusion, content.train_item_counts
    dataset = InteractionDataset.load(tiny_run / "data")
    assert counts.tolist() == leave_one_out(dataset, content.config.data.max_history).train_item_counts().tolist()
    both = fusion.has_image & fusion.has_text
    assert both.sum() >= 12  # the demo items have images and titles: enough for 6 + 6 extremes

    section = _section_md(md, "Fusion weights by popularity")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| ") and "training interactions" not in line}
    expected = {"0-5 (cold start)": (0, 5), "6-10": (6, 10), "11-20": (11, 20), "21-50": (21, 50), ">50": (51, 10**9)}
    assert list(rows) == list(expected)
    for label, (lo, hi) in expected.items():
        inside = (counts >= lo) & (counts <= hi)
        assert rows[label][:2] == [str(int(inside.sum())), str(int((inside & both).sum()))]
        if (inside & both).any():
            assert rows[label][2] == f"{np.median(fusion.alphas[inside & both, 0]):.3f}"
    assert sum(int(r[0]) for r in rows.values()) == dataset.n_items
    assert "figures/fusion_popularity.png" in section and "Spearman" in section

    weights = np.where(both, fusion.alphas[:, 0], np.nan)
    highest = [i.item for i in content.highest_image_weight]
    lowest = [i.item for i in content.lowest_image_weight]
    assert len(highest) == len(lowest) == 6
    assert highest[0] == np.nanargmax(weights) and lowest[0] == np.nanargmin(weights)
    assert set(highest) == set(np.argsort(-np.nan_to_num(weights, nan=-1))[:6])
    assert set(lowest) == set(np.argsort(np.nan_to_num(weights, nan=2))[:6])
    extremes = _section_md(md, "Items by image weight")
    keys = dataset.items.keys
    for item in content.highest_image_weight + content.lowest_image_weight:
        assert item.image is not None  # the demo has pictures
        assert f"| `{keys[item.item]}` | {item.title} | {item.image_weight:.3f} | {counts[item.item]:,} |" in extremes
    assert extremes.index(f"`{keys[highest[0]]}`") < extremes.index(f"`{keys[lowest[0]]}`")
    html_extremes = page.split('id="items-by-image-weight"')[1].split("</section>")[0]
    assert html_extremes.count("data:image/png;base64,") == 12
    assert (report.html.parent / "images" / f"item-{highest[0]}.png").is_file()


def test_fusion_breakdowns_say_why_when_there_are_no_learned_weights(tiny_run, tmp_path):
    run = tmp_path / "no-fusion-view"
    shutil.copytree(tiny_run, run)
    (run / "tokenizer" / "model.pt").unlink()  # the fusion weights can no longer be rebuilt
    files = write_report(run, tmp_path / "r", n_examples=0)
    md = files.markdown.read_text(encoding="utf-8")
    for title in ("Fusion weights by popularity", "Items by image weight"):
        assert "Not shown: the fusion weights cannot be rebuilt" in _section_md(md, title)
    assert "fusion_popularity.png" not in {p.name for p in files.figures}

    content = collect(tiny_run, n_examples=0)
    content.tokenizer_report = {**content.tokenizer_report,
                                "inputs": {**content.tokenizer_report["inputs"], "fusion": "mean"}}
    sections = {s.title: s for s in build_sections(content)}
    for title in ("Fusion weights by popularity", "Items by image weight"):
        assert len(sections[title].blocks) == 1 and "fixed by construction" in sections[title].blocks[0]
    assert fusion_popularity_figure(content) is None


def test_overview_names_the_model_behind_the_numbers(tiny_run):
    content = collect(tiny_run, n_examples=0)
    md = to_markdown("t", build_sections(content), {})
    row = next(line for line in md.splitlines() if line.startswith("| generator |"))
    assert "semantic mode, causal-gpt2 backbone" in row and "content prior" not in row
    generator = content.config.generator
    content.config = content.config.model_copy(update={"generator": generator.model_copy(
        update={"content_prior": generator.content_prior.model_copy(update={"weight": 3.0})})})
    md = to_markdown("t", build_sections(content), {})
    assert "content prior weight 3, beam" in next(line for line in md.splitlines() if line.startswith("| generator |"))
