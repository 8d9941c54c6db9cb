"""Artifact folders: written atomically, described by a manifest, reused when inputs are unchanged.

Every stage saves its artifact into one folder holding the stage's files plus `manifest.json`
(stage name, config section, package versions, hash of the inputs). The folder is built under a
temporary name and renamed into place, so a killed run never leaves a folder a later run trusts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST = "manifest.json"


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (configs, upstream manifests' hashes, file digests)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


SOURCE_DIGESTS = "source_digests.json"  # the memo of source_digest, in a run's cache_dir


def source_digest(path: Path, memo: Path | None = None) -> str:
    """The content of a raw data file or folder (every file under it, by relative path), as a sha256.

    A content hash, not size and mtime: a copied, restored or re-provisioned dataset keeps its digest,
    so runs built on it stay valid. `memo` (a JSON file) remembers digests by path, size, mtime,
    ctime and inode, so an untouched source is read once, not on every run.
    """
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(f.relative_to(path)) if path.is_dir() else "", f.stat()) for f in files]
    # ctime too: any write or utime moves it, so a same-size edit that restores the mtime is seen.
    key = fingerprint(str(path), [(name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for name, st in stats])
    known = _read_memo(memo)
    if key in known:
        return known[key]
    if path.is_dir():
        digest = fingerprint([(name, file_digest(f)) for (name, _), f in zip(stats, files)])
    else:
        digest = file_digest(path)
    if memo is not None:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next run a re-read
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo, json.dumps({**_read_memo(memo), key: digest}, indent=0, sort_keys=True))
    return digest


def _read_memo(memo: Path | None) -> dict[str, str]:
    try:
        return json.loads(memo.read_text(encoding="utf-8")) if memo is not None else {}
    except (OSError, ValueError):
        return {}


def _versions() -> dict[str, str]:
    import numpy
    import torch

    import cemg

    return {"cemg": cemg.__version__, "torch": torch.__version__, "numpy": numpy.__version__}


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file open for writing that replaces `path` in one rename when the block ends
    without error (for writers that take a file: np.savez, torch.save); on error, or a kill, `path`
    keeps its old content and at most a hidden `.name.tmp-*` file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text.encode("utf-8"))


def write_manifest(folder: Path, stage: str, inputs_hash: str, config: Any = None, **extra: Any) -> None:
    manifest = {
        "stage": stage,
        "inputs_hash": inputs_hash,
        "config": config,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_fresh(folder: Path, inputs_hash: str) -> bool:
    """True when `folder` holds a complete artifact built from the same inputs."""
    manifest = read_manifest(folder)
    return manifest is not None and manifest.get("inputs_hash") == inputs_hash
