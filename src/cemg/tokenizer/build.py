"""The tokenizer stage: fuse each item's modalities, train the RQ-VAE, and give every item a unique
semantic id (paper 4.2.2.3 and 4.2.3).

Choices the paper leaves open, and why:

- Reconstruction target (`tokenizer.recon_target`). "inputs" (default): the decoder rebuilds the
  item's raw, scaled inputs [v, t, e_c] (missing modalities left out of the loss), so the target does
  not move with W_Q / W_K and the fusion weights are trained to mix the modalities in the way that
  best preserves both of them through the bottleneck. "fused": the decoder rebuilds the fused
  vector itself, under stop-gradient (without it the loss could shrink the target instead of fitting
  it). The two are compared in docs/results.md (## Tokenizer).
- Scaling. Each modality is divided by its root-mean-square value over the items that have it, so
  that text, image and LightGCN vectors enter the dot products, the fused vector and the loss on a
  common scale whatever their encoders produced. The scales are stored with the model.
- Collisions. Items that share all M codes get one more level holding their index within the
  colliding group (codebook size = the largest group), as in TIGER (Rajput et al. 2023). It never
  fails, keeps every learned code as it is, and leaves non-colliding items' ids meaningful; moving
  a colliding item to the nearest unused last-level code instead can run out of codes (a prefix
  shared by more than K items) and gives that item a code its residual does not support. The extra
  level is added only when there is a collision, so its presence is itself reported.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cemg import distributed
from cemg.checkpoint import TrainingCheckpoint
from cemg.collab.artifact import CollabEmbeddings
from cemg.config import TokenizerConfig
from cemg.features.artifact import ItemFeatures
from cemg.tokenizer.fusion import MODALITIES, build_fusion
from cemg.tokenizer.rqvae import RQVAE
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
REPORT_FILE = "report.json"
IDS_DIR = "semantic_ids"
_INIT_SAMPLE = 65_536  # k-means initialisation sees at most this many items (memory, not quality)
_EVAL_BATCH = 8192


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class TokenizerInputs:
    """Scaled per-modality tensors; a modality the config switches off or the features lack is None."""

    image: Tensor | None
    image_mask: Tensor | None
    text: Tensor | None
    text_mask: Tensor | None
    collab: Tensor | None
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return next(x for x in (self.image, self.text, self.collab) if x is not None).shape[0]

    def rows(self, idx: Tensor) -> TokenizerInputs:
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        return TokenizerInputs(
            pick(self.image), pick(self.image_mask), pick(self.text), pick(self.text_mask), pick(self.collab), self.scales
        )


def _rms(x: np.ndarray, mask: np.ndarray | None) -> float:
    rows = x if mask is None else x[mask]
    value = float(np.sqrt(np.mean(rows.astype(np.float64) ** 2))) if rows.size else 0.0
    return value if value > 0 else 1.0


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit RMS (zero rows stay zero)."""
    rms = np.sqrt(np.mean(x**2, axis=1, keepdims=True))
    return x / np.where(rms > 0, rms, 1.0)


def _content_columns(features: ItemFeatures, cfg: TokenizerConfig, scaled_like: ItemFeatures) -> np.ndarray | None:
    """The ridge's inputs: each used modality scaled by its RMS over `scaled_like`'s items (the
    training items, also for items added later), and its presence flag; None without content."""
    columns = []
    for name in MODALITIES:
        values, mask = getattr(features, name), getattr(features, f"{name}_mask")
        ref, ref_mask = getattr(scaled_like, name), getattr(scaled_like, f"{name}_mask")
        if values is None or ref is None or not {"image": cfg.use_image, "text": cfg.use_text}[name]:
            continue
        columns += [values * mask[:, None] / _rms(ref, ref_mask), mask[:, None].astype(np.float64)]
    return np.concatenate(columns, axis=1) if columns else None


def _content_ridge(features: ItemFeatures, collab: CollabEmbeddings, cfg: TokenizerConfig):
    """The ridge content -> unit(e_c) of `calibrate_collab`, fitted on the items the graph knows well;
    None without content inputs."""
    content = _content_columns(features, cfg, features)
    if content is None:
        return None
    counts = collab.item_counts.astype(np.float64)
    known = counts > cfg.collab_prior_weight
    if known.sum() < 2 * content.shape[1]:  # too few well-known items: fit on every seen item
        known = counts > 0
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0, solver="cholesky").fit(content[known], _unit(collab.items.astype(np.float64))[known])


def calibrate_collab(features: ItemFeatures, collab: CollabEmbeddings, cfg: TokenizerConfig) -> np.ndarray:
    """The collaborative vectors the tokenizer fuses, per `cfg.collab_calibration` (see the config).

    "unit" removes the norm, which in LightGCN tracks popularity; "content" also replaces what
    the graph could not teach: w * unit(e_c) + (1 - w) * unit(ridge(content)), w = n / (n + k), so
    a cold item's collaborative part says what items with its content are like to the graph,
    rather than being close to its random initialisation. The ridge (scikit-learn) maps the
    item's scaled text and image vectors (and their presence flags) to unit(e_c); it is fitted
    on the items the graph knows well (n > k), and its closed form keeps the result deterministic.
    """
    if cfg.collab_calibration == "none":
        return collab.items
    if collab.item_counts is None:
        raise ValueError("tokenizer.collab_calibration needs the collab artifact's item_counts, which this "
                         "run's collab stage predates: rerun it (`cemg run ... --force collab`)")
    out = _unit(collab.items.astype(np.float64))
    if cfg.collab_calibration == "unit":
        return out.astype(np.float32)
    ridge = _content_ridge(features, collab, cfg)
    if ridge is None:  # collab-only ids (an ablation): no content to predict from; the switched-off
        # modalities must not leak in through the calibration either
        log.info("collab calibration 'content' without text or image inputs: unit vectors only")
        return out.astype(np.float32)
    prior = _unit(ridge.predict(_content_columns(features, cfg, features)))
    counts = collab.item_counts.astype(np.float64)
    k = cfg.collab_prior_weight
    w = (counts / (counts + k))[:, None] if k > 0 else (counts > 0).astype(np.float64)[:, None]
    return _unit(w * out + (1 - w) * prior).astype(np.float32)


COLLAB_STAND_INS = ("content", "zeros")


def collab_stand_in(
    new: ItemFeatures, features: ItemFeatures, collab: CollabEmbeddings, cfg: TokenizerConfig, kind: str
) -> np.ndarray:
    """Collaborative vectors, in `calibrate_collab`'s space, for items LightGCN never saw (`new`,
    encoded after training; `features` and `collab` are the training items').

    "content": unit(ridge(content)) with the ridge of `calibrate_collab`, i.e. exactly what the
    "content" calibration gives a training item with no interaction (w = 0); under the "none"
    calibration it is scaled to the mean row RMS of the raw LightGCN vectors. Needs the collab
    artifact's item_counts and a text or image modality.
    "zeros": the zero vector. In the fusion layer the query W_Q e_c is then 0, every present
    modality's logit is 0, so the item's image and text get equal weights (1/2 each; 1 for its
    only modality), and the collaborative half of the fused vector is 0: the item is placed by its
    content alone, at the position of an item the graph has nothing to say about.
    """
    if kind == "zeros":
        return np.zeros((new.n_items, collab.items.shape[1]), dtype=np.float32)
    if kind != "content":
        raise ValueError(f"unknown collaborative stand-in {kind!r}; expected one of {', '.join(COLLAB_STAND_INS)}")
    if collab.item_counts is None:
        raise ValueError("the 'content' stand-in needs the collab artifact's item_counts, which this run's collab "
                         "stage predates; use 'zeros' or rerun the collab stage")
    ridge = _content_ridge(features, collab, cfg)
    if ridge is None:
        raise ValueError("the 'content' stand-in predicts from text or image vectors, and this tokenizer uses "
                         "neither; use 'zeros'")
    prior = _unit(ridge.predict(_content_columns(new, cfg, features)))
    if cfg.collab_calibration == "none":
        prior = prior * float(np.sqrt(np.mean(collab.items.astype(np.float64) ** 2, axis=1)).mean())
    return prior.astype(np.float32)


def prepare_inputs(
    features: ItemFeatures,
    collab: CollabEmbeddings | None,
    cfg: TokenizerConfig,
    device: str = "cpu",
    scales: dict[str, float] | None = None,
    collab_vectors: np.ndarray | None = None,
) -> TokenizerInputs:
    """Check shapes, apply the ablation switches, scale each modality to unit RMS, move to `device`.
    Pass a trained model's `scales` (TokenizerArtifact.model_state["scales"]) to encode new items
    exactly as the training items were, and their collaborative vectors, already in the calibrated
    space (`collab_stand_in`), as `collab_vectors` instead of `collab`."""
    fixed = scales or {}
    n = features.n_items
    use = {"image": cfg.use_image, "text": cfg.use_text}
    arrays: dict[str, Any] = {}
    scales = {}
    dims = {}
    for name in MODALITIES:
        values, mask = getattr(features, name), getattr(features, f"{name}_mask")
        if not use[name]:
            arrays[name] = arrays[f"{name}_mask"] = None
            continue
        if values is None:
            log.warning("tokenizer.use_%s is true but the features hold no %s vectors; fusing without it", name, name)
            arrays[name] = arrays[f"{name}_mask"] = None
            continue
        if not np.isfinite(values[mask]).all():
            raise ValueError(f"item features: non-finite values in the {name} vectors of present items")
        scales[name] = fixed.get(name) or _rms(values, mask)
        dims[name] = values.shape[1]
        arrays[name] = torch.as_tensor(values / scales[name], dtype=torch.float32, device=device)
        arrays[f"{name}_mask"] = torch.as_tensor(mask, dtype=torch.bool, device=device)
    if len(set(dims.values())) > 1:
        raise ValueError(f"text and image features must share one dimension to be fused, got {dims}")

    arrays["collab"] = None
    if cfg.use_collab:
        if collab_vectors is None:
            if collab is None:
                raise ValueError("tokenizer.use_collab is true but no collaborative embeddings were given")
            if collab.items.shape[0] != n:
                raise ValueError(f"collab embeddings cover {collab.items.shape[0]} items, features cover {n}")
            if not np.isfinite(collab.items).all():
                raise ValueError("collab embeddings: non-finite values")
            collab_vectors = calibrate_collab(features, collab, cfg)
        elif collab_vectors.shape[0] != n:
            raise ValueError(f"collab vectors cover {collab_vectors.shape[0]} items, features cover {n}")
        scales["collab"] = fixed.get("collab") or _rms(collab_vectors, None)
        arrays["collab"] = torch.as_tensor(collab_vectors / scales["collab"], dtype=torch.float32, device=device)
    if all(arrays[m] is None for m in ("image", "text", "collab")):
        raise ValueError("the tokenizer has no input: every modality is switched off or absent")
    return TokenizerInputs(**arrays, scales=scales)


# --- model --------------------------------------------------------------------------------------


class TokenizerModel(nn.Module):
    """Fusion followed by the RQ-VAE; the fusion's parameters (W_Q and W_K of the attention forms)
    train jointly with the RQ-VAE's loss."""

    def __init__(
        self,
        content_dim: int,
        collab_dim: int | None,
        use_image: bool,
        use_text: bool,
        recon_target: str,
        cfg: dict[str, Any],
    ) -> None:
        super().__init__()
        self.init_args = dict(
            content_dim=content_dim, collab_dim=collab_dim, use_image=use_image, use_text=use_text,
            recon_target=recon_target, cfg=cfg,
        )
        # tokenizer.fusion; a model saved before the option existed is the paper's attention.
        self.fusion = build_fusion(cfg.get("fusion", "attention"), content_dim, collab_dim, use_image, use_text)
        self.recon_target = recon_target
        # Decoder output: the used modalities side by side, or the fused vector.
        self.target_dims = {}
        if recon_target == "inputs":
            if use_image:
                self.target_dims["image"] = content_dim
            if use_text:
                self.target_dims["text"] = content_dim
            if collab_dim is not None:
                self.target_dims["collab"] = collab_dim
        else:
            self.target_dims["fused"] = self.fusion.out_dim
        self.rqvae = RQVAE(
            in_dim=self.fusion.out_dim,
            out_dim=sum(self.target_dims.values()),
            latent_dim=cfg["latent_dim"],
            hidden_dims=list(cfg["hidden_dims"]),
            levels=cfg["levels"],
            codebook_size=cfg["codebook_size"],
            beta=cfg["beta"],
            gamma=cfg["gamma"],
            kmeans_init=cfg["kmeans_init"],
            ema_decay=cfg["ema_decay"],
            dead_code_threshold=cfg["dead_code_threshold"],
            diversity_form=cfg["diversity_form"],
            diversity_temperature=cfg["diversity_temperature"],
        )

    @classmethod
    def for_inputs(cls, inputs: TokenizerInputs, cfg: TokenizerConfig) -> TokenizerModel:
        content = next((x for x in (inputs.image, inputs.text) if x is not None), None)
        return cls(
            content_dim=content.shape[1] if content is not None else 0,
            collab_dim=None if inputs.collab is None else inputs.collab.shape[1],
            use_image=inputs.image is not None,
            use_text=inputs.text is not None,
            recon_target=cfg.recon_target,
            cfg=cfg.model_dump(mode="json"),
        )

    def forward(self, batch: TokenizerInputs) -> dict[str, Tensor]:
        fusion = self.fusion(batch.image, batch.image_mask, batch.text, batch.text_mask, batch.collab)
        out = self.rqvae(fusion.fused)
        recon_parts = {}
        start = 0
        for name, dim in self.target_dims.items():
            pred = out.recon[:, start : start + dim]
            start += dim
            if name == "fused":
                recon_parts[name] = ((pred - fusion.fused.detach()) ** 2).mean()
                continue
            target, mask = getattr(batch, name), getattr(batch, f"{name}_mask", None)
            err = ((pred - target) ** 2).mean(dim=1)
            if mask is not None:
                err = err[mask]
            recon_parts[name] = err.mean() if err.numel() else err.sum()
        recon = torch.stack(list(recon_parts.values())).mean()
        return {
            "loss": recon + out.quant.loss,
            "recon": recon,
            "recon_parts": recon_parts,
            "commitment": out.quant.commitment,
            "diversity": out.quant.diversity,
            "level_errors": out.quant.level_errors,
            "latent_sq_norm": (out.latent.detach() ** 2).sum(dim=1).mean(),
            "codes": out.quant.codes,
            "alphas": fusion.alphas.detach(),
        }


# --- unique ids and statistics --------------------------------------------------------------------


def make_unique(codes: np.ndarray, codebook_size: int | list[int]) -> tuple[SemanticIds, dict[str, Any]]:
    """Append a disambiguation level when items share all codes (see the module docstring)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    sizes = [codebook_size] * levels if isinstance(codebook_size, int) else list(codebook_size)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    colliding = counts[inverse] > 1
    stats = {
        "rate_before_fix": float(colliding.mean()) if n else 0.0,
        "colliding_items": int(colliding.sum()),
        "groups": int((counts > 1).sum()),
        "max_group_size": int(counts.max()) if n else 0,
        "extra_level": bool(n and counts.max() > 1),
    }
    if not stats["extra_level"]:
        return SemanticIds(codes, sizes), stats
    # Rank within the group in item order: stable, so re-running on the same codes gives the same ids.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[inverse[order]]
    return SemanticIds(np.concatenate([codes, rank[:, None]], axis=1), [*sizes, int(counts.max())]), stats


class CodeSpaceFull(ValueError):
    """A new item's semantic id cannot be written with the trained codebooks (see `extend_unique`)."""

    def __init__(self, item: int, message: str):
        super().__init__(message)
        self.item = item


def extend_unique(base: SemanticIds, learned: np.ndarray, last_level_order: np.ndarray | None = None) -> SemanticIds:
    """`base`'s ids followed by unique ids for new items whose learned codes are `learned` (n_new, M).

    The generator's vocabulary is fixed by training, so nothing here widens a codebook. A new item
    takes the smallest disambiguation code its learned codes' group leaves free (0 when no item has
    them), as `make_unique` would have given it. When the group already fills the level's K codes
    (or `base` has no disambiguation level and the codes are taken), the item moves to the next
    nearest code of the last learned level whose group has room, in the order `last_level_order`
    (n_new, K) gives (codes sorted by the distance of the item's last residual to them; its learned
    code first): the nearest id the vocabulary can still write. CodeSpaceFull names an item with
    no such code (or when no order is given): only a retrained tokenizer and generator can hold it."""
    learned = np.asarray(learned, dtype=np.int64)
    levels = learned.shape[1]
    extra = base.levels - levels
    if extra not in (0, 1):
        raise ValueError(f"the trained ids have {base.levels} levels, the new items' codes {levels}")
    limit = base.codebook_sizes[-1] if extra else 1
    taken: dict[tuple[int, ...], set[int]] = {}
    for row in base.codes.tolist():
        taken.setdefault(tuple(row[:levels]), set()).add(row[levels] if extra else 0)
    rows = []
    for i, row in enumerate(learned.tolist()):
        order = [row[-1]] if last_level_order is None else [row[-1], *last_level_order[i].tolist()]
        for code in order:
            prefix = (*row[:-1], int(code))
            used = taken.setdefault(prefix, set())
            free = next(c for c in range(len(used) + 1) if c not in used)
            if free < limit:
                break
        else:
            what = (f"its disambiguation level has {limit} codes, all held by items with the same learned codes"
                    if extra else "the trained ids have no disambiguation level")
            raise CodeSpaceFull(i, f"learned codes {tuple(row)} are already taken, {what}, and no other code of "
                                   "the last level has room; the generator's vocabulary cannot represent this "
                                   "item without retraining the tokenizer and generator")
        used.add(free)
        rows.append([*prefix, free] if extra else list(prefix))
    codes = np.concatenate([base.codes, np.asarray(rows, dtype=np.int64).reshape(-1, base.levels)])
    return SemanticIds(codes, list(base.codebook_sizes))


def level_stats(codes: np.ndarray, codebook_size: int | list[int]) -> list[dict[str, float]]:
    """Per level: share of the codebook in use, perplexity of code usage, and the share of items
    whose prefix up to that level is shared with another item."""
    sizes = [codebook_size] * codes.shape[1] if isinstance(codebook_size, int) else list(codebook_size)
    out = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=sizes[level])
        p = counts[counts > 0] / counts.sum()
        _, prefix_counts_inv, prefix_counts = np.unique(
            codes[:, : level + 1], axis=0, return_inverse=True, return_counts=True
        )
        shared = prefix_counts[prefix_counts_inv.reshape(-1)] > 1
        out.append({
            "level": level + 1,
            "used_codes": int((counts > 0).sum()),
            "utilisation": float((counts > 0).mean()),
            "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "prefix_shared_rate": float(shared.mean()),
        })
    return out


def alpha_summary(alphas: np.ndarray, image_mask: np.ndarray | None, text_mask: np.ndarray | None) -> dict[str, Any]:
    n = len(alphas)
    has_image = image_mask if image_mask is not None else np.zeros(n, bool)
    has_text = text_mask if text_mask is not None else np.zeros(n, bool)
    both = has_image & has_text
    summary: dict[str, Any] = {
        "items_both": int(both.sum()),
        "items_image_only": int((has_image & ~has_text).sum()),
        "items_text_only": int((has_text & ~has_image).sum()),
        "items_neither": int((~has_image & ~has_text).sum()),
    }
    some = has_image | has_text
    if some.any():
        summary["mean_alpha_image"] = float(alphas[some, 0].mean())
        summary["mean_alpha_text"] = float(alphas[some, 1].mean())
    if both.any():
        a_t = alphas[both, 1]
        summary["both_mean_alpha_text"] = float(a_t.mean())
        summary["both_std_alpha_text"] = float(a_t.std())
        summary["both_alpha_text_quantiles"] = {
            str(q): float(v) for q, v in zip((5, 25, 50, 75, 95), np.percentile(a_t, [5, 25, 50, 75, 95]))
        }
    return summary


# --- artifact -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerArtifact:
    semantic_ids: SemanticIds
    report: dict[str, Any]
    # {"init_args", "scales", "state_dict"}: enough to rebuild the model. None when the ids were read
    # from a file (tokenizer.ids_file, cemg.tokenizer.index_json): then there is no model.pt and the
    # report's "source" names the file.
    model_state: dict[str, Any] | None

    def save(self, folder: Path) -> None:
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.semantic_ids.save(folder / IDS_DIR)
        (folder / REPORT_FILE).write_text(json.dumps(self.report, indent=2), encoding="utf-8")
        if self.model_state is not None:
            torch.save(self.model_state, folder / MODEL_FILE)

    @classmethod
    def load(cls, folder: Path) -> TokenizerArtifact:
        import json

        folder = Path(folder)
        report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
        state = None
        if (folder / MODEL_FILE).is_file() or "source" not in report:
            state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        return cls(SemanticIds.load(folder / IDS_DIR), report, state)

    def model(self) -> TokenizerModel:
        if self.model_state is None:
            source = self.report.get("source", {}).get("ids_file", "a file")
            raise ValueError(f"this tokenizer has no fusion layer or RQ-VAE to run: its semantic ids were read from "
                             f"{source} (tokenizer.ids_file), not trained")
        model = TokenizerModel(**self.model_state["init_args"])
        # The codebooks are k-means-initialised buffers; loading marks them initialised already.
        model.load_state_dict(self.model_state["state_dict"])
        return model.eval()


# --- training -------------------------------------------------------------------------------------


def _evaluate(model: TokenizerModel, inputs: TokenizerInputs) -> dict[str, Any]:
    model.eval()
    n = inputs.n_items
    codes, alphas, recon_sum, parts_sum, level_err, latent_sq = [], [], 0.0, {}, 0.0, 0.0
    with torch.no_grad():
        for start in range(0, n, _EVAL_BATCH):
            idx = torch.arange(start, min(n, start + _EVAL_BATCH), device=_device_of(inputs))
            out = model(inputs.rows(idx))
            w = len(idx) / n
            codes.append(out["codes"].cpu())
            alphas.append(out["alphas"].cpu())
            recon_sum += float(out["recon"]) * w
            for k, v in out["recon_parts"].items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * w
            level_err = level_err + out["level_errors"].cpu().numpy() * w
            latent_sq += float(out["latent_sq_norm"]) * w
    return {
        "codes": torch.cat(codes).numpy().astype(np.int64),
        "alphas": torch.cat(alphas).numpy(),
        "recon": recon_sum,
        "recon_parts": parts_sum,
        "level_errors": np.asarray(level_err, dtype=float).tolist(),
        "latent_sq_norm": latent_sq,
    }


def _device_of(inputs: TokenizerInputs) -> torch.device:
    return next(x for x in (inputs.image, inputs.text, inputs.collab) if x is not None).device


def train_tokenizer_model(
    inputs: TokenizerInputs, cfg: TokenizerConfig, seed: int, checkpoint: TrainingCheckpoint | None = None
) -> tuple[TokenizerModel, dict[str, Any]]:
    """Train fusion + RQ-VAE on all items; returns the model (eval mode) and the training curve.

    With a `checkpoint` the state is saved after epochs and a rerun resumes from it. Under torchrun
    each rank takes its share of every batch (cemg.distributed) and the codebooks' EMA and the
    diversity term see the global batch; every rank returns rank 0's model.
    """
    device = _device_of(inputs)
    torch.manual_seed(seed)
    model = TokenizerModel.for_inputs(inputs, cfg).to(device)
    n = inputs.n_items
    shuffle = torch.Generator().manual_seed(seed)

    if cfg.kmeans_init:
        # One no-grad pass in training mode runs each level's k-means on (a sample of) all items,
        # level after level on the residuals left by the previous one.
        idx = torch.randperm(n, generator=shuffle)[:_INIT_SAMPLE].to(device)
        model.train()
        with torch.no_grad():
            model(inputs.rows(idx))

    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    log_every = max(1, cfg.epochs // 10)
    curve = []
    start = time.perf_counter()
    checkpoint = checkpoint or TrainingCheckpoint(None)
    saved = checkpoint.restore(model=model, optimizer=optimiser, generators={"shuffle": shuffle})
    first = 0
    if saved is not None:
        first, curve = saved["epoch"], saved["curve"]
        start -= saved["seconds"]
    if distributed.is_distributed():
        model.rqvae.quantizer.share_batch_statistics()
    train_model = distributed.wrap(model, device)
    bar = tqdm(range(first, cfg.epochs), desc="tokenizer", unit="epoch", leave=False, initial=first, total=cfg.epochs)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=shuffle).to(device)
        sums = {"loss": 0.0, "recon": 0.0, "latent_sq_norm": 0.0}
        commit = torch.zeros(cfg.levels)
        div = torch.zeros(cfg.levels)
        for b in range(steps_per_epoch):
            rows = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(rows) < distributed.world_size():
                continue  # a rank would get no rows: this tail batch is skipped by every rank alike
            out = train_model(inputs.rows(distributed.shard(rows)))
            optimiser.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimiser.step()
            sums["loss"] += out["loss"].item() / steps_per_epoch
            sums["recon"] += out["recon"].item() / steps_per_epoch
            sums["latent_sq_norm"] += float(out["latent_sq_norm"]) / steps_per_epoch
            commit += out["commitment"].cpu() / steps_per_epoch
            div += out["diversity"].cpu() / steps_per_epoch
        bar.set_postfix(loss=f"{sums['loss']:.4f}", recon=f"{sums['recon']:.4f}")
        if (epoch + 1) % log_every == 0 or epoch + 1 == cfg.epochs:
            point = {"epoch": epoch + 1, **sums, "commitment": commit.tolist(), "diversity": div.tolist()}
            curve.append(point)
            log.info(
                "tokenizer epoch %d/%d: loss %.4f recon %.4f |z|^2 %.3g commitment %s diversity %s",
                epoch + 1, cfg.epochs, sums["loss"], sums["recon"], sums["latent_sq_norm"],
                [round(c, 4) for c in commit.tolist()], [round(d, 3) for d in div.tolist()],
            )
        if checkpoint.due():
            checkpoint.save(model=model, optimizer=optimiser, generators={"shuffle": shuffle}, epoch=epoch + 1,
                            curve=curve, seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if distributed.is_distributed():
        model.rqvae.quantizer.share_batch_statistics(False)
        # Dead codes are re-seeded from each rank's own rows after the last step's broadcast.
        distributed.broadcast_module(model)
    model.eval()
    return model, {"epochs": cfg.epochs, "steps": cfg.epochs * steps_per_epoch, "seconds": seconds, "curve": curve}


def build_tokenizer(
    features: ItemFeatures,
    collab: CollabEmbeddings | None,
    cfg: TokenizerConfig,
    seed: int,
    device: str = "cpu",
    checkpoint: TrainingCheckpoint | None = None,
) -> TokenizerArtifact:
    """Paper 4.2.2.3 + 4.2.3 end to end: semantic ids for every item, a report, and the model."""
    device = distributed.setup(device)
    inputs = prepare_inputs(features, collab if cfg.use_collab else None, cfg, device)
    n = inputs.n_items
    log.info(
        "tokenizer: %d items, modalities %s, %s fusion, M=%d K=%d, %d epochs on %s",
        n, [m for m in ("image", "text", "collab") if getattr(inputs, m) is not None],
        # getattr: a config loaded by a process that imported cemg.config before the option existed
        getattr(cfg, "fusion", "attention"), cfg.levels, cfg.codebook_size, cfg.epochs, device,
    )
    model, training = train_tokenizer_model(inputs, cfg, seed, checkpoint)
    final = _evaluate(model, inputs)
    ids, collisions = make_unique(final["codes"], cfg.codebook_size)

    levels = level_stats(final["codes"], cfg.codebook_size)
    for entry, err in zip(levels, final["level_errors"]):
        entry["latent_error"] = err  # mean ||z - sum of codes up to this level||^2
        entry["relative_latent_error"] = err / final["latent_sq_norm"] if final["latent_sq_norm"] > 0 else 0.0
    to_np = lambda x: None if x is None else x.cpu().numpy()  # noqa: E731
    report = {
        "n_items": n,
        "inputs": {
            "modalities": [m for m in ("image", "text", "collab") if getattr(inputs, m) is not None],
            "scales": inputs.scales,
            "fusion": model.init_args["cfg"].get("fusion", "attention"),
            "fused_dim": model.fusion.out_dim,
            "recon_target": cfg.recon_target,
        },
        "training": training,
        "reconstruction": {"mse": final["recon"], **{f"mse_{k}": v for k, v in final["recon_parts"].items()}},
        "levels": levels,
        "collisions": collisions,
        "semantic_ids": {"levels": ids.levels, "codebook_sizes": ids.codebook_sizes},
        "alphas": alpha_summary(final["alphas"], to_np(inputs.image_mask), to_np(inputs.text_mask)),
    }
    log.info(
        "tokenizer: trained in %.1fs; recon %.4f; utilisation %s; perplexity %s; collisions %.2f%% "
        "(%d items, largest group %d) -> %d levels",
        training["seconds"], final["recon"], [round(e["utilisation"], 3) for e in levels],
        [round(e["perplexity"], 1) for e in levels], 100 * collisions["rate_before_fix"],
        collisions["colliding_items"], collisions["max_group_size"], ids.levels,
    )
    state = {
        "init_args": model.init_args,
        "scales": inputs.scales,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return TokenizerArtifact(ids, report, state)


def build_semantic_ids(
    features: ItemFeatures,
    collab: CollabEmbeddings | None,
    cfg: TokenizerConfig,
    seed: int,
    device: str = "cpu",
) -> tuple[SemanticIds, dict[str, Any]]:
    artifact = build_tokenizer(features, collab, cfg, seed, device)
    return artifact.semantic_ids, artifact.report
