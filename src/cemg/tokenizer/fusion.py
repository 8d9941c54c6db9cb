"""Multimodal fusion: the item's image v, text t and collaborative e_c become one vector for the
RQ-VAE (paper 4.2.2.3), in the paper's form or one of three variants (`tokenizer.fusion`).

The paper's collaborative-guided attention (`CollaborativeGuidedFusion`, "attention", the default):
the item's collaborative embedding e_c asks which content modality to trust for this item:

    q = W_Q e_c,   k_m = W_K x_m  (x_m in {v (image), t (text)}, one W_K shared by both)
    alpha_m = softmax_m( q . k_m / sqrt(d) )
    fused = [ alpha_v v + alpha_t t ; e_c ]          # (n, 2d)

Variants, to measure what the attention and its collaborative query add (issue 12):
- "content_attention" (`ContentGuidedFusion`): the same attention, but the item's own content
  forms the query, q = W_Q [v; t], so e_c enters the fused vector without choosing the weights.
- "mean" (`MeanFusion`): alpha_v = alpha_t = 1/2 (1 for an item's only modality); no parameters.
- "concat" (`ConcatFusion`): fused = [v; t; e_c], no mixing and no parameters. Its alphas are the
  same fixed equal split as "mean": both blocks enter at the unit RMS scale the tokenizer gives
  every modality, so each present one carries an equal, unlearned share. (NaN would say "no
  weights" too, but the fusion weights reach JSON answers, the HTTP service and the report's
  histogram, none of which can hold it.)

Missing modalities. An item without an image (or without text) has its logit set to -inf before
the softmax, so its alpha is exactly 0 and the other modality gets exactly 1; the missing row's
values are never read (a zero-filled vector would still take part in the softmax and dilute the
present modality). An item with neither modality gets alphas (0, 0) and a zero content half; its
identity then rests on e_c alone. In "concat" a missing modality is a zero block.

Ablations (paper 5.4), switched by `use_collab` / `use_image` / `use_text`:
- without collab: there is no e_c to form the query, so one learned query vector q (shared by all
  items) replaces W_Q e_c. The weights then still depend on each item's keys, which keeps the
  attention mechanism and isolates what the collaborative signal adds; uniform weights would remove
  the fusion layer as well ("mean" is that case). The output is the content part only, dim d
  ("content_attention" keeps its query from content).
- without image / without text: that modality counts as missing for every item, so the other one
  gets alpha 1 (or 0 where it too is absent). Output dim stays 2d (d without collab); "concat"
  drops the modality's block instead.
- without both content modalities: the output is e_c alone, dim d_c; the alphas are all zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

MODALITIES = ("image", "text")  # column order of `FusionOutput.alphas`
FUSIONS = ("attention", "concat", "content_attention", "mean")  # tokenizer.fusion


@dataclass
class FusionOutput:
    fused: Tensor  # (n, out_dim)
    alphas: Tensor  # (n, 2): weight of image, text; rows sum to 1, or to 0 when both are missing


class Fusion(nn.Module):
    """What every variant shares: the switches, the masking of missing modalities, the output."""

    def __init__(self, content_dim: int, collab_dim: int | None, use_image: bool = True, use_text: bool = True) -> None:
        """`content_dim` is d of the text and image vectors (equal: they are summed); `collab_dim`
        is d_c of e_c, or None for the ablation without collaborative signal."""
        super().__init__()
        if collab_dim is None and not (use_image or use_text):
            raise ValueError("fusion needs at least one of collab, image or text")
        self.content_dim = content_dim
        self.collab_dim = collab_dim
        self.use_image = use_image
        self.use_text = use_text

    @property
    def has_content(self) -> bool:
        return self.use_image or self.use_text

    @property
    def used(self) -> list[int]:
        """Columns of the used content modalities in MODALITIES order."""
        return [i for i, used in enumerate((self.use_image, self.use_text)) if used]

    @property
    def content_out_dim(self) -> int:
        return self.content_dim if self.has_content else 0

    @property
    def out_dim(self) -> int:
        return self.content_out_dim + (self.collab_dim or 0)

    def weights(self, v_t: Tensor, present: Tensor, collab: Tensor | None) -> Tensor:
        """(n, 2) weights of image and text; zero where a modality is missing."""
        raise NotImplementedError

    def content(self, alphas: Tensor, v_t: Tensor) -> Tensor:
        return torch.einsum("nm,nmd->nd", alphas, v_t)  # (n, d)

    def forward(
        self,
        image: Tensor | None,
        image_mask: Tensor | None,
        text: Tensor | None,
        text_mask: Tensor | None,
        collab: Tensor | None,
    ) -> FusionOutput:
        """image/text: (n, d) or None (not encoded); masks: (n,) bool, False where the item lacks
        the modality; collab: (n, d_c), required exactly when the module was built with collab_dim."""
        if (collab is None) != (self.collab_dim is None):
            raise ValueError("collab embeddings must be given exactly when the fusion uses them")
        ref = next(x for x in (image, text, collab) if x is not None)
        n, device, dtype = ref.shape[0], ref.device, ref.dtype
        d = self.content_dim

        values, masks = [], []
        for used, x, mask in ((self.use_image, image, image_mask), (self.use_text, text, text_mask)):
            if used and x is not None:
                mask = torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask.bool()
                # Zero the rows of missing items so that nothing non-finite in them can leak through 0 * x.
                values.append(torch.where(mask[:, None], x, torch.zeros((), dtype=dtype, device=device)))
                masks.append(mask)
            else:
                values.append(torch.zeros(n, d, dtype=dtype, device=device))
                masks.append(torch.zeros(n, dtype=torch.bool, device=device))
        v_t = torch.stack(values, dim=1)  # (n, 2, d)
        present = torch.stack(masks, dim=1)  # (n, 2)

        if not self.has_content:
            return FusionOutput(collab, torch.zeros(n, 2, dtype=dtype, device=device))

        alphas = self.weights(v_t, present, collab)
        content = self.content(alphas, v_t)
        fused = content if collab is None else torch.cat([content, collab], dim=1)
        return FusionOutput(fused, alphas)


def _attention(q: Tensor, k: Tensor, present: Tensor) -> Tensor:
    """softmax over the present modalities of q . k_m / sqrt(d); q (n, d), k (n, 2, d)."""
    logits = torch.einsum("nd,nmd->nm", q, k) / math.sqrt(q.shape[1])
    logits = logits.masked_fill(~present, float("-inf"))
    # A row with no modality would be softmax(-inf, -inf) = NaN; give it finite logits and let
    # the mask below zero its weights.
    none = ~present.any(dim=1, keepdim=True)
    logits = logits.masked_fill(none, 0.0)
    return torch.softmax(logits, dim=1) * present


def _equal_split(present: Tensor, dtype: torch.dtype) -> Tensor:
    """1/2 each for two present modalities, 1 for the only one, 0 for none (exact in floating point)."""
    share = present.to(dtype)
    return share / share.sum(dim=1, keepdim=True).clamp(min=1)


class CollaborativeGuidedFusion(Fusion):
    """The paper's fusion ("attention"): the query is W_Q e_c."""

    def __init__(self, content_dim: int, collab_dim: int | None, use_image: bool = True, use_text: bool = True) -> None:
        super().__init__(content_dim, collab_dim, use_image, use_text)
        if self.has_content:
            self.key = nn.Linear(content_dim, content_dim, bias=False)  # W_K
            if collab_dim is not None:
                self.query = nn.Linear(collab_dim, content_dim, bias=False)  # W_Q
            else:
                self.query_vector = nn.Parameter(torch.randn(content_dim) / math.sqrt(content_dim))

    def weights(self, v_t: Tensor, present: Tensor, collab: Tensor | None) -> Tensor:
        n, _, d = v_t.shape
        q = self.query(collab) if collab is not None else self.query_vector.expand(n, d)  # (n, d)
        return _attention(q, self.key(v_t), present)


class ContentGuidedFusion(Fusion):
    """"content_attention": the attention form with the query W_Q [v; t] from the item's own content
    (a missing modality a zero block; a switched-off one left out), so e_c does not set the weights."""

    def __init__(self, content_dim: int, collab_dim: int | None, use_image: bool = True, use_text: bool = True) -> None:
        super().__init__(content_dim, collab_dim, use_image, use_text)
        if self.has_content:
            self.key = nn.Linear(content_dim, content_dim, bias=False)  # W_K
            self.query = nn.Linear(len(self.used) * content_dim, content_dim, bias=False)  # W_Q

    def weights(self, v_t: Tensor, present: Tensor, collab: Tensor | None) -> Tensor:
        q = self.query(v_t[:, self.used].flatten(1))  # (n, d)
        return _attention(q, self.key(v_t), present)


class MeanFusion(Fusion):
    """"mean": the present modalities averaged; no parameters."""

    def weights(self, v_t: Tensor, present: Tensor, collab: Tensor | None) -> Tensor:
        return _equal_split(present, v_t.dtype)


class ConcatFusion(Fusion):
    """"concat": [v; t; e_c] side by side (a missing modality a zero block); no parameters. The
    alphas are the fixed equal split (see the module docstring)."""

    @property
    def content_out_dim(self) -> int:
        return len(self.used) * self.content_dim

    def weights(self, v_t: Tensor, present: Tensor, collab: Tensor | None) -> Tensor:
        return _equal_split(present, v_t.dtype)

    def content(self, alphas: Tensor, v_t: Tensor) -> Tensor:
        return v_t[:, self.used].flatten(1)  # (n, len(used) * d)


_CLASSES: dict[str, type[Fusion]] = {
    "attention": CollaborativeGuidedFusion,
    "concat": ConcatFusion,
    "content_attention": ContentGuidedFusion,
    "mean": MeanFusion,
}


def build_fusion(
    kind: str, content_dim: int, collab_dim: int | None, use_image: bool = True, use_text: bool = True
) -> Fusion:
    """The fusion layer `tokenizer.fusion` names (one of FUSIONS)."""
    if kind not in _CLASSES:
        raise ValueError(f"tokenizer.fusion: unknown fusion {kind!r}; expected one of {', '.join(FUSIONS)}")
    return _CLASSES[kind](content_dim, collab_dim, use_image, use_text)
