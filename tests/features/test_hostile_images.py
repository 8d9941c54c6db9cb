"""Hostile image references and image bytes (issue #8): no ref may read a file outside the image
root (`..`, absolute paths, drive letters, symlinks, NUL bytes, lone surrogates), a damaged archive
is a DataError naming it, and no image, however shaped, makes preprocessing allocate gigabytes."""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cemg.data.errors import DataError
from cemg.features import image as image_mod
from cemg.features.image import (
    ABSENT,
    REFUSED,
    ImageModelSpec,
    encode_images,
    preprocess,
    read_image_bytes,
    safe_relative,
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SECRET = b"outside the image root"

segment = st.one_of(
    st.sampled_from(["..", ".", "", "a", "b.jpg", "link", "loop", "outside.jpg", "C:", "~", "%2e%2e", "\x00",
                     "..\\..", "\u202e", "\ufeff", "\u2028", "\ud800", "\udcff", "a" * 300]),
    st.text(max_size=6),
)
hostile_ref = st.one_of(
    st.lists(segment, min_size=1, max_size=6).map("/".join),
    st.lists(segment, min_size=1, max_size=4).map("\\".join),
    st.builds(lambda s, r: s + r, st.sampled_from(["/", "//", "\\\\", "C:\\", "c:/", "file://", "ftp://x/",
                                                   "HTTP://", "\x00", "/proc/self/"]),
              st.lists(segment, max_size=3).map("/".join)),
)


@pytest.fixture
def image_root(tmp_path_factory):
    """root/ holds two images, a symlink escaping to a secret file, a symlink loop and a subfolder."""
    base = tmp_path_factory.mktemp("hostile")
    (base / "outside.jpg").write_bytes(SECRET)
    root = base / "root"
    (root / "a").mkdir(parents=True)
    (root / "b.jpg").write_bytes(b"image b")
    (root / "a" / "b.jpg").write_bytes(b"image a/b")
    os.symlink(base / "outside.jpg", root / "link")
    os.symlink(root / "loop", root / "loop")
    os.symlink(base, root / "a" / "up")  # a folder link out of the root
    return root


@SETTINGS
@given(refs=st.lists(hostile_ref, min_size=1, max_size=5))
def test_no_ref_reads_outside_the_root(image_root, refs):
    got = list(read_image_bytes(refs, image_root))
    assert sorted(i for i, _, _ in got) == list(range(len(refs)))  # every item answered exactly once
    base = image_root.resolve()
    allowed = {p.read_bytes() for p in image_root.rglob("*") if p.is_file() and p.resolve().is_relative_to(base)}
    for item, data, reason in got:
        assert data != SECRET, refs[item]
        assert (data is None) == (reason is not None)
        if data is not None:
            assert data in allowed


@SETTINGS
@given(ref=hostile_ref)
def test_safe_relative_never_escapes(ref):
    rel = safe_relative(ref)
    if rel is None:
        return
    assert not rel.startswith("/") and rel not in (".", "..") and not rel.startswith("../")
    assert "\x00" not in rel and "://" not in rel
    os.fsencode(rel)  # a file system can name it
    assert posixpath.normpath(rel) == rel


@pytest.mark.parametrize("ref, reason", [
    ("link", REFUSED), ("a/up/outside.jpg", REFUSED), ("loop", ABSENT), ("a\x00b.jpg", REFUSED),
    ("\ud800.jpg", REFUSED), ("../outside.jpg", REFUSED), ("a/../../outside.jpg", REFUSED),
    (str(Path("/etc/passwd")), REFUSED), ("a", ABSENT), ("x" * 5000, ABSENT), ("a/../b.jpg", None),
])
def test_each_kind_of_hostile_ref(image_root, ref, reason):
    [(item, data, got)] = list(read_image_bytes([ref], image_root))
    assert got == reason
    if reason is None:
        assert data == b"image b"


def _tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None, mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


@SETTINGS
@given(refs=st.lists(hostile_ref, min_size=1, max_size=5))
def test_tar_members_with_hostile_names_are_never_extracted(tmp_path_factory, refs):
    folder = tmp_path_factory.mktemp("tar")
    archive = folder / "images.tar.gz"
    # Members named like the escapes a ref might try; the archive is only read, never extracted.
    archive.write_bytes(_tar_bytes({"../outside.jpg": SECRET, "/abs.jpg": SECRET, "ok.jpg": b"ok"},
                                   links={"link.jpg": "/etc/passwd"}))
    before = set(folder.rglob("*"))
    got = list(read_image_bytes(refs + ["ok.jpg"], archive))
    assert set(folder.rglob("*")) == before
    assert all(data != SECRET for _, data, _ in got)
    assert [d for i, d, _ in got if i == len(refs)] == [b"ok"]


@SETTINGS
@given(keep=st.floats(0.05, 0.95), flip=st.integers(0, 10**6))
def test_truncated_or_damaged_tar_is_a_data_error(tmp_path_factory, keep, flip):
    folder = tmp_path_factory.mktemp("tar")
    rng = np.random.default_rng(flip)
    whole = _tar_bytes({f"img{i}.jpg": rng.bytes(3000) for i in range(30)})
    data = bytearray(whole[: max(64, int(len(whole) * keep))])
    if flip % 2:
        data[len(data) // 2] ^= 0xFF  # damaged in the middle rather than cut short
    archive = folder / "images.tar.gz"
    archive.write_bytes(bytes(data))
    try:
        got = list(read_image_bytes(["img29.jpg", "img0.jpg"], archive))
    except DataError as err:
        assert str(err).startswith(str(archive))
        return
    assert sorted(i for i, _, _ in got) == [0, 1]


def test_random_bytes_as_an_image_root(tmp_path):
    root = tmp_path / "images.tar"
    root.write_bytes(os.urandom(4096))
    with pytest.raises(DataError, match="neither a folder nor a tar"):
        list(read_image_bytes(["a.jpg"], root))


# --- image bytes ---------------------------------------------------------------------------------

SPEC = ImageModelSpec("test", "", 8, 256, 224, (127.0,) * 3, (128.0,) * 3)


@settings(max_examples=50, deadline=None)
@given(w=st.integers(1, 6000), h=st.integers(1, 6000))
def test_preprocess_bounds_memory_for_any_shape(w, h):
    sizes = []
    original = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(size)
        return original(self, size, *args, **kwargs)

    Image.Image.resize = spy
    try:
        pixels = preprocess(Image.new("RGB", (w, h), (10, 200, 30)), SPEC)
    finally:
        Image.Image.resize = original
    assert pixels.shape == (3, 224, 224) and np.isfinite(pixels).all()
    # A 1 x 6000 strip would otherwise be resized to 256 x 1.5M pixels before the crop.
    assert all(a * b <= 1100 * 1100 for a, b in sizes), sizes


def test_preprocess_of_ordinary_shapes_is_unchanged():
    # The memory guard only touches aspect ratios beyond 4:1; a 3:2 photo takes the old path exactly.
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 450, 3), dtype=np.uint8))
    scale = 256 / 300
    w, h = round(450 * scale), 256
    resized = image.resize((w, h), Image.BILINEAR)
    left, top = (w - 224) // 2, (h - 224) // 2
    expected = (np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) - 127.0) / 128.0
    np.testing.assert_array_equal(preprocess(image, SPEC), expected.transpose(2, 0, 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=600), min_size=1, max_size=6))
def test_undecodable_bytes_are_counted_missing(tmp_path_factory, monkeypatch, blobs):
    root = tmp_path_factory.mktemp("blobs")
    for i, blob in enumerate(blobs):
        (root / f"{i}.jpg").write_bytes(blob)
    built = []
    monkeypatch.setattr(image_mod, "build_image_network", lambda spec, device: built.append(1))
    encoded = encode_images([f"{i}.jpg" for i in range(len(blobs))] + [None, "../x.jpg"], root)
    assert not encoded.mask.any() and built == []  # nothing decodes, so no network was ever needed
    assert encoded.info["missing_by_reason"] == {"no_ref": 1, "refused": 1, "undecodable": len(blobs)}
    assert not encoded.vectors.any()
