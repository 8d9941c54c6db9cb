"""`cemg report RUN_DIR`: a run's dataset, training curves, codebooks, fusion weights, results and
example recommendations as RUN_DIR/report/report.html (self-contained) and report.md (+ PNGs)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cemg.report.content import PAPER_RESULTS, RunContent, collect
from cemg.report.render import SECTIONS, ReportFiles, write_files

__all__ = ["PAPER_RESULTS", "SECTIONS", "ReportFiles", "RunContent", "collect", "write_report"]

log = logging.getLogger(__name__)


def write_report(run_dir: Path | str, out_dir: Path | str | None = None, n_examples: int = 3, k: int = 5,
                 device: str = "cpu") -> ReportFiles:
    """Write the report of the run in `run_dir` to `out_dir` (default RUN_DIR/report)."""
    from cemg.report.figures import all_figures  # matplotlib only when a report is made

    start = time.perf_counter()
    content = collect(run_dir, n_examples=n_examples, k=k, device=device)
    files = write_files(content, all_figures(content), Path(out_dir) if out_dir else Path(run_dir) / "report")
    log.info("report of %s written in %.1f s", run_dir, time.perf_counter() - start)
    return files
