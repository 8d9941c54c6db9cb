"""What a run report shows, gathered from a run folder's artifacts (nothing is retrained or re-scored).

Every section is optional: a run stopped after the tokenizer still gets its dataset, curves, codebook
and fusion sections, and the report says which stages are missing for the rest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cemg.api import FusionView, Recommender, compute_fusion_view
from cemg.config import CEMGConfig
from cemg.data.dataset import InteractionDataset
from cemg.data.split import leave_one_out
from cemg.run_folder import RunFolder, load_run_config, read_seeds

log = logging.getLogger(__name__)

# The CEMG paper's Table 2 (test split, full ranking) where our copy of the paper keeps the value;
# the other cells did not survive, so they are left out rather than guessed.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "beauty": {"HR@10": 0.0665, "NDCG@10": 0.0348},
}


@dataclass
class ExampleItem:
    item: int
    key: str
    title: str
    image: bytes | None = None  # thumbnail PNG, when the dataset has an image for the item
    score: float | None = None
    is_target: bool = False
    image_weight: float | None = None  # the fusion layer's alpha_v (items listed by image weight)
    train_interactions: int | None = None


@dataclass
class Example:
    user: str
    history: list[ExampleItem]  # the last few history items, oldest first
    target: ExampleItem  # the held-out test item
    recommended: list[ExampleItem]


@dataclass
class RunContent:
    run_dir: Path
    config: CEMGConfig
    stages: dict[str, bool]  # stage -> artifact present
    dataset: InteractionDataset | None = None
    sequence_lengths: np.ndarray | None = None
    item_counts: np.ndarray | None = None  # interactions per item (whole dataset)
    modality_counts: dict[str, int] = field(default_factory=dict)
    collab_info: dict[str, Any] | None = None
    tokenizer_report: dict[str, Any] | None = None
    codes: np.ndarray | None = None  # (n_items, levels) semantic ids
    fusion: FusionView | None = None
    generator_info: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None  # part -> EvalResult
    examples: list[Example] = field(default_factory=list)
    examples_note: str = ""
    image_root: Path | None = None  # where the item images were found, None when nowhere
    image_note: str = ""  # why items are shown without pictures (dataset without images, root not found)
    # RUN_DIR/seeds.json of a run made with `--seeds` (spread of every metric); None otherwise.
    seeds: dict[str, Any] | None = None
    # The seed whose tokenizer, generator and evaluation the report shows (the other sections are shared).
    seed_shown: int | None = None
    train_item_counts: np.ndarray | None = None  # training interactions per item (leave-one-out train split)
    # Items with both modalities and the highest / the lowest learned image weight, highest (lowest) first;
    # empty when the weights are not learned or cannot be rebuilt (fusion_weights_note says why).
    highest_image_weight: list[ExampleItem] = field(default_factory=list)
    lowest_image_weight: list[ExampleItem] = field(default_factory=list)

    @property
    def fusion_kind(self) -> str:
        return ((self.tokenizer_report or {}).get("inputs") or {}).get("fusion", "attention")

    @property
    def paper(self) -> dict[str, float] | None:
        return PAPER_RESULTS.get(self.config.data.name.lower())


# Learned fusion weights (tokenizer.fusion); "mean" and "concat" fix them by construction.
LEARNED_FUSIONS = ("attention", "content_attention")


@dataclass
class PopularityBucket:
    """Items whose training-interaction count lies in [low, high] (high None: no upper end)."""

    low: int
    high: int | None
    items: int  # every item in the bucket
    weights: np.ndarray  # image weights of its items with both modalities

    @property
    def label(self) -> str:
        return f">{self.low - 1}" if self.high is None else f"{self.low}-{self.high}"


def popularity_edges(cold_start_max: int) -> list[tuple[int, int | None]]:
    """Fixed buckets of training interactions: the first ends at the cold-start threshold (the paper's
    Table 3: at most 5), then 6-10, 11-20, 21-50, >50. Fixed edges rather than quantiles so that a bucket
    means the same count in every run and dataset, and the first one is exactly the cold-start subset the
    results score; quantile edges would move with each catalogue and cut through that threshold."""
    uppers = [cold_start_max] + [b for b in (10, 20, 50) if b > cold_start_max]
    lows = [0] + [u + 1 for u in uppers]
    return [(lo, hi) for lo, hi in zip(lows, uppers)] + [(lows[-1], None)]


def fusion_by_popularity(fusion: FusionView, train_counts: np.ndarray, cold_start_max: int) -> list[PopularityBucket]:
    both = fusion.has_image & fusion.has_text
    out = []
    for lo, hi in popularity_edges(cold_start_max):
        inside = (train_counts >= lo) & (train_counts <= (hi if hi is not None else np.inf))
        out.append(PopularityBucket(lo, hi, int(inside.sum()), fusion.alphas[inside & both, 0]))
    return out


def image_weight_extremes(fusion: FusionView, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Items with both modalities and the n highest (highest first) and n lowest (lowest first) image
    weights; ties go to the lower item index. Fewer than 2n such items: each list gets half, no overlap."""
    both = np.flatnonzero(fusion.has_image & fusion.has_text)
    n = min(n, len(both) // 2)
    weights = fusion.alphas[both, 0]
    highest = both[np.lexsort((both, -weights))[:n]]
    lowest = both[np.lexsort((both, weights))[:n]]
    return highest, lowest


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _generator_info(folder: Path) -> dict[str, Any] | None:
    # Read the training record without loading the model: each family saves its own JSON file.
    for name, kind in (("causal.json", "causal"), ("t5_decoder.json", "t5-decoder"), ("generator.json", "t5")):
        meta = _json(folder / name)
        if meta is not None:
            return {"kind": kind, "reads_content": bool(meta.get("spec", {}).get("content_dim")),
                    **meta.get("info", {})}
    return None


def _image_root(dataset: InteractionDataset, run_dir: Path) -> Path | None:
    """Image roots are recorded as configured, usually relative to the directory the run was made in;
    try that, then the folders above the run (runs/NAME and runs/GROUP/NAME both sit under the repo)."""
    root = dataset.image_root
    if root is None or root.is_absolute():
        return root if root is not None and root.exists() else None
    for candidate in (root, *(parent / root for parent in run_dir.resolve().parents)):
        if candidate.exists():
            return candidate
    log.warning("image root %s not found (from %s); the report shows no images", root, Path.cwd())
    return None


def _image_note(dataset: InteractionDataset, image_root: Path | None) -> str:
    refs = dataset.items.image_refs
    if refs is None or not any(r is not None for r in refs):
        return (f"The {dataset.name} data has no item images, so items are shown by title only "
                "(and the tokenizer fused text with the collaborative embedding, without an image modality).")
    from cemg.features.image import is_url

    if all(r is None or is_url(r) for r in refs):
        return ("The item images are URLs, which a report does not fetch (it works offline): items are shown by "
                "title only.")
    if image_root is None:
        where = dataset.image_root or "(none recorded)"
        return f"The item images were not found (image root {where}), so items are shown by title only."
    return ""


def thumbnails(
    dataset: InteractionDataset, items: list[int], image_root: Path | None, height: int = 120
) -> dict[int, bytes]:
    """PNG thumbnails of the items' local images (URL images are not fetched: a report works offline)."""
    import io

    from PIL import Image

    from cemg.features.image import is_url, load_rgb, read_image_bytes

    refs = dataset.items.image_refs
    if refs is None or image_root is None:
        return {}
    wanted = sorted(set(items))
    subset = [None] * dataset.n_items
    for i in wanted:
        if refs[i] is not None and not is_url(refs[i]):
            subset[i] = refs[i]
    out = {}
    for item, data, _reason in read_image_bytes(subset, image_root):
        if data is None:
            continue
        try:
            image = load_rgb(data)
        except Exception as err:  # PIL raises many types for a bad file; the item just shows no image
            log.info("item %d: image not readable (%s)", item, err)
            continue
        image.thumbnail((height * 2, height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
        out[item] = buf.getvalue()
    return out


def _examples(rec: Recommender, image_root: Path | None, n_users: int, k: int, history_shown: int) -> list[Example]:
    dataset = rec.catalogue.dataset
    split = leave_one_out(dataset, rec.config.data.max_history)
    test = split.test
    # Evenly spaced test users rather than the first few: user order follows the input file.
    rows = np.unique(np.linspace(0, len(test) - 1, num=min(n_users, len(test))).astype(int)) if len(test) else []
    recs = rec.recommend_batch([test.histories[r] for r in rows], k)
    wanted = []
    for r, rows_rec in zip(rows, recs):
        wanted += [int(i) for i in test.histories[r][-history_shown:]] + [int(test.targets[r])]
        wanted += [row.item for row in rows_rec]
    images = thumbnails(dataset, wanted, image_root)
    cat = rec.catalogue

    def make(i: int, score: float | None = None, target: int = -1) -> ExampleItem:
        return ExampleItem(i, cat.key(i), cat.title(i), images.get(i), score, i == target)

    out = []
    for r, rows_rec in zip(rows, recs):
        target = int(test.targets[r])
        out.append(Example(
            user=dataset.user_keys[int(test.users[r])],
            history=[make(int(i)) for i in test.histories[r][-history_shown:]],
            target=make(target, target=target),
            recommended=[make(row.item, row.score, target) for row in rows_rec],
        ))
    return out


def _weight_extremes(c: RunContent, n: int) -> tuple[list[ExampleItem], list[ExampleItem]]:
    highest, lowest = image_weight_extremes(c.fusion, n)
    images = thumbnails(c.dataset, [*highest, *lowest], c.image_root)
    table = c.dataset.items

    def make(i: int) -> ExampleItem:
        return ExampleItem(i, table.keys[i], table.title(i), images.get(i), image_weight=float(c.fusion.alphas[i, 0]),
                           train_interactions=int(c.train_item_counts[i]))

    return [make(int(i)) for i in highest], [make(int(i)) for i in lowest]


def collect(run_dir: Path | str, n_examples: int = 3, k: int = 5, history_shown: int = 4,
            device: str = "cpu", n_extremes: int = 6) -> RunContent:
    """Everything the report shows, from the artifacts present in `run_dir`."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    folder = RunFolder.open(run_dir)
    stages = folder.stages()
    content = RunContent(run_dir, cfg, stages)
    content.seeds = read_seeds(run_dir)
    content.seed_shown = cfg.seed if folder.seed is None else folder.seed
    if stages["data"]:
        dataset = InteractionDataset.load(folder.stage("data"))
        content.dataset = dataset
        content.sequence_lengths = np.array([len(s) for s in dataset.sequences])
        flat = np.concatenate(dataset.sequences) if dataset.sequences else np.zeros(0, np.int64)
        content.item_counts = np.bincount(flat, minlength=dataset.n_items)
        table = dataset.items
        content.modality_counts = {
            "with_title": sum(1 for i in range(len(table)) if table.title(i) != table.keys[i]),
            "with_image_ref": 0 if table.image_refs is None else sum(r is not None for r in table.image_refs),
        }
        content.image_root = _image_root(dataset, run_dir)
        content.image_note = _image_note(dataset, content.image_root)
    if stages["features"]:
        info = (_json(folder.stage("features") / "features.json") or {}).get("info", {})
        for name in ("text", "image"):
            if "present" in info.get(name, {}):
                content.modality_counts[f"{name}_encoded"] = int(info[name]["present"])
    if stages["collab"]:
        content.collab_info = _json(folder.stage("collab") / "collab.json")
    if stages["tokenizer"]:
        from cemg.tokenizer.semantic_ids import SemanticIds

        content.tokenizer_report = _json(folder.stage("tokenizer") / "report.json")
        content.codes = SemanticIds.load(folder.stage("tokenizer") / "semantic_ids").codes
        content.fusion = compute_fusion_view(folder)
    if content.dataset is not None:
        content.train_item_counts = leave_one_out(content.dataset, cfg.data.max_history).train_item_counts()
    if (content.fusion is not None and content.dataset is not None and content.fusion_kind in LEARNED_FUSIONS
            and len(content.fusion.alphas) == content.dataset.n_items):
        content.highest_image_weight, content.lowest_image_weight = _weight_extremes(content, n_extremes)
    if stages["generator"]:
        content.generator_info = _generator_info(folder.stage("generator"))
    if stages["evaluation"]:
        content.evaluation = folder.evaluation().results
    if stages["generator"] and stages["tokenizer"] and n_examples > 0:
        content.examples = _examples(Recommender.load(run_dir, device=device, seed=content.seed_shown),
                                     content.image_root, n_examples, k, history_shown)
    else:
        content.examples_note = "No trained generator in this run: run `cemg run` to the end."
    return content
