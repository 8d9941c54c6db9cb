"""The paper's VGG16 image encoder without torchvision: torchvision's state-dict layout, fc7 vectors
from a weights file, and errors that name a wrong file.

A real VGG16 file is 528 MB (138M float32 parameters); these tests write the same keys and shapes in
about 2 MB: each tensor is a strided view over a small random storage (torch.save keeps a view's
storage, not its expanded size), and loading makes them ordinary contiguous tensors.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from cemg.features.encoded import EncoderUnavailable
from cemg.features.image import encode_images, load_vgg16, resolve_image_model
from cemg.features.vgg16 import VGG16

# torchvision.models.vgg16().state_dict(), written out: (key, shape) in order.
_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
          (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
TORCHVISION_LAYOUT = [
    *[item for i, cin, cout in _CONVS
      for item in ((f"features.{i}.weight", (cout, cin, 3, 3)), (f"features.{i}.bias", (cout,)))],
    ("classifier.0.weight", (4096, 25088)), ("classifier.0.bias", (4096,)),
    ("classifier.3.weight", (4096, 4096)), ("classifier.3.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]


def small_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """VGG16's keys and shapes with He-scaled random values, each a strided view over a few thousand
    numbers: rows are shifted windows of one random vector, so they still differ from each other."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in TORCHVISION_LAYOUT:
        inner = int(np.prod(shape[1:]))  # elements per output unit
        strides = [7] + [int(np.prod(shape[d + 1:])) for d in range(1, len(shape))]  # row i starts at 7 * i
        needed = 7 * (shape[0] - 1) + inner
        fan_in = inner if key.endswith("weight") else 1
        base = torch.randn(needed, generator=g) * ((2.0 / fan_in) ** 0.5 if key.endswith("weight") else 0.01)
        state[key] = base.as_strided(shape, strides)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vgg16")
    paths = {}
    for seed in (0, 1):
        paths[seed] = folder / f"vgg16-seed{seed}.pth"
        torch.save(small_state_dict(seed), paths[seed])
    return paths


@pytest.fixture
def images(tmp_path, picture):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(picture(i, size=48))
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def test_parameter_names_and_shapes_are_torchvisions():
    with torch.device("meta"):  # no 528 MB of random initialisation to build a layout
        vgg = VGG16()
    assert [(k, tuple(v.shape)) for k, v in vgg.state_dict().items()] == TORCHVISION_LAYOUT
    assert isinstance(vgg.avgpool, torch.nn.AdaptiveAvgPool2d) and vgg.avgpool.output_size == (7, 7)


def test_weights_file_is_small_and_loads_as_vgg16(weights):
    assert weights[0].stat().st_size < 5 << 20
    vgg = load_vgg16(weights[0])
    expected = small_state_dict(0)
    for key, value in vgg.state_dict().items():
        assert value.is_contiguous() and value.dtype == torch.float32 and value.device.type == "cpu"
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_encode_with_vgg16_weights_file(weights, images, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # it would not import beside our torch
    refs = ["0.jpg", None, "1.jpg", "broken.jpg", "2.jpg"]
    out = encode_images(refs, images, model="vgg16", weights=weights[0], batch_size=2, cache_dir=tmp_path / "cache")
    assert out.vectors.shape == (5, 4096) and out.info["raw_dim"] == 4096 and out.info["model"] == "vgg16"
    assert out.mask.tolist() == [True, False, True, False, True]
    assert np.isfinite(out.vectors).all() and not out.vectors[~out.mask].any()
    assert (out.vectors[out.mask] >= 0).all() and (out.vectors[out.mask] > 0).any(axis=1).all()  # fc7 after ReLU
    assert out.info["missing_by_reason"] == {"no_ref": 1, "undecodable": 1}

    # The file's weights are the ones used: fc7 of the network loaded from it, by hand ...
    spec = resolve_image_model("vgg16", weights[0])
    from cemg.features.image import load_rgb, preprocess

    pixels = torch.from_numpy(np.stack([preprocess(load_rgb((images / f"{i}.jpg").read_bytes()), spec)
                                        for i in range(3)]))
    with torch.no_grad():
        by_hand = load_vgg16(weights[0]).eval().fc7(pixels).numpy()
    np.testing.assert_allclose(out.vectors[out.mask], by_hand, rtol=1e-4, atol=1e-5)
    # ... and another file gives other vectors, in a cache folder of its own (keyed by the file's hash).
    other = encode_images(refs, images, model="vgg16", weights=weights[1], cache_dir=tmp_path / "cache")
    assert other.info["encoded"] == 3 and other.info["from_cache"] == 0
    assert not np.allclose(other.vectors[out.mask], out.vectors[out.mask], rtol=1e-2)
    again = encode_images(refs, images, model="auto", weights=weights[0], cache_dir=tmp_path / "cache")
    assert again.info["model"] == "vgg16" and again.info["from_cache"] == 3
    np.testing.assert_array_equal(again.vectors, out.vectors)


@pytest.mark.parametrize("damage, message", [
    ("rename", r"Missing key\(s\) in state_dict: \"classifier\.6\.weight\""),
    ("reshape", r"size mismatch for classifier\.3\.weight"),
    ("not a dict", "not a state dict of tensors"),
    ("garbage", "not a readable torch state dict"),
])
def test_a_wrong_weights_file_is_named(tmp_path, images, damage, message):
    path = tmp_path / "weights.pth"
    state = {k: v for k, v in small_state_dict(0).items()}
    if damage == "rename":
        state["classifier.6.w"] = state.pop("classifier.6.weight")
    elif damage == "reshape":
        state["classifier.3.weight"] = torch.zeros(4096, 4000)
    if damage == "garbage":
        path.write_bytes(b"\x00 this is not a checkpoint")
    else:
        torch.save([1, 2] if damage == "not a dict" else state, path)
    with pytest.raises(EncoderUnavailable, match=message) as err:
        encode_images(["0.jpg"], images, model="vgg16", weights=path)
    assert str(err.value).startswith(f"{path}: ")
