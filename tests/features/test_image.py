import dataclasses
import functools
import http.server
import json
import logging
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import cemg.features.image as image_module
from cemg.data.errors import DataError
from cemg.features.encoded import EncoderUnavailable
from cemg.features.image import encode_images, resolve_image_model, safe_relative


@pytest.fixture
def folder(tmp_path, picture):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(picture(1))
    (root / "sub" / "b.jpg").write_bytes(picture(2))
    (root / "c.jpg").write_bytes(picture(3, fmt="PNG"))  # PNG bytes under a .jpg name (ml1m 3575.jpg)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "truncated.jpg").write_bytes(picture(4)[:300])
    (tmp_path / "secret.png").write_bytes(picture(5, fmt="PNG"))
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    return root


@pytest.fixture
def counted_builds(monkeypatch):
    calls = {"builds": 0}
    real = image_module.build_image_network

    def build(spec, device):
        calls["builds"] += 1
        return real(spec, device)

    monkeypatch.setattr(image_module, "build_image_network", build)
    return calls


def test_folder_images_missing_corrupt_and_refused(folder, caplog):
    refs = ["a.jpg", None, "sub/b.jpg", "c.jpg", "broken.jpg", "truncated.jpg", "nope.jpg",
            "../secret.png", "link.png", "/etc/passwd", "file:///etc/passwd", "./sub/../a.jpg"]
    with caplog.at_level(logging.WARNING, logger="cemg.features.image"):
        out = encode_images(refs, folder, batch_size=2)
    assert out.vectors.shape == (12, 1280) and out.info["raw_dim"] == 1280
    assert out.mask.tolist() == [True, False, True, True] + [False] * 7 + [True]
    assert not out.vectors[~out.mask].any()
    assert np.abs(out.vectors[out.mask]).sum(1).min() > 0
    np.testing.assert_array_equal(out.vectors[0], out.vectors[11])  # the same file, normalised ref
    assert not np.allclose(out.vectors[0], out.vectors[2])
    assert out.info["missing"] == 8
    assert out.info["missing_by_reason"] == {"absent": 1, "no_ref": 1, "refused": 4, "undecodable": 2}
    assert "images missing for 8 of 12 items" in caplog.text
    assert "'../secret.png' (item 7) leaves the image root" in caplog.text
    assert "outside the image root" in caplog.text  # the symlink


def test_tar_sources_match_the_folder(folder, tmp_path):
    refs = ["a.jpg", "sub/b.jpg", "c.jpg", "broken.jpg", "gone.jpg", "../a.jpg"]
    from_folder = encode_images(refs, folder)
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        archive = tmp_path / f"images{suffix}"
        with tarfile.open(archive, mode) as tar:
            for name in ("sub/b.jpg", "a.jpg", "c.jpg", "broken.jpg"):
                tar.add(folder / name, arcname=f"./{name}")
            tar.add(folder / "link.png", arcname="link.png")  # a symlink member is never followed
        from_tar = encode_images(refs + ["link.png"], archive)
        assert from_tar.mask.tolist() == [True, True, True, False, False, False, False]
        np.testing.assert_allclose(from_tar.vectors[:6], from_folder.vectors, atol=1e-5)
        assert from_tar.info["missing_by_reason"] == {"absent": 2, "refused": 1, "undecodable": 1}


def test_cache_makes_a_rerun_skip_the_network(folder, tmp_path, counted_builds, picture):
    refs = ["a.jpg", "sub/b.jpg", "broken.jpg"]
    first = encode_images(refs, folder, cache_dir=tmp_path / "cache")
    second = encode_images(refs, folder, cache_dir=tmp_path / "cache")
    assert counted_builds["builds"] == 1
    assert second.info["encoded"] == 0 and second.info["from_cache"] == 2
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert second.mask.tolist() == [True, True, False]  # failures are not cached as images
    # Keyed by content: changed bytes under the same name are encoded again.
    (folder / "a.jpg").write_bytes(picture(9))
    third = encode_images(refs, folder, cache_dir=tmp_path / "cache")
    assert third.info["encoded"] == 1 and not np.allclose(third.vectors[0], first.vectors[0])


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):
        type(self).hits.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def test_url_images_downloaded_once(tmp_path, picture):
    served = tmp_path / "www"
    served.mkdir()
    (served / "p.jpg").write_bytes(picture(6))
    handler = functools.partial(_CountingHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        refs = [f"{base}/p.jpg", f"{base}/missing.jpg"]
        first = encode_images(refs, None, cache_dir=tmp_path / "cache")
        second = encode_images(refs, None, cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
    assert first.mask.tolist() == [True, False] and second.mask.tolist() == [True, False]
    assert first.info["missing_by_reason"] == {"download_failed": 1}
    assert _CountingHandler.hits.count("/p.jpg") == 1
    assert list((tmp_path / "cache" / "images" / "downloads").glob("*.jpg"))
    np.testing.assert_array_equal(first.vectors, second.vectors)


def test_downloads_stop_when_there_is_no_network(monkeypatch, caplog):
    attempts = []

    def offline(url, folder):
        attempts.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(image_module, "_download", offline)
    refs = [f"http://images.invalid/{i}.jpg" for i in range(image_module.GIVE_UP_AFTER + 5)]
    with caplog.at_level(logging.WARNING, logger="cemg.features.image"):
        out = encode_images(refs, None)
    assert len(attempts) == image_module.GIVE_UP_AFTER
    assert out.info["missing_by_reason"] == {"download_failed": len(refs)} and not out.mask.any()
    assert "not trying the others" in caplog.text


def test_bad_image_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="image_root"):
        encode_images(["a.jpg"], None)
    with pytest.raises(DataError, match="not found"):
        encode_images(["a.jpg"], tmp_path / "nowhere")
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(DataError, match="neither a folder nor a tar"):
        encode_images(["a.jpg"], tmp_path / "plain.txt")


def test_auto_falls_back_without_vgg16_weights(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # never needed: VGG16 is cemg.features.vgg16
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(EncoderUnavailable, match=r"VGG16 ImageNet weights not found at .*vgg16-397923af\.pth"):
        resolve_image_model("vgg16")
    with caplog.at_level(logging.WARNING, logger="cemg.features.image"):
        spec = resolve_image_model("auto")
    assert spec.name == "efficientnet-lite0" and spec.dim == 1280
    assert "VGG16 (the paper's image encoder) is unavailable" in caplog.text
    # With the checkpoint in the hub folder, "auto" is the paper's VGG16 (the file is only opened
    # when a network is built).
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"")
    spec = resolve_image_model("auto")
    assert (spec.name, spec.dim, spec.crop, spec.weights_sha256) == ("vgg16", 4096, 224, None)
    with pytest.raises(EncoderUnavailable, match="unknown image model"):
        resolve_image_model("resnet")


def test_explicit_weights_file_must_exist(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    for model in ("vgg16", "auto", "efficientnet-lite1"):  # "auto" does not fall back from a named file
        with pytest.raises(EncoderUnavailable, match=rf"{missing}: weights file .*not found"):
            resolve_image_model(model, missing)


def test_cache_identity_names_the_weights_not_their_install_folder(tmp_path):
    """A fresh clone's virtual environment puts the package's weights elsewhere: same cache."""
    spec = resolve_image_model("efficientnet-lite0")
    moved = dataclasses.replace(spec, weights=str(tmp_path / "other-venv" / Path(spec.weights).name))
    assert spec.identity() == moved.identity() and str(tmp_path) not in json.dumps(moved.identity())
    assert spec.identity() != resolve_image_model("efficientnet-lite1").identity()


@pytest.mark.parametrize("model, size", [("efficientnet-lite0", 224), ("efficientnet-lite1", 240),
                                         ("efficientnet-lite2", 260)])
def test_efficientnet_lite_sizes(folder, model, size):
    # Each Lite is built for its own resolution (static "same" paddings), resized to size + 32 first.
    spec = resolve_image_model(model)
    assert (spec.crop, spec.resize, spec.mean, spec.std) == (size, size + 32, (127.0,) * 3, (128.0,) * 3)
    out = encode_images(["a.jpg", "sub/b.jpg", "broken.jpg"], folder, model=model)
    assert out.vectors.shape == (3, 1280) and out.mask.tolist() == [True, True, False]
    assert np.isfinite(out.vectors).all() and out.info["model"] == model


@pytest.mark.parametrize(
    "ref, expected",
    [("a/b.jpg", "a/b.jpg"), ("./a//b.jpg", "a/b.jpg"), ("a/../b.jpg", "b.jpg"), ("a\\b.jpg", "a/b.jpg"),
     ("../b.jpg", None), ("a/../../b.jpg", None), ("/etc/passwd", None), ("C:/x.jpg", None),
     ("ftp://host/x.jpg", None), ("..", None)],
)
def test_safe_relative(ref, expected):
    assert safe_relative(ref) == expected


def _gif(picture, seed: int, frames: int = 1) -> bytes:
    import io

    from PIL import Image

    first = Image.open(io.BytesIO(picture(seed, fmt="PNG")))
    out = io.BytesIO()
    extra = [Image.open(io.BytesIO(picture(seed + 100, fmt="PNG")))] * (frames - 1)
    first.save(out, format="GIF", save_all=frames > 1, append_images=extra)
    return out.getvalue()


def test_gif_under_a_jpg_name_decodes_by_content(tmp_path, picture):
    # Amazon image dumps hold GIFs (and PNGs) named .jpg: the decoder goes by the bytes, and an
    # animated GIF gives its first frame.
    root = tmp_path / "images"
    root.mkdir()
    (root / "still.jpg").write_bytes(_gif(picture, 1))
    (root / "still.gif").write_bytes(_gif(picture, 1))
    (root / "moving.jpg").write_bytes(_gif(picture, 2, frames=3))
    (root / "first.gif").write_bytes(_gif(picture, 2))
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("still.jpg", "still.gif", "moving.jpg", "first.gif"):
            tar.add(root / name, arcname=name)
    for source in (root, archive):
        out = encode_images(["still.jpg", "still.gif", "moving.jpg", "first.gif"], source)
        assert out.mask.all() and out.info["missing"] == 0
        np.testing.assert_array_equal(out.vectors[0], out.vectors[1])
        np.testing.assert_allclose(out.vectors[2], out.vectors[3], atol=1e-5)
        assert not np.allclose(out.vectors[0], out.vectors[2])


def test_a_killed_encode_resumes_from_the_flushed_vectors(tmp_path, picture, monkeypatch):
    root = tmp_path / "images"
    root.mkdir()
    refs = []
    for i in range(10):
        (root / f"{i}.jpg").write_bytes(picture(20 + i))
        refs.append(f"{i}.jpg")
    uninterrupted = encode_images(refs, root, batch_size=2)

    real_build = image_module.build_image_network
    calls = {"batches": 0}

    def dies_on_the_third_batch(spec, device):
        network = real_build(spec, device)

        def forward(pixels):
            calls["batches"] += 1
            if calls["batches"] == 3:
                raise KeyboardInterrupt("killed")  # nothing after this point runs, as under kill -9
            return network(pixels)

        return forward

    monkeypatch.setattr(image_module, "FLUSH_EVERY_IMAGES", 2)  # a shard per batch, as 256 are on Toys
    monkeypatch.setattr(image_module, "build_image_network", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        encode_images(refs, root, batch_size=2, cache_dir=tmp_path / "cache")
    [folder] = (tmp_path / "cache" / "images").iterdir()
    assert len(list(folder.glob("shard-*.npz"))) == 2  # the two finished batches
    monkeypatch.setattr(image_module, "build_image_network", real_build)
    resumed = encode_images(refs, root, batch_size=2, cache_dir=tmp_path / "cache")
    assert resumed.info["from_cache"] == 4 and resumed.info["encoded"] == 6
    np.testing.assert_array_equal(resumed.mask, uninterrupted.mask)
    np.testing.assert_allclose(resumed.vectors, uninterrupted.vectors, rtol=0, atol=1e-6)


def test_image_cache_flushes_on_time_as_well_as_count(tmp_path, monkeypatch):
    from cemg.features import encoded

    clock = iter([0.0, 10.0, 59.0, 61.0, 62.0])
    monkeypatch.setattr(encoded.time, "monotonic", lambda: next(clock))
    cache = encoded.VectorCache(tmp_path / "c", flush_every=100, flush_seconds=60.0)
    for i in range(3):  # pending since t=0; checked at 10 and 59: kept; at 61 (third put): written
        cache.put(f"k{i}", np.full(4, i, np.float32))
    assert len(list((tmp_path / "c").glob("shard-*.npz"))) == 1
    assert len(encoded.VectorCache(tmp_path / "c")) == 3
