"""SASRec and GRU4Rec on tiny data: shapes, padding, exclusion, early stopping, and learning a
deterministic pattern that popularity cannot."""

import numpy as np
import pytest
import torch

from cemg.baselines import GRU4Rec, SASRec, SequentialRecommender, train_baseline
from cemg.baselines.sequential import left_pad, training_windows
from cemg.config import load_config
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.evaluation.protocol import evaluate

N_ITEMS = 30


def cycle_split(n_users: int = 120, seed: int = 0):
    """Every user walks the catalogue in steps of 7 from a random start: the next item is always
    determined by the last one, while every item is about equally popular."""
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(N_ITEMS) + 7 * np.arange(rng.integers(6, 12))) % N_ITEMS for _ in range(n_users)]
    dataset = InteractionDataset("cycle", [str(u) for u in range(n_users)], seqs,
                                 ItemTable(keys=[f"i{i}" for i in range(N_ITEMS)]))
    return leave_one_out(dataset, max_history=8)


def tiny_config(*overrides: str):
    return load_config(None, [
        "device=cpu", "data.max_history=8", "baseline.hidden=32", "baseline.dropout=0.1", "baseline.lr=1e-2",
        "baseline.batch_size=32", "baseline.max_epochs=20", "baseline.eval_every=5", "baseline.patience=2",
        *overrides,
    ])


def make_net(name: str, max_len: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "sasrec":
        return SASRec(N_ITEMS, max_len, hidden=16, layers=2, heads=2, dropout=0.0)
    return GRU4Rec(N_ITEMS, max_len, hidden=16, layers=2, dropout=0.0)


def test_left_pad_keeps_the_newest_items_shifted_by_one():
    got = left_pad([np.array([4, 5, 6, 7]), np.array([0]), np.array([], np.int64)], 3)
    assert got.tolist() == [[6, 7, 8], [0, 0, 1], [0, 0, 0]]


def test_training_windows_predict_the_next_item_at_every_position():
    inputs, targets = training_windows([np.array([0, 1, 2, 3, 4]), np.array([5]), np.array([6, 7])], 3)
    # the last 4 items of [0..4] give inputs [1 2 3] -> targets [2 3 4]; the single-item user is dropped
    assert inputs.tolist() == [[2, 3, 4], [0, 0, 7]]
    assert targets.tolist() == [[3, 4, 5], [0, 0, 8]]


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_padding_never_reaches_real_positions(name):
    net = make_net(name).eval()
    seq = torch.tensor([[0, 0, 0, 0, 0, 3, 9, 4], [0, 0, 0, 1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = net(seq)
        net.item_emb.weight[0] = torch.randn(16) * 5  # a pad row that would show if pads were read
        after = net(seq)
    assert before.shape == (2, 8, 16)
    real = seq > 0
    torch.testing.assert_close(before[real], after[real])


def test_sasrec_is_causal():
    net = make_net("sasrec").eval()
    a = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5]])
    b = a.clone()
    b[0, -1] = 17
    with torch.no_grad():
        torch.testing.assert_close(net(a)[:, :-1], net(b)[:, :-1])


def test_gru4rec_state_does_not_depend_on_how_much_padding_precedes_the_history():
    short, long = make_net("gru4rec", max_len=5).eval(), make_net("gru4rec", max_len=12).eval()
    long.load_state_dict(short.state_dict())
    history = [np.array([3, 4, 5])]
    torch.testing.assert_close(SequentialRecommender(short).scores(history), SequentialRecommender(long).scores(history))


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_recommend_shape_exclusion_and_padding(name):
    model = SequentialRecommender(make_net(name))
    histories = [np.array([1, 2, 3]), np.array([], np.int64), np.arange(20) % N_ITEMS]
    exclude = [np.array([1, 2, 3]), np.array([], np.int64), np.arange(N_ITEMS - 2)]
    got = model.recommend(histories, k=5, exclude=exclude)
    assert got.shape == (3, 5) and got.dtype == np.int64
    assert not set(got[0]) & {1, 2, 3}
    assert len(set(got[1])) == 5 and got[1].min() >= 0
    # only items 28 and 29 are left for the third user; the rest of the list is padding
    assert sorted(got[2, :2].tolist()) == [28, 29] and got[2, 2:].tolist() == [-1, -1, -1]
    everything = model.recommend(histories[:1], k=N_ITEMS + 3)
    assert sorted(everything[0, :N_ITEMS].tolist()) == list(range(N_ITEMS))
    assert everything[0, N_ITEMS:].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_learns_a_cycle_far_above_popularity(name):
    split = cycle_split()
    cfg = tiny_config()
    popular, _ = train_baseline("pop", split, cfg)
    model, report = train_baseline(name, split, cfg)
    pop_ndcg = evaluate(popular, split, "test", cfg.evaluation).metrics["NDCG@10"]
    ndcg = evaluate(model, split, "test", cfg.evaluation).metrics["NDCG@10"]
    assert pop_ndcg < 0.4
    assert ndcg > 0.9
    assert report.best_valid > 0.9 and report.history[0]["loss"] > report.history[-1]["loss"]


def test_early_stopping_restores_the_best_weights(tmp_path):
    split = cycle_split()
    # with lr = 0 validation never improves on the first evaluation: stop after `patience` more
    frozen, report = train_baseline("sasrec", split, tiny_config("baseline.lr=0", "baseline.eval_every=2"))
    assert report.best_epoch == 2 and report.epochs_run == 2 * (1 + 2)
    model, report = train_baseline("gru4rec", split, tiny_config("baseline.max_epochs=10", "baseline.eval_every=1"))
    assert [row["epoch"] for row in report.history] == list(range(1, report.epochs_run + 1))
    assert evaluate(model, split, "valid", load_config().evaluation).metrics["NDCG@10"] == pytest.approx(report.best_valid)
    model.save(tmp_path / "gru")
    again = SequentialRecommender.load(tmp_path / "gru")
    histories = split.test.histories[:10]
    np.testing.assert_array_equal(again.recommend(histories, 5), model.recommend(histories, 5))


def test_training_is_reproducible_from_the_seed():
    split = cycle_split(n_users=40)
    cfg = tiny_config("baseline.max_epochs=2", "baseline.eval_every=1")
    losses = [[row["loss"] for row in train_baseline("sasrec", split, cfg)[1].history] for _ in range(2)]
    assert losses[0] == losses[1]
