"""cemg.run_folder: where a run's stages live, and the rule that reading a run never needs the runner."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cemg.run_folder import SEEDED_STAGES, SHARED_STAGES, STAGES, RunFolder, read_seeds, seed_folders

SRC = Path(__file__).resolve().parents[1] / "src" / "cemg"
# The runner itself and the commands that run stages; everything else reads runs through cemg.run_folder.
MAY_IMPORT_THE_RUNNER = {"pipeline.py", "cli.py"}


def _imports_pipeline(path: Path) -> list[int]:
    """Line numbers of the imports of cemg.pipeline in one module (absolute, `from cemg import
    pipeline`, or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(alias.name == "cemg.pipeline" or alias.name.startswith("cemg.pipeline.") for alias in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            if module == "cemg.pipeline" or (module == "cemg" and any(a.name == "pipeline" for a in node.names)):
                lines.append(node.lineno)
    return lines


def test_only_the_runner_and_the_cli_import_the_pipeline():
    offenders = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if str(path.relative_to(SRC)) not in MAY_IMPORT_THE_RUNNER and (lines := _imports_pipeline(path))
    }
    assert offenders == {}, f"these modules import cemg.pipeline (read runs through cemg.run_folder): {offenders}"


def test_the_scan_sees_every_form_of_import(tmp_path, monkeypatch):
    # The rule above is only as good as the scan: check it on one module per import form.
    forms = ["import cemg.pipeline", "from cemg.pipeline import STAGES", "from cemg import pipeline",
             "from .. import pipeline", "from ..pipeline import run_pipeline"]
    folder = tmp_path / "cemg" / "report"
    folder.mkdir(parents=True)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "cemg")
    for i, form in enumerate(forms):
        module = folder / f"m{i}.py"
        module.write_text(f"x = 1\n{form}\n")
        assert _imports_pipeline(module) == [2], form
    module = folder / "clean.py"
    module.write_text("from cemg.run_folder import STAGES\nimport cemg.pipeline_notes\n")
    assert _imports_pipeline(module) == []


def test_reading_a_finished_run_never_loads_the_runner(tiny_run):
    # The import rule, checked where it matters: load and serve a run, read its results, build the
    # report's content, in a fresh interpreter, and look at what got imported.
    code = f"""
import sys
from cemg.api import Recommender, load_run_config
from cemg.report import collect
from cemg.run_folder import seed_evaluations
from cemg.serve.app import create_app
run = {str(tiny_run)!r}
rec = Recommender.load(run, device="cpu")
create_app(rec)
assert set(seed_evaluations(run)[load_run_config(run).seed].results) == {{"valid", "test"}}
collect(run, n_examples=0)
print(sorted(m for m in sys.modules if m == "cemg.pipeline"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_stage_folders_of_the_config_seed_and_of_other_seeds(tmp_path):
    assert STAGES == SHARED_STAGES + SEEDED_STAGES
    own = RunFolder.of_seed(tmp_path, 42, config_seed=42)
    other = RunFolder.of_seed(tmp_path, 43, config_seed=42)
    assert own.seed is None and other.seed == 43
    for stage in SHARED_STAGES:  # shared, never copied per seed
        assert own.stage(stage) == other.stage(stage) == tmp_path / stage
    for stage in SEEDED_STAGES:
        assert own.stage(stage) == tmp_path / stage
        assert other.stage(stage) == tmp_path / "seeds" / "43" / stage
    assert other.ranks_file("test") == tmp_path / "seeds" / "43" / "evaluation" / "test.per_user.npz"
    assert own.config_file == other.config_file == tmp_path / "config.yaml"
    # One checkpoint folder for every seed: the inputs hash already tells the seeds apart.
    assert other.checkpoint("generator", "abc").parent == own.checkpoint("generator", "abc").parent
    with pytest.raises(ValueError, match="unknown stage 'decoder'"):
        own.stage("decoder")


def test_a_broken_seeds_file_is_named(tmp_path):
    (tmp_path / "seeds.json").write_text("{not json")
    with pytest.raises(ValueError, match="seeds.json: not readable JSON"):
        read_seeds(tmp_path)
    (tmp_path / "seeds.json").write_text(json.dumps({"seeds": [1], "runs": {}}))
    with pytest.raises(ValueError, match="seeds.json: field 'config_seed' is missing"):
        read_seeds(tmp_path)


def test_a_run_without_evaluation_has_no_seeds_to_compare(tmp_path):
    with pytest.raises(FileNotFoundError, match="no evaluation and no seeds.json"):
        seed_folders(tmp_path)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        RunFolder.open(tmp_path / "missing")
