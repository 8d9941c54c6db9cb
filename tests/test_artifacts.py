"""Artifact writes are atomic: a process SIGKILLed while rewriting an artifact folder or file leaves
either the old complete version or the new one, never a mix or a torn file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cemg.artifacts import atomic_dir, atomic_file, is_fresh, write_manifest

# Rewrites one folder (three 256 KiB parts + a file naming the version) and one .npz file,
# forever, each time with a new version number; the parent kills it at random moments.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from cemg.artifacts import atomic_dir, atomic_file
    root = Path(sys.argv[1])
    version = 0
    while True:
        version += 1
        with atomic_dir(root / "stage") as tmp:
            for part in range(3):
                (tmp / f"part{part}.bin").write_bytes(bytes([version % 256]) * (256 << 10))
            (tmp / "version.json").write_text(str(version))  # the manifest would import torch: slow
        with atomic_file(root / "table.npz") as fh:
            np.savez(fh, version=np.full(64 << 10, version))
        print(version, flush=True)
""")


def test_sigkill_during_rewrites_never_leaves_a_torn_artifact(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # at least one complete version exists
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        version = json.loads((tmp_path / "stage" / "version.json").read_text())
        for part in range(3):
            data = (tmp_path / "stage" / f"part{part}.bin").read_bytes()
            assert data == bytes([version % 256]) * (256 << 10), (trial, part)
        with np.load(tmp_path / "table.npz") as table:
            assert len(set(table["version"].tolist())) == 1


def test_a_failed_build_keeps_the_previous_artifact(tmp_path):
    with atomic_dir(tmp_path / "stage") as tmp:
        write_manifest(tmp, "stage", "old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "stage") as tmp:
        write_manifest(tmp, "stage", "new")
        raise RuntimeError("build failed")
    assert is_fresh(tmp_path / "stage", "old")
    with atomic_file(tmp_path / "f.bin") as fh:
        fh.write(b"old")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "f.bin") as fh:
        fh.write(b"new, half writ")
        raise RuntimeError("writer failed")
    assert (tmp_path / "f.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "stage"]  # no temp left behind


def test_a_source_digest_follows_content_not_mtime_and_is_remembered(tmp_path, monkeypatch):
    import cemg.artifacts as artifacts
    from cemg.artifacts import source_digest

    data, images, memo = tmp_path / "ratings.txt", tmp_path / "images", tmp_path / "cache" / "digests.json"
    data.write_text("u1 i1 i2\n")
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8one")
    (images / "sub").mkdir()
    (images / "sub" / "b.jpg").write_bytes(b"\xff\xd8two")
    before = source_digest(data, memo), source_digest(images, memo)
    # re-provisioned: the same bytes with new mtimes keep the digest (read again, once)
    for path in (data, images / "a.jpg", images / "sub" / "b.jpg"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert (source_digest(data, memo), source_digest(images, memo)) == before
    reads = []
    monkeypatch.setattr(artifacts, "file_digest", lambda path, *a: reads.append(path) or "x")
    assert (source_digest(data, memo), source_digest(images, memo)) == before and reads == []  # remembered
    monkeypatch.undo()
    # new content changes it, in a file or anywhere under a folder (a renamed image too)
    data.write_text("u1 i1 i3\n")
    (images / "sub" / "b.jpg").rename(images / "sub" / "c.jpg")
    after = source_digest(data, memo), source_digest(images, memo)
    assert after[0] != before[0] and after[1] != before[1]
    assert source_digest(data) == after[0]  # without a memo: the same value
