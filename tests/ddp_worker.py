"""Trains the tiny RQ-VAE, causal, T5 and T5-decoder generators of tests/test_distributed.py and
writes what they learned to a JSON file; run as a single process, or under torchrun (rank 0 writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from cemg import distributed
from cemg.collab.artifact import CollabEmbeddings
from cemg.config import (
    CausalGeneratorConfig,
    GeneratorConfig,
    T5DecoderGeneratorConfig,
    T5GeneratorConfig,
    TokenizerConfig,
)
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.features.artifact import ItemFeatures
from cemg.tokenizer.semantic_ids import SemanticIds

N_ITEMS, SIZES = 30, (4, 4, 2)


def toy_split(n_users=64, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(N_ITEMS) + np.arange(rng.integers(5, 9))) % N_ITEMS for _ in range(n_users)]
    items = ItemTable(keys=[f"i{i}" for i in range(N_ITEMS)])
    return leave_one_out(InteractionDataset("toy", [f"u{u}" for u in range(n_users)], seqs, items), 20)


def toy_ids(seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    return SemanticIds(grid[rng.choice(len(grid), N_ITEMS, replace=False)], list(SIZES))


def flat_params(module: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1).double() for p in module.parameters()]).tolist()


def tokenizer_run() -> dict:
    from cemg.tokenizer.build import build_tokenizer

    rng = np.random.default_rng(0)
    n, d = 64, 6
    features = ItemFeatures(n, rng.normal(size=(n, d)).astype(np.float32), np.ones(n, bool),
                            rng.normal(size=(n, d)).astype(np.float32), np.ones(n, bool))
    collab = CollabEmbeddings(np.zeros((2, 5), np.float32), rng.normal(size=(n, 5)).astype(np.float32), {},
                              rng.integers(0, 20, size=n))
    # Dead-code re-seeding off: it draws replacement codes from one rank's rows (see docs/reliability.md).
    cfg = TokenizerConfig(levels=2, codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=6, batch_size=16,
                          dead_code_threshold=0.0)
    art = build_tokenizer(features, collab, cfg, seed=1)
    state = art.model_state["state_dict"]
    return {"codes": art.semantic_ids.codes.tolist(),
            "losses": [p["loss"] for p in art.report["training"]["curve"]],
            "recon": art.report["reconstruction"]["mse"],
            "params": torch.cat([v.reshape(-1).double() for v in state.values() if v.is_floating_point()]).tolist()}


def causal_run() -> dict:
    from cemg.generator.causal import train_causal_generator

    cfg = GeneratorConfig(backbone="causal", causal=CausalGeneratorConfig(epochs=4, hidden=16, heads=2, layers=1, dropout=0.0),
                          batch_size=16, beams=5, patience=10, valid_users=None)
    rec = train_causal_generator(toy_split(), toy_ids(), cfg, seed=3)
    return {"valid": [r["valid"]["NDCG@10"] for r in rec.info["history"]], "params": flat_params(rec.model),
            "best_epoch": rec.info["best_epoch"]}


def t5_run(folder: Path) -> dict:
    from transformers import T5Config, T5ForConditionalGeneration

    from cemg.generator.train import train_generator

    if distributed.is_main():
        config = T5Config(vocab_size=8, d_model=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8,
                          d_ff=32, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        torch.manual_seed(0)
        T5ForConditionalGeneration(config).save_pretrained(folder / "t5")
    distributed.barrier()
    cfg = GeneratorConfig(backbone=str(folder / "t5"), t5=T5GeneratorConfig(epochs=2), batch_size=64, beams=5, patience=10,
                          valid_users=None, eval_batch_size=32)
    rec, info = train_generator(toy_split(), toy_ids(), cfg, seed=2)
    return {"valid": [r["valid"]["NDCG@10"] for r in info["history"]], "params": flat_params(rec.model)}


def t5_decoder_run() -> dict:
    from cemg.generator import t5_decoder
    from cemg.generator.train import train_generator

    # Presets carry dropout, which draws per process; this one is the mini preset without it.
    t5_decoder.PRESETS["t5-decoder-ddp-test"] = {**t5_decoder.PRESETS["t5-decoder-mini"], "d_model": 32, "d_kv": 8,
                                                 "d_ff": 64, "dropout_rate": 0.0}
    cfg = GeneratorConfig(backbone="t5-decoder-ddp-test", t5_decoder=T5DecoderGeneratorConfig(epochs=3), batch_size=16,
                          beams=5, patience=10, valid_users=None, eval_batch_size=32)
    rec, info = train_generator(toy_split(), toy_ids(), cfg, seed=6)
    return {"valid": [r["valid"]["NDCG@10"] for r in info["history"]], "params": flat_params(rec.model)}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    distributed.setup("cpu")
    results = {"world_size": distributed.world_size(), "tokenizer": tokenizer_run(), "causal": causal_run(),
               "t5": t5_run(out.parent), "t5_decoder": t5_decoder_run()}
    if distributed.is_main():
        out.write_text(json.dumps(results), encoding="utf-8")


def compare(one: Path, two: Path) -> None:
    """Print how far two result files (one process, torchrun) are apart."""
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    for name in ("tokenizer", "causal", "t5", "t5_decoder"):
        diff = np.abs(np.array(a[name]["params"]) - np.array(b[name]["params"])).max()
        line = f"{name}: {len(a[name]['params']):,} weights, max |difference| {diff:.2e}"
        if "valid" in a[name]:
            gap = np.abs(np.array(a[name]["valid"]) - np.array(b[name]["valid"])).max()
            line += f"; valid NDCG@10 per epoch {a[name]['valid']} vs {b[name]['valid']} (max gap {gap:.1e})"
        if "codes" in a[name]:
            line += f"; semantic ids identical: {a[name]['codes'] == b[name]['codes']}"
        print(line)


if __name__ == "__main__":
    # python tests/ddp_worker.py OUT.json | torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT.json
    # python tests/ddp_worker.py --compare ONE.json TWO.json
    if sys.argv[1] == "--compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main(Path(sys.argv[1]))
