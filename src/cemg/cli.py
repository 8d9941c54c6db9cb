"""The `cemg` command: wires stages together, nothing more (each command calls one stage's entry point)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cemg.config import CEMGConfig, ConfigError, load_config

app = typer.Typer(help="CEMG: collaborative-enhanced multimodal generative recommendation.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: statistics, download.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value: section.key=value (repeatable).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and results; no progress bars.")


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _config(config: Optional[Path], overrides: Optional[list[str]], quiet: bool = False) -> CEMGConfig:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"
    return load_config(config, overrides)


def main() -> None:
    """Entry point that turns known errors into a one-line message and exit code 2."""
    from cemg.data.errors import DataError

    try:
        app(standalone_mode=False)
    except (ConfigError, DataError, UserError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise SystemExit(2) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except typer.Abort:
        raise SystemExit(1) from None


# --- data -------------------------------------------------------------------------------------


@data_app.command("stats")
def data_stats(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, quiet: bool = QuietOpt) -> None:
    """Print the paper's Table 1 columns for the configured dataset (after k-core filtering)."""
    from cemg.data.load import load_dataset

    cfg = _config(config, set_, quiet)
    stats = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir).stats()
    print(f"dataset       {cfg.data.name}")
    print(f"#users        {stats['users']:,}")
    print(f"#items        {stats['items']:,}")
    print(f"#interactions {stats['interactions']:,}")
    print(f"avg length    {stats['avg_length']:.1f}")
    print(f"sparsity      {stats['sparsity'] * 100:.2f}%")
