"""Generator speed: a training step and constrained beam search on a random 12k-item catalogue.

Run from the repository root:

    python bench/generator_speed.py                              # t5-tiny, 2 threads
    python bench/generator_speed.py --threads 1 --preset t5-mini # the CPU-sized preset, 1 thread

Measures (a) seconds per training step (forward, backward, AdamW) of a backbone preset at batch
256, with 20-item and 7-item histories, (b) users/s of constrained beam search (beam 20, top 10)
over a random catalogue of 12k items with 4 levels of 256 codes, for each decoding mode, and through
GenerativeRecommender with the history excluded. Wall and process CPU time are both recorded: on a
shared machine the CPU time is the steadier of the two. The model is untrained (speed does not
depend on the weights). Writes bench/results/generator_speed_<preset>_t<threads>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cemg.artifacts import atomic_write_text
from cemg.config import GeneratorConfig
from cemg.generator.search import PrefixTree
from cemg.generator.t5 import DECODE_MODES, GenerativeRecommender, build_backbone, constrained_beam_search
from speed import synthetic_semantic_ids

log = logging.getLogger("bench.generator_speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="t5-tiny", help="backbone preset (cemg.generator.t5.PRESETS)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--users", type=int, default=256, help="users decoded per setting")
    parser.add_argument("--user-batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/results/generator_speed_<preset>_t<threads>.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    sid = synthetic_semantic_ids(args.items, levels=4, codebook_size=256, seed=0)
    sizes = sid.codebook_sizes
    model, vocab = build_backbone(args.preset, sizes, seed=0)
    model.to(args.device)
    rng = np.random.default_rng(1)
    tokens = vocab.item_tokens(sid.codes)
    log.info("load average before measuring: %.1f (CPU seconds are less affected by other processes)",
             os.getloadavg()[0])

    # (a) training step at batch 256: 20-item histories (81 encoder tokens, the cap) and 7-item
    # ones (29 tokens; Beauty's windows average 6.7 items and training batches are length-bucketed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    train = {}
    for n_hist in (20, 7):
        batch = 256
        items = rng.integers(0, args.items, size=(batch, n_hist))
        ids, mask = vocab.encode_items(items, np.full(batch, n_hist), tokens)
        labels = tokens[rng.integers(0, args.items, size=batch)]
        ids, mask, labels = (torch.from_numpy(a).to(args.device) for a in (ids, mask, labels))
        wall, cpu = [], []
        for _ in range(args.train_steps + 1):  # the first step warms up allocators
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
        train[f"history_{n_hist}"] = {"wall_s": float(np.median(wall[1:])), "cpu_s": float(np.median(cpu[1:]))}
        log.info("train step (batch %d, %d-item histories): %.2fs wall, %.2fs CPU (median of %d)",
                 batch, n_hist, *train[f"history_{n_hist}"].values(), args.train_steps)

    # (b) constrained beam search, 20-item histories, beam 20, top 10
    model.eval()
    tree = PrefixTree(sid.codes, sizes).to(args.device)
    histories = [rng.integers(0, args.items, size=20) for _ in range(args.users)]
    decode = {}
    for mode in DECODE_MODES:
        start, cpu_start = time.perf_counter(), time.process_time()
        for lo in range(0, args.users, args.user_batch):
            enc_ids, enc_mask = vocab.encode_histories(histories[lo : lo + args.user_batch], tokens, 20)
            constrained_beam_search(model, vocab, tree, torch.from_numpy(enc_ids).to(args.device),
                                    torch.from_numpy(enc_mask).to(args.device), beams=20, mode=mode)
        decode[mode] = {"users_per_s_wall": args.users / (time.perf_counter() - start),
                        "users_per_cpu_s": args.users / (time.process_time() - cpu_start)}
        log.info("beam search (%s): %.1f users/s wall, %.1f users per CPU-second", mode, *decode[mode].values())
    # the full recommender path with the history excluded, as in evaluation
    rec = GenerativeRecommender(model, vocab, sid, GeneratorConfig(eval_batch_size=args.user_batch),
                                device=args.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    rec.recommend(histories, 10, exclude=histories)
    decode["recommend_exclude_history"] = {"users_per_s_wall": args.users / (time.perf_counter() - start),
                                           "users_per_cpu_s": args.users / (time.process_time() - cpu_start)}
    log.info("recommend(k=10, exclude=history): %.1f users/s wall, %.1f users per CPU-second",
             *decode["recommend_exclude_history"].values())

    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''} torch threads={args.threads}",
        "device": args.device,
        "preset": args.preset,
        "n_items": args.items,
        "codebook_sizes": sizes,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "load_average_1min": os.getloadavg()[0],
        "train_step_batch256": train,
        "beam20_top10": decode,
        "users": args.users,
        "user_batch": args.user_batch,
    }
    out = args.out or Path(f"bench/results/generator_speed_{args.preset}_t{args.threads}.json")
    atomic_write_text(out, json.dumps(report, indent=2))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
