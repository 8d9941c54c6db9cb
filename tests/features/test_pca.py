import numpy as np
import pytest
from sklearn.decomposition import PCA

from cemg.features.encoded import EncodedModality
from cemg.features.pca import PCADimensionError, reduce_modality


def _modality(n=40, raw=12, missing=(3, 7, 20), seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, raw)).astype(np.float32) * np.linspace(3, 0.1, raw, dtype=np.float32)
    mask = np.ones(n, dtype=bool)
    mask[list(missing)] = False
    vectors[~mask] = 0.0
    return EncodedModality(vectors, mask)


def test_reduces_to_d_and_keeps_missing_rows_zero():
    encoded = _modality()
    reduced, info = reduce_modality(encoded, dim=5, seed=0)
    assert reduced.shape == (40, 5) and reduced.dtype == np.float32
    assert not reduced[[3, 7, 20]].any()
    assert np.abs(reduced[encoded.mask]).sum(1).min() > 0
    assert info["fit_items"] == 37 and info["raw_dim"] == 12 and info["dim"] == 5
    assert 0.0 < info["explained_variance"] <= 1.0


def test_fitted_only_on_items_that_have_the_modality():
    encoded = _modality()
    reduced, info = reduce_modality(encoded, dim=4, seed=0)
    reference = PCA(n_components=4, random_state=0).fit(encoded.vectors[encoded.mask].astype(np.float64))
    # Components are defined up to sign; compare absolute projections.
    expected = reference.transform(encoded.vectors[encoded.mask].astype(np.float64))
    np.testing.assert_allclose(np.abs(reduced[encoded.mask]), np.abs(expected), rtol=1e-4, atol=1e-4)
    assert info["explained_variance"] == pytest.approx(reference.explained_variance_ratio_.sum())
    # Present rows are centred by the fit (zero rows of missing items did not shift the mean).
    np.testing.assert_allclose(reduced[encoded.mask].mean(0), 0.0, atol=1e-4)


def test_whiten_gives_unit_variance_components():
    reduced, info = reduce_modality(_modality(n=200, missing=()), dim=3, seed=0, whiten=True)
    np.testing.assert_allclose(reduced.std(0, ddof=1), 1.0, rtol=1e-3)
    assert info["whiten"] is True


@pytest.mark.parametrize("n, raw, dim", [(6, 12, 8), (40, 4, 5)])
def test_dimension_beyond_rank_is_a_clear_error(n, raw, dim):
    with pytest.raises(PCADimensionError, match=rf"features.dim={dim}"):
        reduce_modality(_modality(n=n, raw=raw, missing=()), dim=dim, seed=0, name="image")


def test_modality_nobody_has_is_an_error():
    encoded = EncodedModality(np.zeros((5, 4), np.float32), np.zeros(5, bool))
    with pytest.raises(PCADimensionError, match="no item"):
        reduce_modality(encoded, dim=2, seed=0)


def test_fitted_projection_reproduces_the_reduced_rows():
    # Items added after training are projected with the stored map; it must be the fitted one.
    from cemg.features.pca import fit_projection

    for whiten in (False, True):
        encoded = _modality(n=60, missing=(3, 7))
        reduced, _, projection = fit_projection(encoded, dim=4, seed=0, whiten=whiten)
        again = projection.transform(encoded.vectors, encoded.mask)
        np.testing.assert_allclose(again, reduced, atol=1e-4)
        assert not again[[3, 7]].any()
