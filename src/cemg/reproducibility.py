"""Whether two run folders hold the same artifacts, bit for bit.

    python -m cemg.reproducibility RUN_A RUN_B      # exit code 0 when every array file is identical

Compares every array or weight file (.npy, .npz, .pt, .safetensors) under the two folders by
their bytes; checkpoints (removed once a stage finishes) and logs are not artifacts and are skipped.
A file that differs is named with the arrays inside it that differ (for .npz and .safetensors),
which is where a search for the source of the difference starts.
"""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".safetensors")


@dataclass(frozen=True)
class RunComparison:
    identical: list[str] = field(default_factory=list)  # relative paths, sorted
    different: dict[str, list[str]] = field(default_factory=dict)  # path -> differing members ([] if unknown)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return bool(self.identical) and not (self.different or self.only_in_a or self.only_in_b)

    def summary(self) -> str:
        lines = [f"{len(self.identical)} identical array files"]
        lines += [f"differs: {p}" + (f" ({', '.join(m)})" if m else "") for p, m in self.different.items()]
        lines += [f"only in the first run: {p}" for p in self.only_in_a]
        lines += [f"only in the second run: {p}" for p in self.only_in_b]
        return "\n".join(lines)


def array_files(run_dir: Path) -> list[str]:
    """Relative paths of the array files under `run_dir`, checkpoints excluded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    return sorted(
        str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
        if p.suffix in ARRAY_SUFFIXES and p.is_file() and p.relative_to(run_dir).parts[0] != "checkpoints"
    )


def _differing_members(a: Path, b: Path) -> list[str]:
    if a.suffix == ".npz":  # a zip of .npy files
        with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
            names = sorted(set(za.namelist()) | set(zb.namelist()))
            return [n.removesuffix(".npy") for n in names
                    if n not in za.namelist() or n not in zb.namelist() or za.read(n) != zb.read(n)]
    if a.suffix == ".safetensors":
        from safetensors.numpy import load_file

        ta, tb = load_file(a), load_file(b)
        return sorted(k for k in ta.keys() | tb.keys()
                      if k not in ta or k not in tb or ta[k].tobytes() != tb[k].tobytes() or ta[k].dtype != tb[k].dtype)
    return []


def compare_runs(a: Path, b: Path) -> RunComparison:
    """Compare the array files of run folders `a` and `b` byte for byte."""
    a, b = Path(a), Path(b)
    files_a, files_b = array_files(a), array_files(b)
    result = RunComparison(only_in_a=sorted(set(files_a) - set(files_b)),
                           only_in_b=sorted(set(files_b) - set(files_a)))
    for rel in sorted(set(files_a) & set(files_b)):
        if (a / rel).read_bytes() == (b / rel).read_bytes():
            result.identical.append(rel)
        else:
            result.different[rel] = _differing_members(a / rel, b / rel)
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m cemg.reproducibility RUN_A RUN_B", file=sys.stderr)
        return 2
    comparison = compare_runs(Path(args[0]), Path(args[1]))
    print(comparison.summary())
    return 0 if comparison.same else 1


if __name__ == "__main__":
    raise SystemExit(main())
