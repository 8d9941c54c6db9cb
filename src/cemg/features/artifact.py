"""`ItemFeatures`: per-item text and image vectors in a common dimension d, with explicit masks."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cemg.data.errors import DataError
from cemg.features.pca import PCAProjection

PCA_FILE = "pca.npz"


@dataclass(frozen=True)
class ItemFeatures:
    """Row i describes item i. A modality that was not encoded at all is None; an item that lacks
    it (no image, empty text) has mask False and a zero row that nothing downstream may use."""

    n_items: int
    text: np.ndarray | None = None  # (n_items, d) float32
    text_mask: np.ndarray | None = None  # (n_items,) bool
    image: np.ndarray | None = None  # (n_items, d) float32
    image_mask: np.ndarray | None = None  # (n_items,) bool
    info: dict = field(default_factory=dict)  # encoder names, raw dims, explained variance, counts
    # modality -> the PCA fitted on the training items (features/pca.npz); empty for features made
    # before it was kept, or built in memory
    projections: dict[str, PCAProjection] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("text", "image"):
            values, mask = getattr(self, name), getattr(self, f"{name}_mask")
            if (values is None) != (mask is None):
                raise ValueError(f"{name} and {name}_mask must both be set or both be None")
            if values is None:
                continue
            if values.ndim != 2 or values.shape[0] != self.n_items or mask.shape != (self.n_items,):
                raise ValueError(f"{name} features do not cover {self.n_items} items")
            if not np.issubdtype(values.dtype, np.floating) or mask.dtype != np.bool_:
                raise ValueError(f"{name} features must be floats with a bool mask, found {values.dtype}/{mask.dtype}")
            finite = np.isfinite(values).all(axis=1)
            if not finite.all():
                # NaN would reach the fusion layer and the RQ-VAE and silently poison every code.
                raise ValueError(f"{name} features hold NaN or inf (item {int(np.flatnonzero(~finite)[0])})")

    def content_matrix(self, modalities: Sequence[str] = ("text", "image")) -> np.ndarray:
        """(n_items, sum of dims) float32: the named modalities that were encoded, text first, each
        row block scaled to unit length (an item lacking a modality has a zero block there), side by
        side. Unit blocks keep one modality's scale from drowning the other in a dot product."""
        blocks = []
        for name in ("text", "image"):
            values = getattr(self, name)
            if name not in modalities or values is None:
                continue
            block = values * getattr(self, f"{name}_mask")[:, None]
            blocks.append(block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12))
        if not blocks:
            raise ValueError(f"no content to read: none of {list(modalities)} was encoded")
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            name: value
            for name in ("text", "text_mask", "image", "image_mask")
            if (value := getattr(self, name)) is not None
        }
        np.savez(folder / "features.npz", **arrays)
        if self.projections:
            np.savez(folder / PCA_FILE, **{k: v for name, pca in sorted(self.projections.items())
                                           for k, v in pca.arrays(name).items()})
        (folder / "features.json").write_text(
            json.dumps({"n_items": self.n_items, "info": self.info}, indent=2, default=str), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path) -> ItemFeatures:
        """Raise DataError naming the file when the folder is missing, damaged or inconsistent."""
        folder = Path(folder)
        about, npz = folder / "features.json", folder / "features.npz"
        try:
            meta = json.loads(about.read_text(encoding="utf-8"))
            n_items, info = int(meta["n_items"]), dict(meta["info"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError,
                ValueError) as err:
            raise DataError(about, f"not a readable item-features description ({type(err).__name__}: {err})") from None
        try:
            # np.load raises OSError, ValueError, EOFError or zipfile's errors on damaged files;
            # allow_pickle stays off so a crafted file cannot run code.
            with np.load(npz, allow_pickle=False) as arrays:
                got = {k: arrays[k] for k in ("text", "text_mask", "image", "image_mask") if k in arrays.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
            raise DataError(npz, f"not a readable feature archive ({type(err).__name__}: {err})") from None
        projections = {}
        if (folder / PCA_FILE).is_file():
            try:
                with np.load(folder / PCA_FILE, allow_pickle=False) as arrays:
                    projections = {name: pca for name in ("text", "image")
                                   if (pca := PCAProjection.from_arrays(arrays, name)) is not None}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
                raise DataError(folder / PCA_FILE,
                                f"not a readable PCA archive ({type(err).__name__}: {err})") from None
        try:
            return cls(n_items, got.get("text"), got.get("text_mask"), got.get("image"), got.get("image_mask"), info,
                       projections)
        except ValueError as err:
            raise DataError(npz, str(err)) from None
