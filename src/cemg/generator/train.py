"""Training a generator: one loop for every backbone family, early-stopped on validation (paper 4.2.4).

The loop is the same whatever the backbone: AdamW with linear warmup then linear decay to 0, the
gradient norm clipped, length-bucketed batches redrawn every epoch, validation NDCG@10 (trie-
constrained beam search through the evaluation protocol) every `eval_every` epochs with patience,
the best model restored at the end, a checkpoint (cemg.checkpoint) after steps and epochs so a
killed run resumes bit-identically, and data-parallel training under torchrun (cemg.distributed).

What differs is a `Family` (t5.py, t5_decoder.py, causal.py): what one training example is, how a
batch of them becomes tensors, and the loss on it; and the recommender that validation ranks with.
`train_generator` picks the family from `generator.backbone`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from cemg import distributed
from cemg.artifacts import atomic_dir
from cemg.checkpoint import TrainingCheckpoint
from cemg.config import EvalConfig, GeneratorConfig, resolve_device
from cemg.data.split import SplitDataset
from cemg.evaluation.protocol import evaluate
from cemg.generator.recommender import SemanticIdRecommender
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)


class Family(Protocol):
    """A backbone family as the trainer sees it. Built after the trainer has seeded torch (its
    model's initialisation draws from the global stream) and before anything else draws."""

    label: str  # names the family in logs and progress bars
    backbone: str  # what the training record calls the backbone (e.g. "t5-tiny", "causal-gpt2")
    recommender: SemanticIdRecommender  # its `.model` is what is trained; validation ranks with it
    epochs: int
    lr: float
    n_examples: int  # how many rows the batches index; an epoch is ceil(n_examples / batch_size) steps
    eval_batch_size: int  # users per call into the recommender during validation
    find_unused_parameters: bool  # DDP: the model holds parameters no step uses

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch's global batches of example rows, shuffled with `rng`."""
        ...

    def inputs(self, rows: np.ndarray, n_global: int, device: torch.device | str) -> tuple:
        """This rank's rows of a global batch of `n_global` rows as the loss module's arguments."""
        ...

    def loss_module(self) -> torch.nn.Module:
        """A module whose forward(*inputs) is (loss to back-propagate, its detached value, weight):
        the weight (rows or positions) averages the epoch's loss. Under torchrun the first is scaled
        so that DDP's gradient average is the gradient of the global batch's mean."""
        ...

    def record(self) -> dict[str, Any]:
        """What the family adds to the training record (sizes of its training data)."""
        ...


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 50) -> list[np.ndarray]:
    """Shuffled batches of example rows whose lengths are alike.

    Beauty's histories hold 6.7 items on average, but a random batch of 256 almost always contains
    a 20-item one, and a batch is padded to its longest row, so random batches would triple the
    work. Sorting by length inside random chunks of `bucket_batches` batches keeps the order random
    while removing most padding.
    """
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches = []
    for lo in range(0, len(order), chunk):
        part = order[lo : lo + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def make_family(split: SplitDataset, semantic_ids: SemanticIds, cfg: GeneratorConfig, seed: int,
                device: str, item_content: np.ndarray | None = None) -> Family:
    """The family `generator.backbone` names (cemg.generator.backbone_family); `item_content` is
    read by the causal family with generator.causal.content_features."""
    from cemg.generator import backbone_family

    family = backbone_family(cfg.backbone)
    if family == "causal":
        from cemg.generator.causal import CausalFamily

        return CausalFamily(split, semantic_ids, cfg, device, item_content)
    if family == "t5-decoder":
        from cemg.generator.t5_decoder import TokenDecoderFamily

        return TokenDecoderFamily(split, semantic_ids, cfg, seed, device)
    from cemg.generator.t5 import T5Family

    return T5Family(split, semantic_ids, cfg, seed, device)


def train_generator(
    split: SplitDataset,
    semantic_ids: SemanticIds,
    cfg: GeneratorConfig,
    seed: int,
    device: str = "cpu",
    out_dir: Path | None = None,
    eval_cfg: EvalConfig | None = None,
    checkpoint: TrainingCheckpoint | None = None,
    item_content: np.ndarray | None = None,
) -> tuple[SemanticIdRecommender, dict]:
    """Train the generator `cfg.backbone` names on `split.train`; (best-on-validation recommender, record).
    `item_content`: the items' content vectors (ItemFeatures.content_matrix), for
    generator.causal.content_features."""
    return train_family(lambda dev: make_family(split, semantic_ids, cfg, seed, dev, item_content), split,
                        semantic_ids, cfg, seed, device, out_dir, eval_cfg, checkpoint)


def train_family(
    build: Callable[[str], Family],
    split: SplitDataset,
    semantic_ids: SemanticIds,
    cfg: GeneratorConfig,
    seed: int,
    device: str = "cpu",
    out_dir: Path | None = None,
    eval_cfg: EvalConfig | None = None,
    checkpoint: TrainingCheckpoint | None = None,
) -> tuple[SemanticIdRecommender, dict]:
    """Train the family `build(device)` makes; returns the best-on-validation recommender and a record.

    `build` is called once torch is seeded and this process's device is known (under torchrun,
    its own GPU), so every rank builds the same initial model.

    With `out_dir`, each new best model is saved there as it is found, and the final one at the end.
    With a `checkpoint`, the whole training state is saved after epochs and, since a T5 epoch on
    Beauty takes tens of minutes on a CPU, after steps once `checkpoint.every_seconds` have passed;
    a rerun continues from the step after the last save. Under torchrun each rank trains on its
    share of every batch and rank 0 evaluates and saves (cemg.distributed).
    """
    if semantic_ids.n_items != split.n_items:
        raise ValueError(
            f"semantic ids cover {semantic_ids.n_items} items but the dataset has {split.n_items}"
        )
    device = distributed.setup(resolve_device(device))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    family = build(device)
    rec = family.recommender
    model = rec.model
    eval_cfg = eval_cfg or EvalConfig()
    eval_cfg = eval_cfg.model_copy(update={"ks": sorted(set(eval_cfg.ks) | {10})})
    valid_split = split.with_valid_subsample(cfg.valid_users, seed)
    if family.n_examples == 0:
        raise ValueError("no training examples: every training sequence has fewer than 2 items")

    steps_per_epoch = -(-family.n_examples // cfg.batch_size)  # exact: only the last bucket is short
    total_steps = steps_per_epoch * family.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=family.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s, %s mode: %s, %d steps/epoch, %d parameters, %d validation users, device %s", family.label,
             cfg.mode, ", ".join(f"{v} {k.removeprefix('n_')}" for k, v in family.record().items()),
             steps_per_epoch, n_params, len(valid_split.valid), device)

    history: list[dict] = []
    best = {"ndcg": -1.0, "epoch": 0, "state": None}
    bad_evals, start = 0, time.perf_counter()
    step_loss = distributed.wrap(family.loss_module(), device, find_unused_parameters=family.find_unused_parameters)
    distributed.seed_per_rank(seed)
    # A checkpoint holds the epoch in progress, the steps done in it and the batch generator's
    # state at the epoch's start: the epoch's batches are redrawn and the done ones skipped.
    checkpoint = checkpoint or TrainingCheckpoint(None)
    first_epoch, done_steps, done_loss, done_weight = 1, 0, 0.0, 0
    saved = checkpoint.restore(model=model, optimizer=optimizer, scheduler=scheduler, generators={"batches": rng})
    if saved is not None:
        saved = _current_progress(saved)
        history, best, bad_evals = saved["history"], saved["best"], saved["bad_evals"]
        first_epoch, done_steps = saved["epoch"], saved["step"]
        done_loss, done_weight = saved["epoch_loss"], saved["epoch_weight"]
        start -= saved["seconds"]

    def save(epoch: int, step: int, epoch_loss: float, epoch_weight: float, batch_rng: np.random.Generator) -> None:
        checkpoint.save(model=model, optimizer=optimizer, scheduler=scheduler, generators={"batches": batch_rng},
                        epoch=epoch, step=step, epoch_loss=epoch_loss, epoch_weight=epoch_weight, history=history,
                        best=best, bad_evals=bad_evals, seconds=time.perf_counter() - start)

    for epoch in range(first_epoch, family.epochs + 1):
        model.train()
        epoch_rng = copy.deepcopy(rng)
        batches = family.batches(cfg.batch_size, rng)
        epoch_start, total, weight = time.perf_counter(), done_loss, done_weight
        bar = tqdm(batches, desc=f"{family.label} epoch {epoch}", leave=False,
                   disable=None if distributed.is_main() else True)
        for step, rows in enumerate(bar, 1):
            if step <= done_steps or len(rows) < distributed.world_size():
                continue  # done before the resume, or a tail batch too short to give every rank a row
            weighted, loss, n = step_loss(*family.inputs(distributed.shard(rows), len(rows), device))
            optimizer.zero_grad(set_to_none=True)
            weighted.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total, weight = total + float(loss) * n, weight + n
            bar.set_postfix(loss=f"{float(loss):.3f}")
            if step < len(batches) and checkpoint.due():
                save(epoch, step, total, weight, epoch_rng)
        done_steps, done_loss, done_weight = 0, 0.0, 0
        record = {"epoch": epoch, "loss": total / max(weight, 1), "train_seconds": time.perf_counter() - epoch_start}
        if epoch % cfg.eval_every == 0 or epoch == family.epochs:
            result = None
            if distributed.is_main():
                result = evaluate(rec, valid_split, "valid", eval_cfg, batch_size=family.eval_batch_size)
            # every rank takes rank 0's early-stopping decision
            metrics, eval_seconds = distributed.broadcast_object(
                (result.metrics, result.seconds) if result is not None else None)
            record.update(valid=metrics, eval_seconds=eval_seconds)
            ndcg = metrics["NDCG@10"]
            if ndcg > best["ndcg"]:
                best = {"ndcg": ndcg, "epoch": epoch,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
                bad_evals = 0
                if out_dir is not None and distributed.is_main():
                    rec.info = _info(cfg, family, history + [record], best, n_params, start, device)
                    with atomic_dir(Path(out_dir)) as tmp:
                        rec.save(tmp)
            else:
                bad_evals += 1
            log.info("%s epoch %d: loss %.4f (%.1fs), valid NDCG@10 %.4f HR@10 %.4f (%.1fs)%s", family.label,
                     epoch, record["loss"], record["train_seconds"], ndcg, metrics["HR@10"], eval_seconds,
                     " best" if bad_evals == 0 else "")
        else:
            log.info("%s epoch %d: loss %.4f (%.1fs)", family.label, epoch, record["loss"], record["train_seconds"])
        history.append(record)
        if bad_evals >= cfg.patience:
            log.info("%s: early stop after epoch %d (best epoch %d)", family.label, epoch, best["epoch"])
            break
        if checkpoint.due():
            save(epoch + 1, 0, 0.0, 0, rng)

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    info = _info(cfg, family, history, best, n_params, start, device)
    rec.info = info
    if out_dir is not None and distributed.is_main():
        with atomic_dir(Path(out_dir)) as tmp:
            rec.save(tmp)
    log.info("%s: trained %d epochs in %.0fs, best epoch %d, valid NDCG@10 %.4f%s", family.label,
             info["epochs_run"], info["seconds"], info["best_epoch"], info["best_valid_ndcg10"],
             f", saved to {out_dir}" if out_dir else "")
    return rec, info


def _current_progress(saved: dict) -> dict:
    """A checkpoint's progress in this loop's terms. Checkpoints of the causal generator's own loop
    (before the loops were one) were taken after whole epochs only and named things differently."""
    if "curve" in saved:
        return {"history": saved["curve"], "best": saved["best"], "bad_evals": saved["stale"],
                "epoch": saved["epoch"] + 1, "step": 0, "epoch_loss": 0.0, "epoch_weight": 0,
                "seconds": saved["seconds"]}
    # The T5's own loop weighted every step alike and did not record the weight.
    return {"epoch_weight": saved["step"], **saved}


def _info(cfg: GeneratorConfig, family: Family, history: list[dict], best: dict, n_params: int, start: float,
          device: str) -> dict:
    seconds = [r["train_seconds"] for r in history]
    return {
        "mode": cfg.mode,
        "backbone": family.backbone,
        "best_epoch": best["epoch"],
        "best_valid_ndcg10": best["ndcg"],
        "epochs_run": len(history),
        **family.record(),
        "n_parameters": n_params,
        "seconds": time.perf_counter() - start,
        "train_seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0,
        "device": str(device),
        "history": copy.deepcopy(history),
    }
