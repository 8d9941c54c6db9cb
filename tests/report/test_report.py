"""`cemg report`: files, sections, figures and numbers of a run's report (no browser needed)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from cemg.cli import app
from cemg.report import SECTIONS, collect, write_report
from cemg.report.render import build_sections, to_markdown

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
    assert {p.name for p in report.figures} == {"dataset.png", "training.png", "codebooks.png", "fusion.png"}
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
