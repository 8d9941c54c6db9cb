"""PCA of each modality to the common dimension d (paper 4.2.2.1).

The fusion layer attends over text, image and collaborative vectors of one size d, so each raw
modality (384-d MiniLM, 768-d BERT, 1280-d EfficientNet, 4096-d VGG) is projected to d. PCA is
fitted only on items that have the modality: zero rows for missing items would pull the mean and
the first component towards the origin. Those rows stay zero and their mask stays False.

The fitted projection (`PCAProjection`: mean, components, whitening scale) is kept with the
features (features/pca.npz), so an item added after training (cemg.added_items) is projected by the
very map the training items were, never by a refit.

When d exceeds what the data can give (fewer items with the modality than d, or a raw dimension
below d) this raises instead of returning fewer columns: every later stage relies on exactly d
columns, and padding with zero directions would hide that the modality carries less information.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

from cemg.features.encoded import EncodedModality

log = logging.getLogger(__name__)


class PCADimensionError(ValueError):
    """d is larger than the number of components the modality's data can have."""


@dataclass(frozen=True)
class PCAProjection:
    """sklearn's PCA.transform as arrays: (x - mean) @ components.T, divided by `scale` when whitened."""

    mean: np.ndarray  # (raw_dim,)
    components: np.ndarray  # (dim, raw_dim)
    scale: np.ndarray | None = None  # (dim,) sqrt of the explained variances, when whitened

    @classmethod
    def of(cls, pca: PCA) -> PCAProjection:
        scale = np.sqrt(pca.explained_variance_) if pca.whiten else None
        return cls(pca.mean_.astype(np.float64), pca.components_.astype(np.float64), scale)

    def transform(self, vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(n, raw_dim) raw vectors -> (n, dim) float32, zero rows where `mask` is False."""
        if vectors.shape[1] != self.mean.shape[0]:
            raise ValueError(f"raw vectors have {vectors.shape[1]} dims, the fitted PCA {self.mean.shape[0]}")
        out = np.zeros((len(vectors), self.components.shape[0]), dtype=np.float32)
        projected = (vectors[mask].astype(np.float64) - self.mean) @ self.components.T
        if self.scale is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                projected = np.nan_to_num(projected / self.scale)
        out[mask] = projected.astype(np.float32)
        return out

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}_mean": self.mean, f"{prefix}_components": self.components}
        if self.scale is not None:
            out[f"{prefix}_scale"] = self.scale
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> PCAProjection | None:
        if f"{prefix}_mean" not in arrays:
            return None
        scale = arrays[f"{prefix}_scale"] if f"{prefix}_scale" in arrays else None
        return cls(arrays[f"{prefix}_mean"], arrays[f"{prefix}_components"], scale)


def reduce_modality(
    encoded: EncodedModality, dim: int, seed: int, whiten: bool = False, name: str = "modality"
) -> tuple[np.ndarray, dict]:
    """Project present rows to `dim` components: ((n_items, dim) float32 with zero masked rows, info)."""
    reduced, info, _ = fit_projection(encoded, dim, seed, whiten, name)
    return reduced, info


def fit_projection(
    encoded: EncodedModality, dim: int, seed: int, whiten: bool = False, name: str = "modality"
) -> tuple[np.ndarray, dict, PCAProjection]:
    """`reduce_modality`, plus the fitted projection for items encoded later."""
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
    return reduced, info, PCAProjection.of(pca)
