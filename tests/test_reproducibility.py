"""`compare_runs` finds every array file of two run folders and names what differs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from cemg.reproducibility import compare_runs, main


def _run(folder, bump: float = 0.0, extra: bool = False):
    (folder / "collab").mkdir(parents=True)
    (folder / "generator").mkdir()
    (folder / "checkpoints" / "collab-x").mkdir(parents=True)
    np.savez(folder / "collab" / "collab.npz", users=np.ones((3, 2), np.float32),
             items=np.full((4, 2), 1.0 + bump, np.float32))
    np.save(folder / "collab" / "codes.npy", np.arange(4))
    save_file({"w": np.zeros(2, np.float32), "b": np.array([bump], np.float32)}, folder / "generator" / "heads.safetensors")
    torch.save({"w": torch.ones(2)}, folder / "generator" / "model.pt")
    torch.save({"step": bump}, folder / "checkpoints" / "collab-x" / "state.pt")  # not an artifact
    (folder / "collab" / "collab.json").write_text(f'{{"seconds": {bump}}}')  # logs and timings may differ
    if extra:
        np.save(folder / "collab" / "extra.npy", np.zeros(1))


def test_identical_runs(tmp_path, capsys):
    _run(tmp_path / "a")
    _run(tmp_path / "b")
    result = compare_runs(tmp_path / "a", tmp_path / "b")
    assert result.same
    assert result.identical == ["collab/codes.npy", "collab/collab.npz", "generator/heads.safetensors",
                                "generator/model.pt"]
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "4 identical array files" in capsys.readouterr().out


def test_differences_are_named_down_to_the_array(tmp_path, capsys):
    _run(tmp_path / "a")
    _run(tmp_path / "b", bump=1e-7, extra=True)
    result = compare_runs(tmp_path / "a", tmp_path / "b")
    assert not result.same
    assert result.different == {"collab/collab.npz": ["items"], "generator/heads.safetensors": ["b"]}
    assert result.only_in_b == ["collab/extra.npy"] and result.only_in_a == []
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "differs: collab/collab.npz (items)" in out and "only in the second run: collab/extra.npy" in out


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        compare_runs(tmp_path / "nowhere", tmp_path)


def test_an_empty_folder_is_not_a_match(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert not compare_runs(tmp_path / "a", tmp_path / "b").same
