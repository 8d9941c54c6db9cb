import numpy as np
import pytest

from cemg.features.image import encode_images

pytestmark = pytest.mark.real_data


def test_ml1m_posters_from_the_real_tar(shared_data):
    archive = shared_data / "ml100k_posters" / "ml1m_posters.tar"
    # 3575.jpg holds PNG data; 91.jpg is not in the archive.
    refs = ["MovieImages/1.jpg", "MovieImages/3575.jpg", "MovieImages/91.jpg", None, "MovieImages/2.jpg"]
    out = encode_images(refs, archive, batch_size=4)
    assert out.mask.tolist() == [True, True, False, False, True]
    assert out.info["missing_by_reason"] == {"absent": 1, "no_ref": 1}
    assert out.vectors.shape == (5, 1280) and np.isfinite(out.vectors).all()
    assert not np.allclose(out.vectors[0], out.vectors[4])
