"""Training the generator: next-item prediction over semantic ids with early stopping (paper 4.2.4).

Every position t >= 1 of a user's training sequence is one example: the (at most max_history)
items before it are the input, the item at t the target, as in TIGER's sliding windows. The loss is
T5's token cross-entropy on the target's L codes; the model kept is the one with the best
validation NDCG@10 (constrained beam search through the evaluation protocol).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

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
from cemg.generator.backbone import build_backbone
from cemg.generator.model import GenerativeRecommender
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NextItemExamples:
    """All sliding-window examples of the training sequences, without materialising the windows."""

    items: np.ndarray  # (total,) the training sequences concatenated
    seq_start: np.ndarray  # (n_examples,) where the example's sequence starts in `items`
    position: np.ndarray  # (n_examples,) index of the target in `items`
    max_history: int

    def __len__(self) -> int:
        return len(self.position)

    @property
    def history_lengths(self) -> np.ndarray:
        return np.minimum(self.position - self.seq_start, self.max_history)

    @classmethod
    def from_sequences(cls, sequences: list[np.ndarray], max_history: int) -> NextItemExamples:
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        items = np.concatenate(sequences).astype(np.int64) if len(sequences) else np.zeros(0, np.int64)
        per_seq = np.maximum(lengths - 1, 0)
        seq_start = np.repeat(starts, per_seq)
        # targets are positions 1..len-1 of each sequence
        offset_in_seq = np.arange(per_seq.sum()) - np.repeat(np.cumsum(per_seq) - per_seq, per_seq) + 1
        return cls(items, seq_start, seq_start + offset_in_seq, max_history)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(history item matrix (b, m) left-aligned, lengths (b,), targets (b,))."""
        pos = self.position[rows]
        lo = np.maximum(self.seq_start[rows], pos - self.max_history)
        lengths = pos - lo
        width = int(lengths.max(initial=0))
        idx = lo[:, None] + np.arange(width)[None, :]
        history = self.items[np.minimum(idx, pos[:, None] - 1)]  # entries past the length are ignored
        return history, lengths, self.items[pos]


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 50) -> list[np.ndarray]:
    """Shuffled batches of example rows whose history lengths are alike.

    Beauty's windows hold 6.7 items on average, but a random batch of 256 almost always contains a
    20-item one, so padding to the longest would triple the encoder's work. Sorting by length inside
    random chunks of `bucket_batches` batches keeps the order random while removing most padding.
    """
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches = []
    for lo in range(0, len(order), chunk):
        part = order[lo : lo + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]



def train_generator(
    split: SplitDataset,
    semantic_ids: SemanticIds,
    cfg: GeneratorConfig,
    seed: int,
    device: str = "cpu",
    out_dir: Path | None = None,
    eval_cfg: EvalConfig | None = None,
    checkpoint: TrainingCheckpoint | None = None,
) -> tuple[GenerativeRecommender, dict]:
    """Train a generator on `split.train`; returns the best-on-validation recommender and a record.

    With `out_dir`, each new best model is saved there (GenerativeRecommender.save) as it is found.
    With a `checkpoint`, the whole training state is saved after epochs and, since a Beauty epoch
    takes tens of minutes on a CPU, after steps once `checkpoint.every_seconds` have passed; a rerun
    continues from the step after the last save. Under torchrun each rank trains on its share of
    every batch and rank 0 evaluates and saves (cemg.distributed).
    """
    if semantic_ids.n_items != split.n_items:
        raise ValueError(
            f"semantic ids cover {semantic_ids.n_items} items but the dataset has {split.n_items}"
        )
    if cfg.backbone == "causal":
        raise ValueError("generator.backbone 'causal' is trained by cemg.generator.causal.train_causal_generator; "
                         "train_generator is the T5 path (backbone t5-tiny, t5-mini, or a T5 name/path)")
    device = distributed.setup(resolve_device(device))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, vocab = build_backbone(cfg.backbone, semantic_ids.codebook_sizes, seed)
    rec = GenerativeRecommender(model, vocab, semantic_ids, cfg, split.max_history, device)
    model = rec.model
    eval_cfg = eval_cfg or EvalConfig()
    eval_cfg = eval_cfg.model_copy(update={"ks": sorted(set(eval_cfg.ks) | {10})})
    valid_split = split.with_valid_subsample(cfg.valid_users, seed)

    examples = NextItemExamples.from_sequences(split.train, split.max_history)
    if len(examples) == 0:
        raise ValueError("no training examples: every training sequence has fewer than 2 items")
    steps_per_epoch = -(-len(examples) // cfg.batch_size)  # exact: only the last bucket is short
    total_steps = steps_per_epoch * cfg.t5.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.t5.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("generator: %d examples from %d sequences, %d steps/epoch, %d parameters, %d validation users, "
             "device %s", len(examples), len(split.train), steps_per_epoch, n_params, len(valid_split.valid), device)

    labels_offsets = vocab.level_offsets()
    item_tokens = rec.item_tokens
    history: list[dict] = []
    best = {"ndcg": -1.0, "epoch": 0, "state": None}
    bad_evals, start = 0, time.perf_counter()
    train_model = distributed.wrap(model, device)
    distributed.seed_per_rank(seed)
    # A checkpoint holds the epoch in progress, the steps done in it and the batch generator's
    # state at the epoch's start: the epoch's batches are redrawn and the done ones skipped.
    checkpoint = checkpoint or TrainingCheckpoint(None)
    first_epoch, done_steps, done_loss = 1, 0, 0.0
    saved = checkpoint.restore(model=model, optimizer=optimizer, scheduler=scheduler, generators={"batches": rng})
    if saved is not None:
        history, best, bad_evals = saved["history"], saved["best"], saved["bad_evals"]
        first_epoch, done_steps, done_loss = saved["epoch"], saved["step"], saved["epoch_loss"]
        start -= saved["seconds"]

    def save(epoch: int, step: int, epoch_loss: float, batch_rng: np.random.Generator) -> None:
        checkpoint.save(model=model, optimizer=optimizer, scheduler=scheduler, generators={"batches": batch_rng},
                        epoch=epoch, step=step, epoch_loss=epoch_loss, history=history, best=best,
                        bad_evals=bad_evals, seconds=time.perf_counter() - start)

    for epoch in range(first_epoch, cfg.t5.epochs + 1):
        model.train()
        epoch_rng = copy.deepcopy(rng)
        batches = length_bucketed_batches(examples.history_lengths, cfg.batch_size, rng)
        epoch_start, total_loss = time.perf_counter(), done_loss
        bar = tqdm(batches, desc=f"generator epoch {epoch}", leave=False,
                   disable=None if distributed.is_main() else True)
        for step, rows in enumerate(bar, 1):
            if step <= done_steps or len(rows) < distributed.world_size():
                continue
            local = distributed.shard(rows)
            items, lengths, targets = examples.batch(local)
            ids, mask = vocab.encode_items(items, lengths, item_tokens)
            labels = semantic_ids.codes[targets] + labels_offsets[None, :]  # (b, L) target tokens
            out = train_model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
                labels=torch.from_numpy(labels).to(device),
            )
            optimizer.zero_grad(set_to_none=True)
            # T5's loss is the mean over this rank's rows; weighting it by the rank's share of the
            # global batch makes DDP's gradient average the gradient of the global batch's mean.
            (out.loss * (len(local) * distributed.world_size() / len(rows))).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss = out.loss.item()
            total_loss += loss
            bar.set_postfix(loss=f"{loss:.3f}")
            if step < len(batches) and checkpoint.due():
                save(epoch, step, total_loss, epoch_rng)
        done_steps, done_loss = 0, 0.0
        record = {"epoch": epoch, "loss": total_loss / steps_per_epoch,
                  "train_seconds": time.perf_counter() - epoch_start}
        if epoch % cfg.eval_every == 0 or epoch == cfg.t5.epochs:
            result = None
            if distributed.is_main():
                result = evaluate(rec, valid_split, "valid", eval_cfg, batch_size=cfg.eval_batch_size * 8)
            metrics, eval_seconds = distributed.broadcast_object(
                (result.metrics, result.seconds) if result is not None else None)
            record.update(valid=metrics, eval_seconds=eval_seconds)
            ndcg = metrics["NDCG@10"]
            if ndcg > best["ndcg"]:
                best = {"ndcg": ndcg, "epoch": epoch,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
                bad_evals = 0
                if out_dir is not None and distributed.is_main():
                    rec.info = _info(history + [record], best, examples, n_params, start)
                    with atomic_dir(Path(out_dir)) as tmp:
                        rec.save(tmp)
            else:
                bad_evals += 1
            log.info("generator epoch %d: loss %.4f (%.1fs), valid NDCG@10 %.4f HR@10 %.4f (%.1fs)%s",
                     epoch, record["loss"], record["train_seconds"], ndcg, metrics["HR@10"],
                     eval_seconds, " best" if bad_evals == 0 else "")
        else:
            log.info("generator epoch %d: loss %.4f (%.1fs)", epoch, record["loss"], record["train_seconds"])
        history.append(record)
        if bad_evals >= cfg.patience:
            log.info("generator: early stop after epoch %d (best epoch %d)", epoch, best["epoch"])
            break
        if checkpoint.due():
            save(epoch + 1, 0, 0.0, rng)

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    info = _info(history, best, examples, n_params, start)
    rec.info = info
    model.eval()
    if out_dir is not None and distributed.is_main():
        with atomic_dir(Path(out_dir)) as tmp:
            rec.save(tmp)
    log.info("generator: trained in %.0fs, best epoch %d, valid NDCG@10 %.4f%s", info["seconds"],
             info["best_epoch"], info["best_valid_ndcg10"], f", saved to {out_dir}" if out_dir else "")
    return rec, info


def _info(history: list[dict], best: dict, examples: NextItemExamples, n_params: int, start: float) -> dict:
    return {
        "best_epoch": best["epoch"],
        "best_valid_ndcg10": best["ndcg"],
        "epochs_run": len(history),
        "n_examples": len(examples),
        "n_parameters": n_params,
        "seconds": time.perf_counter() - start,
        "history": copy.deepcopy(history),
    }
