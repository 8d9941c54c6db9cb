"""PCA of each modality to the common dimension d (paper 4.2.2.1).

The fusion layer attends over text, image and collaborative vectors of one size d, so each raw
modality (384-d MiniLM, 768-d BERT, 1280-d EfficientNet, 4096-d VGG) is projected to d. PCA is
fitted only on items that have the modality: zero rows for missing items would pull the mean and
the first component towards the origin. Those rows stay zero and their mask stays False.

When d exceeds what the data can give (fewer items with the modality than d, or a raw dimension
below d) this raises instead of returning fewer columns: every later stage relies on exactly d
columns, and padding with zero directions would hide that the modality carries less information.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA

from cemg.features.encoded import EncodedModality

log = logging.getLogger(__name__)


class PCADimensionError(ValueError):
    """d is larger than the number of components the modality's data can have."""


def reduce_modality(
    encoded: EncodedModality, dim: int, seed: int, whiten: bool = False, name: str = "modality"
) -> tuple[np.ndarray, dict]:
    """Project present rows to `dim` components: ((n_items, dim) float32 with zero masked rows, info)."""
    present = np.flatnonzero(encoded.mask)
    n_present, raw_dim = len(present), encoded.vectors.shape[1]
    if n_present == 0:
        raise PCADimensionError(f"{name}: no item has this modality, nothing to fit PCA on")
    finite = np.isfinite(encoded.vectors[present]).all(axis=1)
    if not finite.all():
        # sklearn's own message ("Input X contains NaN") names neither the modality nor the item.
        bad = present[~finite]
        raise ValueError(f"{name}: {len(bad)} item vector(s) hold NaN or inf (first: item {int(bad[0])}); "
                         f"the {name} encoder produced non-finite output")
    if dim > min(n_present, raw_dim):
        raise PCADimensionError(
            f"{name}: features.dim={dim} exceeds the {min(n_present, raw_dim)} components PCA can find in "
            f"{n_present} items with {raw_dim}-d vectors; lower features.dim (and collab.dim with it) "
            f"or add items"
        )
    if n_present < 2:
        raise PCADimensionError(f"{name}: only {n_present} item has this modality; PCA needs at least 2")
    pca = PCA(n_components=dim, whiten=whiten, random_state=seed)
    reduced = np.zeros((len(encoded.mask), dim), dtype=np.float32)
    # Identical vectors have zero total variance: sklearn divides by it (warning, NaN ratio).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # overflow: checked below
        reduced[present] = pca.fit_transform(encoded.vectors[present].astype(np.float64)).astype(np.float32)
    if not np.isfinite(reduced).all():  # projections of values near float32's limit overflow it
        raise ValueError(f"{name}: PCA output overflows float32; the {name} vectors are too large (max |x| "
                         f"{float(np.abs(encoded.vectors[present]).max()):.3g})")
    explained = float(np.nan_to_num(pca.explained_variance_ratio_.sum()))
    log.info("%s PCA %d -> %d on %d items: explained variance %.3f", name, raw_dim, dim, n_present, explained)
    info = {"raw_dim": raw_dim, "dim": dim, "fit_items": n_present, "whiten": whiten, "explained_variance": explained}
    return reduced, info
