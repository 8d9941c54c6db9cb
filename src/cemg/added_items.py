"""New items in a trained run without retraining (`cemg items add`, `cemg.api.add_items`).

In semantic mode (`generator.mode: semantic`) an item IS its semantic id: the generator holds no
per-item parameter, so an item that gets a code tuple and a place in the prefix tree can be
recommended at once. An added item goes through the run's own trained stages, nothing refitted:

    item table row -> text / image encoders of the run -> the run's fitted PCA (features/pca.npz)
        -> a collaborative stand-in (LightGCN never saw the item; `collab_stand_in`)
        -> the trained fusion layer and RQ-VAE encoder -> learned codes
        -> a free disambiguation code (`extend_unique`) -> catalogue and prefix tree

Decisions:
- A key already in the catalogue (trained or added) is refused, never updated or duplicated.
- An image ref that is not found (or not decodable) is reported in the summary and the item is
  coded from its text alone, as the features stage does for a training item without an image.
- A new item whose learned codes are taken fills the next free code of the disambiguation level;
  when that level is full (or the run has none), it takes the nearest last-level code whose group
  has room (cemg.tokenizer.build.extend_unique); only when none has does the add fail, naming the
  item. The generator's vocabulary is never widened: an untrained code vector would make the
  item's score meaningless.
- A hybrid run (per-item vectors) is refused: a new item has no vector to score it with.
- All-or-nothing: every added item so far is written as one new generation under a hidden name,
  then published by one rename and one pointer swap (cemg.run_folder), so a failed or killed add
  leaves every file readers use as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cemg.artifacts import fingerprint, read_manifest, write_manifest
from cemg.data.dataset import ItemTable
from cemg.data.errors import DataError
from cemg.features.artifact import ItemFeatures
from cemg.run_folder import RunFolder, lenient_section, load_run_config

log = logging.getLogger(__name__)

STAGE = "items"
TABLE_FILE = "items.json"
ARRAYS_FILE = "items.npz"
# Test hook: seconds to sleep once the new generation is written, just before it is published
# (tests/test_added_items.py kills the process there).
PAUSE_ENV = "CEMG_ITEMS_ADD_PAUSE_BEFORE_COMMIT"


class AddItemsRefused(ValueError):
    """The run cannot take new items (hybrid generator, published ids, features without a PCA)."""


@dataclass(frozen=True)
class AddedItems:
    """Every item added to one seed of a run, in the order added (row i is item n_trained + i)."""

    table: ItemTable
    codes: np.ndarray  # (n, levels) the full semantic ids, disambiguation code included
    latents: np.ndarray  # (n, latent_dim) RQ-VAE encoder outputs (explain's neighbour distances)
    alphas: np.ndarray  # (n, 2) fusion weights of image, text
    has_image: np.ndarray  # (n,) bool
    has_text: np.ndarray  # (n,) bool
    collab: np.ndarray  # (n, d_c) the collaborative stand-ins, calibrated space (empty without collab)
    about: dict[str, Any] = field(default_factory=dict)  # per item: stand-in kind, source file, image status
    # (n, c) ItemFeatures.content_matrix over the tokenizer's modalities: what a generator that reads
    # content (generator.causal.content_features) takes for the item; (n, 0) if added before it was kept
    content: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.content is None:
            object.__setattr__(self, "content", np.zeros((len(self.table), 0), np.float32))

    def __len__(self) -> int:
        return len(self.table)

    def save(self, folder: Path) -> None:
        table = {"keys": self.table.keys, "fields": self.table.fields, "image_refs": self.table.image_refs,
                 "about": self.about}
        (folder / TABLE_FILE).write_text(json.dumps(table, indent=2), encoding="utf-8")
        np.savez(folder / ARRAYS_FILE, codes=self.codes, latents=self.latents, alphas=self.alphas,
                 has_image=self.has_image, has_text=self.has_text, collab=self.collab, content=self.content)

    @classmethod
    def load(cls, folder: Path) -> AddedItems:
        meta = json.loads((folder / TABLE_FILE).read_text(encoding="utf-8"))
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as a:
            arrays = {k: a[k] for k in a.files}
        table = ItemTable(meta["keys"], meta["fields"], meta["image_refs"])
        return cls(table, arrays["codes"].astype(np.int64), arrays["latents"], arrays["alphas"],
                   arrays["has_image"], arrays["has_text"], arrays["collab"], meta.get("about", {}),
                   arrays.get("content"))

    def concat(self, other: AddedItems) -> AddedItems:
        content = (np.concatenate([self.content, other.content])
                   if self.content.shape[1] == other.content.shape[1] else None)  # an older batch lacks it
        return AddedItems(
            concat_tables(self.table, other.table),
            *(np.concatenate([getattr(self, f), getattr(other, f)])
              for f in ("codes", "latents", "alphas", "has_image", "has_text", "collab")),
            {**self.about, **other.about}, content,
        )


def concat_tables(a: ItemTable, b: ItemTable) -> ItemTable:
    """Rows of `a` then `b`; a field or image refs one side lacks are None there."""
    na, nb = len(a), len(b)
    fields = {name: list(a.fields.get(name, [None] * na)) + list(b.fields.get(name, [None] * nb))
              for name in [*a.fields, *(k for k in b.fields if k not in a.fields)]}
    refs = None
    if a.image_refs is not None or b.image_refs is not None:
        refs = list(a.image_refs or [None] * na) + list(b.image_refs or [None] * nb)
    return ItemTable([*a.keys, *b.keys], fields, refs)


def read_added_items(folder: RunFolder) -> AddedItems | None:
    """The seed's added items, or None. Items added to a tokenizer that was rebuilt since are stale
    (their codes mean nothing to the new one): logged and left out."""
    current = folder.added_items()
    if current is None:
        return None
    recorded = (read_manifest(current) or {}).get("tokenizer_inputs_hash")
    now = (read_manifest(folder.stage("tokenizer")) or {}).get("inputs_hash")
    if recorded != now:
        log.warning("%s: added for another tokenizer than the run now has; ignored (add them again)", current)
        return None
    return AddedItems.load(current)


# --- adding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddedItem:
    key: str
    title: str
    item: int  # its item index in the extended catalogue
    codes: list[int]
    image: str  # "found", "none" (no ref), or "not found" (a ref that could not be read)
    fusion_weights: dict[str, float]


@dataclass(frozen=True)
class AddSummary:
    run_dir: Path
    folder: Path  # the published generation
    items_before: int
    items_after: int
    collab: str
    added: list[AddedItem]

    @property
    def images_not_found(self) -> list[str]:
        return [a.key for a in self.added if a.image == "not found"]


@contextlib.contextmanager
def _exclusive(folder: Path):
    """One add at a time per seed: two would both extend the same generation and one would be lost."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AddItemsRefused(f"{folder}: another `cemg items add` is running on this run") from None
        yield


def add_items(
    run_dir: Path | str,
    items_file: Path | str,
    images: Path | str | None = None,
    collab: str = "content",
    seed: int | None = None,
    device: str = "cpu",
) -> AddSummary:
    """Add the items of `items_file` (read like the run's own item table: format by suffix, key column
    and text fields as configured) to the catalogue of one seed of a trained run (see the module
    docstring). `images`: folder or .tar the image refs are resolved in (default: the run's image
    root). `collab`: the collaborative stand-in, "content" (the ridge prediction from the item's text
    and image that `tokenizer.collab_calibration: content` gives a training item with no
    interaction) or "zeros" (zero vector: equal fusion weights, zero collaborative half); see
    cemg.tokenizer.build.collab_stand_in. Raises DataError (bad or duplicate rows, an item the
    generator's vocabulary cannot hold), AddItemsRefused, FileNotFoundError."""
    from cemg.collab.artifact import CollabEmbeddings
    from cemg.config import TokenizerConfig
    from cemg.data.load import item_key_column
    from cemg.tokenizer.build import COLLAB_STAND_INS, CodeSpaceFull, TokenizerArtifact, collab_stand_in, extend_unique

    if collab not in COLLAB_STAND_INS:
        raise AddItemsRefused(f"unknown collaborative stand-in {collab!r}; choose {' or '.join(COLLAB_STAND_INS)}")
    items_file = Path(items_file)
    folder = RunFolder.open(run_dir, seed)
    cfg = load_run_config(folder.root)
    for stage in ("data", "features", "tokenizer", "generator"):
        if not folder.has(stage):
            raise FileNotFoundError(f"{folder.stage(stage)}: stage missing; items are added to a finished run")
    if cfg.generator.mode == "hybrid":
        raise AddItemsRefused("this run's generator is hybrid (a learned vector per trained item): a new item has no "
                              "vector and could not be scored; retrain to include it, or use generator.mode=semantic")
    tokenizer = TokenizerArtifact.load(folder.stage("tokenizer"))
    if tokenizer.model_state is None:
        raise AddItemsRefused("this run's semantic ids were read from a file (tokenizer.ids_file): there is no "
                              "fusion layer or RQ-VAE to code a new item with")
    tok_folder = folder.stage("tokenizer")
    tok_cfg = lenient_section(TokenizerConfig, tokenizer.model_state["init_args"]["cfg"], str(tok_folder))

    with _exclusive(folder.added_items_dir):
        from cemg.data.dataset import InteractionDataset

        dataset = InteractionDataset.load(folder.stage("data"))
        previous = read_added_items(folder)
        known = set(dataset.items.keys) | set(previous.table.keys if previous else [])
        table = read_item_table(cfg, items_file)
        key = item_key_column(cfg.data)
        for i, k in enumerate(table.keys):
            if k in known:
                raise DataError(items_file, f"item key {k!r} (record {i + 1}) is already in the catalogue; "
                                            "an added item is never updated or duplicated", field=key)
        features = ItemFeatures.load(folder.stage("features"))
        new_features = _encode(table, features, cfg, images if images is not None else dataset.image_root, device)
        stand_in = None
        if tok_cfg.use_collab:
            stand_in = collab_stand_in(new_features, features, CollabEmbeddings.load(folder.stage("collab")),
                                       tok_cfg, collab)
        learned, order, latents, alphas, masks = _quantize(tokenizer, tok_cfg, new_features, stand_in)

        base = tokenizer.semantic_ids
        if previous is not None:
            base = type(base)(np.concatenate([base.codes, previous.codes]), base.codebook_sizes)
        try:
            ids = extend_unique(base, learned, order)
        except CodeSpaceFull as err:
            raise DataError(items_file, f"item {table.keys[err.item]!r}: {err}", field=key) from None
        n_before = base.n_items
        image_status = _image_status(table, new_features)
        about = {k: {"collab": collab, "file": str(items_file), "image": status}
                 for k, status in zip(table.keys, image_status)}
        batch = AddedItems(table, ids.codes[n_before:], latents, alphas, masks[0], masks[1],
                           np.zeros((len(table), 0), np.float32) if stand_in is None else stand_in, about,
                           _content(new_features, cfg.tokenizer.content_modalities))
        everything = batch if previous is None else previous.concat(batch)

        tmp = folder.added_items_dir / f".added.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            everything.save(tmp)
            write_manifest(tmp, STAGE, fingerprint(everything.table.keys, everything.codes.tolist()),
                           {"collab": collab}, tokenizer_inputs_hash=read_manifest(tok_folder)["inputs_hash"],
                           trained_items=dataset.n_items, added_items=len(everything))
            if os.environ.get(PAUSE_ENV):
                print("items add: generation written, about to publish", flush=True)
                time.sleep(float(os.environ[PAUSE_ENV]))
            published = folder.commit_added_items(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("added %d items to %s (%d -> %d items); %s", len(table), published, n_before, ids.n_items,
             f"{sum(s == 'not found' for s in image_status)} image refs not found")
    added = [
        AddedItem(k, table.title(i), n_before + i, [int(c) for c in ids.codes[n_before + i]], image_status[i],
                  {"image": float(alphas[i, 0]), "text": float(alphas[i, 1])})
        for i, k in enumerate(table.keys)
    ]
    return AddSummary(folder.root, published, n_before, ids.n_items, collab, added)


def _content(features: ItemFeatures, modalities: list[str]) -> np.ndarray | None:
    """What a content-reading generator takes for these items; None when no used modality was encoded."""
    if all(getattr(features, m) is None for m in modalities):
        return None
    return features.content_matrix(modalities)


def _image_status(table: ItemTable, features: ItemFeatures) -> list[str]:
    refs = table.image_refs or [None] * len(table)
    found = features.image_mask if features.image_mask is not None else np.zeros(len(table), bool)
    return ["none" if ref is None else "found" if ok else "not found" for ref, ok in zip(refs, found)]


def read_item_table(cfg, items_file: Path | str) -> ItemTable:
    """New items read like the run's own item table (format by suffix, key column and text fields as
    configured); DataError names a bad file and line."""
    from cemg.data.load import read_item_rows

    rows = read_item_rows(cfg.data, Path(items_file), images_optional=True)
    return ItemTable(list(rows["item"]), {name: list(rows[name]) for name in cfg.data.text_fields},
                     list(rows["image"]) if "image" in rows else None)


def encode_new_items(
    run: RunFolder, items_file: Path | str, images: Path | str | None = None, device: str = "cpu"
) -> tuple[ItemTable, ItemFeatures]:
    """The items of `items_file` and their content vectors as the run's features stage would give them
    (its encoders, its fitted PCA), without adding them: for content-only comparisons."""
    from cemg.data.dataset import InteractionDataset

    cfg = load_run_config(run.root)
    table = read_item_table(cfg, items_file)
    if images is None:
        images = InteractionDataset.load(run.stage("data")).image_root
    return table, _encode(table, ItemFeatures.load(run.stage("features")), cfg, images, device)


def _encode(table: ItemTable, trained: ItemFeatures, cfg, image_root, device: str) -> ItemFeatures:
    """The new rows' text and image vectors, by the run's encoders and its fitted PCA; a modality the
    trained features lack stays absent."""
    from cemg.features.image import encode_images
    from cemg.features.text import encode_item_texts

    fc = cfg.features
    out: dict[str, Any] = {}
    for name in ("text", "image"):
        if getattr(trained, name) is None:
            continue
        projection = trained.projections.get(name)
        if projection is None:
            raise AddItemsRefused(f"the run's features stage predates storing its fitted PCA (features/pca.npz); "
                                  f"rerun it (`cemg run --force features`) to add items")
        info = trained.info.get(name, {})
        if name == "text":
            encoded = encode_item_texts(table, cfg.data.text_fields, info.get("model", fc.text_model),
                                        fc.text_pooling, fc.batch_size, fc.text_max_length, cfg.cache_dir, device)
        else:
            refs = table.image_refs or [None] * len(table)
            root = None if image_root is None else Path(image_root)
            encoded = encode_images(refs, root, info.get("model", fc.image_model), fc.image_batch_size, cfg.cache_dir,
                                    device, weights=fc.image_weights)
        out[name] = projection.transform(encoded.vectors, encoded.mask)
        out[f"{name}_mask"] = encoded.mask.copy()
    return ItemFeatures(len(table), **out)


def _quantize(tokenizer, tok_cfg, features: ItemFeatures, collab: np.ndarray | None):
    """(learned codes, last-level codes nearest first, latents, alphas, (has_image, has_text)) from the
    trained fusion and RQ-VAE."""
    import torch

    from cemg.tokenizer.build import prepare_inputs

    state = tokenizer.model_state
    inputs = prepare_inputs(features, None, tok_cfg, "cpu", scales=state["scales"], collab_vectors=collab)
    model = tokenizer.model()
    with torch.no_grad():
        fusion = model.fusion(inputs.image, inputs.image_mask, inputs.text, inputs.text_mask, inputs.collab)
        out = model.rqvae(fusion.fused)
        books = model.rqvae.quantizer.codebooks  # (levels, K, latent_dim)
        before_last = out.quant.codes[:, :-1]
        residual = out.latent - books[torch.arange(before_last.shape[1]), before_last].sum(dim=1)
        order = torch.cdist(residual, books[-1]).argsort(dim=1, stable=True)  # (n, K)
    n = features.n_items
    mask = lambda m: np.zeros(n, bool) if m is None else m.numpy().astype(bool)  # noqa: E731
    return (out.quant.codes.numpy().astype(np.int64), order.numpy(), out.latent.numpy(), fusion.alphas.numpy(),
            (mask(inputs.image_mask), mask(inputs.text_mask)))
