"""Training checkpoints: atomic saves, random streams restored, and every training loop, killed
between two saves and run again, ends bit-identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cemg.checkpoint import STATE_FILE, TrainingCheckpoint
from cemg.collab.artifact import CollabEmbeddings
from cemg.config import (
    CausalGeneratorConfig,
    CollabConfig,
    GeneratorConfig,
    T5DecoderGeneratorConfig,
    T5GeneratorConfig,
    TokenizerConfig,
)
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.features.artifact import ItemFeatures


class Killed(Exception):
    """Stands in for a kill -9 in the middle of training."""


class DiesAfter(TrainingCheckpoint):
    """Saves at every second opportunity and dies at opportunity `die_at`: the work done since the
    last save is lost and has to be redone, as after a real kill."""

    def __init__(self, folder, die_at: int):
        super().__init__(folder, every_seconds=0)
        self.calls, self.die_at = 0, die_at

    def due(self) -> bool:
        self.calls += 1
        if self.calls == self.die_at:
            raise Killed
        return self.calls % 2 == 0


def _killed_then_resumed(train, folder, die_at: int):
    """Run `train(checkpoint)` until it dies, then again with a plain checkpoint; the second result."""
    with pytest.raises(Killed):
        train(DiesAfter(folder, die_at))
    assert (folder / STATE_FILE).is_file()
    resumed = TrainingCheckpoint(folder, every_seconds=0)
    out = train(resumed)
    return out


def _toy_split(n_users=60, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(n_items) + np.arange(rng.integers(5, 9))) % n_items for _ in range(n_users)]
    items = ItemTable(keys=[f"i{i}" for i in range(n_items)])
    return leave_one_out(InteractionDataset("toy", [f"u{u}" for u in range(n_users)], seqs, items), 20)


def _toy_ids(n_items=30, sizes=(4, 4, 2), seed=0):
    from cemg.tokenizer.semantic_ids import SemanticIds

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return SemanticIds(grid[rng.choice(len(grid), n_items, replace=False)], list(sizes))


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_save_restore_round_trips_model_optimizer_and_every_random_stream(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen_t, gen_np = torch.Generator().manual_seed(5), np.random.default_rng(5)
    random.seed(1)
    np.random.seed(1)
    ck = TrainingCheckpoint(tmp_path / "ck", every_seconds=0)
    ck.save(model=model, optimizer=opt, generators={"t": gen_t, "n": gen_np}, epoch=3, best={"score": 0.5})
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen_t), gen_np.random())

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    other_t, other_np = torch.Generator().manual_seed(9), np.random.default_rng(9)
    progress = TrainingCheckpoint(tmp_path / "ck").restore(
        model=fresh, optimizer=fresh_opt, generators={"t": other_t, "n": other_np})
    assert progress == {"epoch": 3, "best": {"score": 0.5}}
    _same_state(model, fresh)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    got = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=other_t), other_np.random())
    assert torch.equal(got[0], expected[0]) and got[1:3] == expected[1:3]
    assert torch.equal(got[3], expected[3]) and got[4] == expected[4]


def test_no_folder_means_no_checkpoint_and_unusable_files_are_ignored(tmp_path):
    model = torch.nn.Linear(2, 2)
    off = TrainingCheckpoint(None)
    off.save(model=model, epoch=1)
    assert not off.due() and off.restore(model=model) is None
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(b"not a checkpoint")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert TrainingCheckpoint(folder).restore(model=model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_due_waits_for_every_seconds(tmp_path):
    ck = TrainingCheckpoint(tmp_path, every_seconds=3600)
    assert not ck.due()
    assert TrainingCheckpoint(tmp_path, every_seconds=0).due()


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    ck = TrainingCheckpoint(tmp_path, every_seconds=0)
    ck.save(model=model, epoch=1)

    def dies(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(Killed):
        ck.save(model=model, epoch=2)
    monkeypatch.undo()
    assert TrainingCheckpoint(tmp_path).restore(model=model) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left behind


def test_lightgcn_resumed_equals_uninterrupted(tmp_path):
    from cemg.collab.lightgcn import train_lightgcn

    split = _toy_split()
    cfg = CollabConfig(dim=8, layers=2, lr=0.05, batch_size=32, epochs=12, patience=100, eval_every=3, valid_k=5)
    whole = train_lightgcn(split, cfg, seed=3)
    resumed = _killed_then_resumed(lambda ck: train_lightgcn(split, cfg, 3, "cpu", ck), tmp_path / "ck", die_at=7)
    assert np.array_equal(whole.items, resumed.items) and np.array_equal(whole.users, resumed.users)
    assert whole.info["best_epoch"] == resumed.info["best_epoch"]
    assert [p["loss"] for p in whole.info["curve"]] == [p["loss"] for p in resumed.info["curve"]]


def _tokenizer_data(n=48, d=6, seed=0):
    rng = np.random.default_rng(seed)
    features = ItemFeatures(n, rng.normal(size=(n, d)).astype(np.float32), np.ones(n, bool),
                            rng.normal(size=(n, d)).astype(np.float32), np.ones(n, bool))
    collab = CollabEmbeddings(np.zeros((2, 5), np.float32), rng.normal(size=(n, 5)).astype(np.float32), {},
                              rng.integers(0, 20, size=n))
    return features, collab


def test_tokenizer_resumed_equals_uninterrupted(tmp_path):
    from cemg.tokenizer.build import build_tokenizer

    features, collab = _tokenizer_data()
    # Dead-code re-seeding on (threshold 1.0) draws from torch's global stream: restored too.
    cfg = TokenizerConfig(levels=2, codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=9, batch_size=16)
    whole = build_tokenizer(features, collab, cfg, seed=1)
    resumed = _killed_then_resumed(lambda ck: build_tokenizer(features, collab, cfg, 1, "cpu", ck),
                                   tmp_path / "ck", die_at=6)
    assert np.array_equal(whole.semantic_ids.codes, resumed.semantic_ids.codes)
    for key, value in whole.model_state["state_dict"].items():
        assert torch.equal(value, resumed.model_state["state_dict"][key]), key
    assert whole.report["training"]["curve"] == resumed.report["training"]["curve"]


def test_t5_generator_resumed_mid_epoch_equals_uninterrupted(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from cemg.generator.train import train_generator

    config = T5Config(vocab_size=8, d_model=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8,
                      d_ff=32, dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    split, ids = _toy_split(), _toy_ids()
    cfg = GeneratorConfig(backbone=str(tmp_path / "t5"), t5=T5GeneratorConfig(epochs=3), batch_size=64, beams=5, patience=10,
                          valid_users=None, eval_batch_size=32)
    whole, _ = train_generator(split, ids, cfg, seed=2)
    # 5 steps per epoch, and a chance to save after each: dying at call 9 is mid-epoch 2, after a
    # save at call 8; with dropout on, the resumed steps must draw the same masks.
    resumed, _ = _killed_then_resumed(lambda ck: train_generator(split, ids, cfg, 2, checkpoint=ck),
                                      tmp_path / "ck", die_at=9)
    _same_state(whole.model, resumed.model)
    assert whole.info["history"][-1]["loss"] == resumed.info["history"][-1]["loss"]


def test_causal_generator_resumed_equals_uninterrupted(tmp_path):
    from cemg.generator.causal import train_causal_generator

    split, ids = _toy_split(), _toy_ids()
    # Dropout on, so the resumed epochs must draw the same masks as the uninterrupted ones.
    cfg = GeneratorConfig(backbone="causal", causal=CausalGeneratorConfig(epochs=6, hidden=16, heads=2, layers=1, dropout=0.2),
                          batch_size=16, beams=5, patience=10, valid_users=None,
                          eval_every=2)
    whole = train_causal_generator(split, ids, cfg, seed=4)
    resumed = _killed_then_resumed(lambda ck: train_causal_generator(split, ids, cfg, 4, checkpoint=ck),
                                   tmp_path / "ck", die_at=5)
    _same_state(whole.model, resumed.model)
    assert [r["loss"] for r in whole.info["history"]] == [r["loss"] for r in resumed.info["history"]]
    assert whole.info["best_epoch"] == resumed.info["best_epoch"]


def test_t5_decoder_generator_resumed_mid_epoch_equals_uninterrupted(tmp_path):
    from cemg.generator.train import train_generator

    split, ids = _toy_split(), _toy_ids()
    # The preset's dropout (0.1) is on, so the resumed steps must draw the same masks.
    cfg = GeneratorConfig(backbone="t5-decoder-mini", t5_decoder=T5DecoderGeneratorConfig(epochs=3), batch_size=16,
                          beams=5, patience=10, valid_users=None, eval_batch_size=32)
    whole, _ = train_generator(split, ids, cfg, seed=5)
    # 4 steps per epoch (60 windows of 16), and a chance to save after each: dying at call 7 is
    # mid-epoch 2, after a save at call 6.
    resumed, _ = _killed_then_resumed(lambda ck: train_generator(split, ids, cfg, 5, checkpoint=ck),
                                      tmp_path / "ck", die_at=7)
    _same_state(whole.model, resumed.model)
    assert [r["loss"] for r in whole.info["history"]] == [r["loss"] for r in resumed.info["history"]]
