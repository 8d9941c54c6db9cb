"""`--quiet` silences every progress bar: tqdm's (stages) and Hugging Face's (loading the encoders).

The command runs in a fresh process, as a user runs it: tqdm reads TQDM_DISABLE when it is first
imported, so an in-process CliRunner (tqdm long imported by other tests) could not tell whether the
switch is set in time.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

DEMO = Path(__file__).resolve().parents[1] / "src" / "cemg" / "configs" / "demo.yaml"
TINY = ["data.synthetic_users=60", "data.synthetic_items=30", "data.synthetic_categories=3",
        "features.dim=8", "collab.dim=8", "collab.epochs=3", "collab.eval_every=1"]
# What a bar leaves in a log: carriage-return redraws, "NN%|" bars, or rates ("it/s", "epoch/s").
BAR = re.compile(r"\r|\d+%\||\d(?:it|item|img|epoch)/s")


def test_bar_pattern_matches_a_tqdm_bar():
    out = io.StringIO()
    for _ in tqdm(range(3), file=out, disable=False, mininterval=0, desc="LightGCN", unit="epoch"):
        pass
    assert BAR.search(out.getvalue()), out.getvalue()


def test_quiet_run_prints_no_progress_bar(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    sets = [*TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "cemg", "run", "--config", str(DEMO), "--until", "collab", "--quiet",
           *sum((["--set", s] for s in sets), [])]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # It did the work that draws bars without --quiet: encoders loaded, items encoded, LightGCN trained.
    assert (tmp_path / "run" / "features" / "features.npz").is_file()
    assert (tmp_path / "run" / "collab" / "collab.npz").is_file()
    assert "run directory:" in done.stdout
    assert not BAR.search(done.stderr), done.stderr[-2000:]
    assert not BAR.search(done.stdout), done.stdout[-2000:]
