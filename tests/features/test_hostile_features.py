"""NaN/inf in feature vectors and damaged ItemFeatures folders (issue #8): a ValueError naming the
modality and item, or a DataError naming the file; never NaN passed on to the tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cemg.data.errors import DataError
from cemg.features.artifact import ItemFeatures
from cemg.features.encoded import EncodedModality
from cemg.features.pca import PCADimensionError, reduce_modality

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
any_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@SETTINGS
@given(vectors=arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 6)), elements=any_floats),
       mask_bits=st.integers(0, 2**12 - 1), dim=st.integers(1, 4), whiten=st.booleans())
def test_pca_input_with_nan_or_inf(vectors, mask_bits, dim, whiten):
    mask = np.array([(mask_bits >> i) & 1 for i in range(len(vectors))], dtype=bool)
    encoded = EncodedModality(np.where(mask[:, None], vectors, 0).astype(np.float32), mask)
    present_finite = np.isfinite(encoded.vectors[mask]).all()
    try:
        reduced, info = reduce_modality(encoded, dim, seed=0, whiten=whiten, name="image")
    except PCADimensionError as err:
        assert str(err).startswith("image:")
        return
    except ValueError as err:
        assert not present_finite and str(err).startswith("image:") and "item" in str(err)
        return
    assert present_finite
    assert reduced.shape == (len(vectors), dim) and not reduced[~mask].any()
    assert np.isfinite(reduced).all() and np.isfinite(info["explained_variance"])


def test_pca_output_overflowing_float32_is_an_error():
    vectors = np.array([[3e38, 3e38], [-3e38, -3e38], [0, 0]], np.float32)
    with pytest.raises(ValueError, match="text: PCA output overflows float32"):
        reduce_modality(EncodedModality(vectors, np.ones(3, bool)), 1, seed=0, name="text")


@SETTINGS
@given(values=arrays(np.float32, st.tuples(st.integers(1, 8), st.just(3)), elements=any_floats))
def test_item_features_refuse_non_finite_vectors(values):
    n = len(values)
    if np.isfinite(values).all():
        assert ItemFeatures(n, values, np.ones(n, bool)).n_items == n
        return
    bad = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
    with pytest.raises(ValueError, match=f"text features hold NaN or inf \\(item {bad}\\)"):
        ItemFeatures(n, values, np.ones(n, bool))


def test_item_features_refuse_wrong_types_and_shapes():
    with pytest.raises(ValueError, match="floats with a bool mask"):
        ItemFeatures(2, np.zeros((2, 3), np.float32), np.ones(2, np.int64))
    with pytest.raises(ValueError, match="floats with a bool mask"):
        ItemFeatures(2, np.array([["a"] * 3] * 2), np.ones(2, bool))
    with pytest.raises(ValueError, match="do not cover"):
        ItemFeatures(2, np.zeros(6, np.float32), np.ones(2, bool))


def _saved(tmp_path):
    folder = tmp_path / "features"
    ItemFeatures(3, np.ones((3, 2), np.float32), np.ones(3, bool), info={"dim": 2}).save(folder)
    return folder


@pytest.mark.parametrize("damage", ["no json", "bad json", "json list", "no n_items", "random npz", "empty npz",
                                    "truncated npz", "nan npz", "pickled npz", "short rows"])
def test_damaged_feature_folder_is_a_data_error(tmp_path, damage):
    folder = _saved(tmp_path)
    about, npz = folder / "features.json", folder / "features.npz"
    if damage == "no json":
        about.unlink()
    elif damage == "bad json":
        about.write_text("{", encoding="utf-8")
    elif damage == "json list":
        about.write_text("[1, 2]", encoding="utf-8")
    elif damage == "no n_items":
        about.write_text('{"info": {}}', encoding="utf-8")
    elif damage == "random npz":
        npz.write_bytes(np.random.default_rng(0).bytes(500))
    elif damage == "empty npz":
        npz.write_bytes(b"")
    elif damage == "truncated npz":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "nan npz":
        np.savez(npz, text=np.full((3, 2), np.nan, np.float32), text_mask=np.ones(3, bool))
    elif damage == "pickled npz":
        np.savez(npz, text=np.array([{"x": 1}] * 3, dtype=object), text_mask=np.ones(3, bool))
    elif damage == "short rows":
        about.write_text(json.dumps({"n_items": 5, "info": {}}), encoding="utf-8")
    with pytest.raises(DataError) as err:
        ItemFeatures.load(folder)
    assert str(err.value).startswith(str(folder))


def test_saved_features_round_trip(tmp_path):
    loaded = ItemFeatures.load(_saved(tmp_path))
    assert loaded.n_items == 3 and loaded.text.shape == (3, 2) and loaded.info == {"dim": 2}
