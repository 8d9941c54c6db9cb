"""The features stage (paper 4.2.2.1): item text and image vectors, each reduced by PCA to d.

`encode_items` is the stage's entry point; `save_item_features` writes its artifact folder with a
manifest whose inputs hash (`features_inputs_hash`) lets a rerun skip the stage when nothing changed.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path

from cemg.artifacts import SOURCE_DIGESTS, atomic_dir, fingerprint, source_digest, write_manifest
from cemg.config import CEMGConfig, resolve_device
from cemg.data.dataset import InteractionDataset
from cemg.features.artifact import ItemFeatures
from cemg.features.image import encode_images
from cemg.features.pca import fit_projection
from cemg.features.text import encode_item_texts

log = logging.getLogger(__name__)

STAGE = "features"


def encode_items(dataset: InteractionDataset, cfg: CEMGConfig) -> ItemFeatures:
    """Encode every item's text and image (as `cfg.features` asks) and reduce each to d.

    A modality is None in the result when it is switched off, when the dataset has no image refs
    at all, or when no item has it; otherwise items lacking it have mask False and zero rows.
    """
    fc = cfg.features
    device = resolve_device(cfg.device)
    items = dataset.items
    info: dict = {"dim": fc.dim, "seed": cfg.seed, "device": device, "dataset": dataset.name}
    text = text_mask = image = image_mask = None
    projections = {}

    if fc.use_text:
        encoded = encode_item_texts(
            items, cfg.data.text_fields, fc.text_model, fc.text_pooling, fc.batch_size, fc.text_max_length,
            cfg.cache_dir, device,
        )
        text, text_mask, info["text"], projections["text"] = _reduce(encoded, "text", cfg)
    else:
        info["text"] = {"skipped": "features.use_text is false"}

    refs = items.image_refs
    if not fc.use_image:
        info["image"] = {"skipped": "features.use_image is false"}
    elif refs is None or all(ref is None for ref in refs):
        log.info("%s has no image references: the image modality is absent", dataset.name)
        info["image"] = {"skipped": "the dataset has no image references"}
    else:
        encoded = encode_images(refs, dataset.image_root, fc.image_model, fc.image_batch_size, cfg.cache_dir, device,
                                weights=fc.image_weights)
        image, image_mask, info["image"], projections["image"] = _reduce(encoded, "image", cfg)

    info["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    projections = {name: pca for name, pca in projections.items() if pca is not None}
    return ItemFeatures(dataset.n_items, text, text_mask, image, image_mask, info, projections)


def _peak_rss_mb() -> float:
    # The whole process's peak so far (data loading included); ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024**2 if sys.platform == "darwin" else 1024)


def _reduce(encoded, name: str, cfg: CEMGConfig):
    """(reduced, mask, info, fitted projection) of one modality; Nones where no item has it."""
    if not encoded.mask.any():
        log.warning("no item has a usable %s: the %s modality is absent", name, name)
        return None, None, {**encoded.info, "skipped": f"no item has a usable {name}"}, None
    start = time.perf_counter()
    reduced, pca_info, projection = fit_projection(encoded, cfg.features.dim, cfg.seed, cfg.features.pca_whiten, name)
    pca_info["seconds"] = round(time.perf_counter() - start, 2)
    return reduced, encoded.mask.copy(), {**encoded.info, "pca": pca_info}, projection


def features_inputs_hash(dataset: InteractionDataset, cfg: CEMGConfig) -> str:
    """Everything the features depend on: item texts and image refs, the image root's identity,
    the feature settings, the text fields and the seed (PCA)."""
    # Files by content (cemg.artifacts.source_digest): a restored copy with new mtimes keeps the hash.
    memo = Path(cfg.cache_dir) / SOURCE_DIGESTS
    root = dataset.image_root
    root_id = None
    if root is not None and Path(root).is_file():
        root_id = [str(root), source_digest(Path(root), memo)]
    elif root is not None:
        root_id = [str(root)]
    section = cfg.features.model_dump()
    weights = section.pop("image_weights")  # left out when unset, so runs made before it keep their hash
    extra = []
    if weights is not None:  # a file replaced under the same name changes the hash
        extra = [str(weights), source_digest(Path(weights), memo) if Path(weights).is_file() else None]
    items = dataset.items
    texts = [items.text(i, cfg.data.text_fields) for i in range(len(items))]
    return fingerprint(STAGE, texts, items.image_refs, root_id, section, cfg.seed, *extra)


def save_item_features(features: ItemFeatures, folder: Path, inputs_hash: str, cfg: CEMGConfig) -> Path:
    """Write `features` to `folder` atomically, with a manifest naming the config and inputs hash."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        features.save(tmp)
        write_manifest(tmp, STAGE, inputs_hash, cfg.features.model_dump(), info=features.info)
    log.info("item features (%d items) written to %s", features.n_items, folder)
    return folder
