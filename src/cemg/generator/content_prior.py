"""A content prior at inference (not in the paper): rank by the generator's log p(item | history) plus
`weight` x cosine(content of the item, content of the user's last item).

Why: on Beauty, the item whose text is nearest the last item's is often the next one, most of all
for items with few interactions, whose codes the generator rarely saw as targets; adding that
similarity to the generator's score, with a weight chosen on validation, raised validation NDCG@10
(docs/results.md, "Content prior"). The generator stays semantic: no parameter per item, and the
content vectors are the items' own (ItemFeatures.content_matrix), so an item added after training
(cemg.added_items) is covered by the content it brings.

Beam search ranks by a sum over code levels and cannot carry an item-level term, so the prior
re-ranks a candidate set per user: the beam's top `candidates` and the last item's `candidates`
nearest content neighbours, excluded items removed, each scored exactly
(CausalSemanticModel.pair_log_probs, the score beam search ranks by). With weight 0 that is the
beam's order, except where a content neighbour the (approximate) beam missed scores higher.

`image_weight` scales the image block of the content vector before the cosine: with unit text and
image blocks t, i the cosine is (cos_t + a^2 cos_i) / (1 + a^2) for items that have both. On Toys the
image's neighbours find next items the text's miss, but an even average gives up text hits for
them; a weight below 1 kept more of both (docs/results.md, "Toys: what each modality carries").

`popularity_adjustment` tau subtracts tau x log(1 + training interactions of the item) from every
candidate's score: logit adjustment for a long-tailed label distribution (Menon et al., ICLR 2021),
here over items. The generator learns which codes are frequent targets, and an item with few
interactions sits under codes it rarely saw as targets (docs/results.md, "Cold start: the ids encoded
coldness"); the adjustment gives such items back some of what that frequency took. An item added
after training counts 0 interactions. Off (0) unless the config sets it.

`cold_weight` c trusts the content more where the generator knows an item less: the cosine's weight
for an item with n training interactions is weight + c x 5 / (5 + n), so an item never seen (a new
one) gets weight + c, one with 5 interactions (the paper's cold-start bound) weight + c/2, a popular
one about weight. Unlike the popularity adjustment, which lifts every rare item alike, it lifts a
rare item by as much as its content resembles the last item's, the one signal such an item has.
Off (0) unless the config sets it.

`mixture` lambda (with `mixture_sharpness` beta) turns the sum into a mixture of two experts:

    p(item) = (1 - lambda) x softmax(log p + weight x cos) + lambda x softmax(beta x cos),

each softmax over the user's candidates. The sum above multiplies the generator's probability by
exp(weight x cos), so an item the generator gives little probability (a cold one: its codes were rarely
targets) stays low however near its content is; in the mixture, the content expert alone can
carry such an item into the list. On Beauty's validation users it raised NDCG@10 and cold-start
HR@10 together (docs/results.md, "Content prior as a mixture"). Off (0) unless the config sets it.

`new_item_share` pi (with `new_item_sharpness` beta) ranks items added after training
(cemg.added_items) as the other part of a two-part mixture, since the generator's log p of an item
it never saw as a target is no estimate of how likely it is: training taught it that such an
item's codes were never the next item's (docs/results.md, "New items without retraining"). The next
item is new with probability pi, and which new item follows a softmax of beta x cosine to the last
item over the added items (the content-only reference's order):

    trained item:  log(1 - pi) + (the score above)
    added item:    log pi + beta x cos(item, last) - log sum_{added j} exp(beta x cos(j, last))

Unlike a fixed boost, the added items share a mass of pi: when one of them is much nearer the last
item than the rest it takes most of it, and when none is near they split it and stay low. The
trained items' part keeps its own scale (log p plus the weighted cosine), so pi and beta are chosen
together on validation users of the new-item protocol (bench/new_item_share.py). Off (0): added
items are ranked like trained ones, with 0 training interactions.

`new_item_prefix_levels` L adds the generator's log p of an added item's first L codes to its
logit in that softmax (a product of the two experts: p(item) proportional to p(first L codes | history)
x exp(beta x cos)). An added item's deeper codes form prefixes no training target had (on Beauty
and Toys, two thirds to three quarters of the added items' first two codes and nearly all their
first three: bench/new_item_prefixes.py), so their probabilities say only "never seen"; its first
code is one the generator learned as a target, and it says which region of the catalogue the
history leads to, which the last item's content does not. 0 (the default): the cosine alone.

`new_item_gate` a (with `new_item_gate_sharpness` g) makes the share pi a user's own. The added items
are a share of the catalogue; a softmax of g x cos to the last item over every item the user may be
shown gives them a share of the last item's content neighbourhood. Where the added items hold more
of the neighbourhood than of the catalogue, the next item is more likely one of them (the prior
odds times a likelihood ratio, raised to a):

    logit(pi_user) = logit(pi) + a x [log (their share of the neighbourhood) - log (their share of the catalogue)]

so a user whose last item has near added items gives them more of the list, one whose neighbours
are all trained items less. 0 (the default): the same pi for every user.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from cemg.tokenizer.semantic_ids import SemanticIds

NEG_INF = float("-inf")
COLD_HALF = 5  # training interactions at which the cold weight's boost has halved (see above)


def _unit_rows(content: np.ndarray) -> torch.Tensor:
    content = np.asarray(content, dtype=np.float32)
    return torch.from_numpy(content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12))


class ContentPriorRecommender:
    """A trained causal generator (semantic mode) whose rankings take the content prior; the same
    recommend / with_catalogue surface as the generator itself."""

    def __init__(self, generator, content: np.ndarray, weight: float, candidates: int = 50,
                 column_scale: np.ndarray | None = None, train_counts: np.ndarray | None = None,
                 popularity_adjustment: float = 0.0, cold_weight: float = 0.0, new_item_share: float = 0.0,
                 new_item_sharpness: float = 20.0, n_trained: int | None = None, mixture: float = 0.0,
                 mixture_sharpness: float = 10.0, new_item_prefix_levels: int = 0, new_item_gate: float = 0.0,
                 new_item_gate_sharpness: float = 20.0):
        """`content` (items, c): ItemFeatures.content_matrix rows, as the items bring them;
        `column_scale` (c,): a factor per column applied before the rows are scaled to unit length
        (the image weight; None: all 1); `train_counts` (items,): training interactions per item,
        which `popularity_adjustment` and `cold_weight` need; `n_trained`: items 0..n_trained-1 are
        the trained ones, the rest were added (default: all trained)."""
        if not hasattr(getattr(generator, "model", None), "pair_log_probs"):
            raise ValueError("generator.content_prior needs the causal backbone (it scores given items exactly)")
        if len(content) != generator.n_items:
            raise ValueError(f"{len(content)} content vectors for a catalogue of {generator.n_items} items")
        if candidates < 1:
            raise ValueError(f"generator.content_prior.candidates must be at least 1, got {candidates}")
        self.generator = generator
        self.weight, self.candidates = float(weight), int(candidates)
        self.source = np.asarray(content, dtype=np.float32)  # unscaled: what added items extend
        self.column_scale = None if column_scale is None else np.asarray(column_scale, dtype=np.float32)
        if self.column_scale is not None and self.column_scale.shape != (self.source.shape[1],):
            raise ValueError(f"{self.column_scale.shape} column scales for content of width {self.source.shape[1]}")
        scaled = self.source if self.column_scale is None else self.source * self.column_scale
        self.content = _unit_rows(scaled).to(generator.device)
        self.popularity_adjustment, self.cold_weight = float(popularity_adjustment), float(cold_weight)
        self.train_counts = None if train_counts is None else np.asarray(train_counts, dtype=np.int64)
        for name, value in (("popularity_adjustment", self.popularity_adjustment), ("cold_weight", self.cold_weight)):
            if value < 0:
                raise ValueError(f"generator.content_prior.{name} must be >= 0, got {value}")
            if value and (self.train_counts is None or len(self.train_counts) != len(content)):
                raise ValueError(f"generator.content_prior.{name} needs the training interactions of "
                                 f"each of the {len(content)} items")
        self.new_item_share, self.new_item_sharpness = float(new_item_share), float(new_item_sharpness)
        self.mixture, self.mixture_sharpness = float(mixture), float(mixture_sharpness)
        for name, value in (("new_item_share", self.new_item_share), ("mixture", self.mixture)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"generator.content_prior.{name} must be in [0, 1), got {value}")
        self.new_item_gate, self.new_item_gate_sharpness = float(new_item_gate), float(new_item_gate_sharpness)
        for name, value in (("new_item_sharpness", self.new_item_sharpness), ("mixture_sharpness", self.mixture_sharpness),
                            ("new_item_gate", self.new_item_gate),
                            ("new_item_gate_sharpness", self.new_item_gate_sharpness)):
            if value < 0:
                raise ValueError(f"generator.content_prior.{name} must be >= 0, got {value}")
        self.new_item_prefix_levels = int(new_item_prefix_levels)
        if not 0 <= self.new_item_prefix_levels <= generator.model.levels:
            raise ValueError(f"generator.content_prior.new_item_prefix_levels must be in [0, "
                             f"{generator.model.levels}] (the ids' levels), got {new_item_prefix_levels}")
        self.n_trained = len(content) if n_trained is None else int(n_trained)
        if not 0 <= self.n_trained <= len(content):
            raise ValueError(f"{n_trained} trained items in a catalogue of {len(content)}")
        self.penalty = None if not self.popularity_adjustment else popularity_penalty(
            self.train_counts, self.popularity_adjustment).to(generator.device)
        # the cosine's weight: one number, or one per item with a cold weight
        self.item_weight = self.weight if not self.cold_weight else content_weights(
            self.train_counts, self.weight, self.cold_weight).to(generator.device)

    # What the API and evaluation read off a generator.
    @property
    def n_items(self) -> int:
        return self.generator.n_items

    @property
    def semantic_ids(self) -> SemanticIds:
        return self.generator.semantic_ids

    @property
    def device(self) -> torch.device:
        return self.generator.device

    @property
    def config(self):
        return self.generator.config

    @property
    def info(self) -> dict:
        prior = {"weight": self.weight, "candidates": self.candidates}
        if self.popularity_adjustment:
            prior["popularity_adjustment"] = self.popularity_adjustment
        if self.cold_weight:
            prior["cold_weight"] = self.cold_weight
        if self.mixture:
            prior["mixture"], prior["mixture_sharpness"] = self.mixture, self.mixture_sharpness
        if self.new_item_share:
            prior["new_item_share"], prior["new_item_sharpness"] = self.new_item_share, self.new_item_sharpness
            if self.new_item_prefix_levels:
                prior["new_item_prefix_levels"] = self.new_item_prefix_levels
            if self.new_item_gate:
                prior["new_item_gate"], prior["new_item_gate_sharpness"] = (self.new_item_gate,
                                                                            self.new_item_gate_sharpness)
        scales = set() if self.column_scale is None else {float(x) for x in self.column_scale} - {1.0}
        if len(scales) == 1:  # the only scaled block is the image's (content_column_scale)
            prior["image_weight"] = scales.pop()
        return {**(self.generator.info or {}), "content_prior": prior}

    def with_catalogue(self, semantic_ids: SemanticIds, added_content: np.ndarray | None = None):
        n_added = semantic_ids.n_items - self.n_items
        if added_content is None or len(added_content) != n_added or (
                n_added and added_content.shape[1] != self.content.shape[1]):
            raise ValueError(f"the content prior needs the {n_added} added items' content vectors of width "
                             f"{self.content.shape[1]} (items added before content was kept: add them again)")
        content = np.concatenate([self.source, np.asarray(added_content, np.float32)])
        counts = None if self.train_counts is None else np.concatenate([self.train_counts, np.zeros(n_added, np.int64)])
        return ContentPriorRecommender(self.generator.with_catalogue(semantic_ids, added_content), content,
                                       candidates=self.candidates, column_scale=self.column_scale,
                                       train_counts=counts, n_trained=self.n_trained, **self._ranking())

    # The settings that act at ranking time only: replace() changes them without recomputing anything else.
    RANKING = ("weight", "popularity_adjustment", "cold_weight", "mixture", "mixture_sharpness", "new_item_share",
               "new_item_sharpness", "new_item_prefix_levels", "new_item_gate", "new_item_gate_sharpness")

    def replace(self, **changes: float | int) -> ContentPriorRecommender:
        """The same generator, content and candidates under other ranking settings (RANKING)."""
        unknown = set(changes) - set(self.RANKING)
        if unknown:
            raise ValueError(f"not a ranking setting of the content prior: {', '.join(sorted(unknown))}")
        return ContentPriorRecommender(self.generator, self.source, candidates=self.candidates,
                                       column_scale=self.column_scale, train_counts=self.train_counts,
                                       n_trained=self.n_trained, **{**self._ranking(), **changes})

    def _ranking(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.RANKING}

    @torch.no_grad()
    def recommend_with_scores(
        self, histories: Sequence[np.ndarray], k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items (n, k), scores (n, k)) best first, -1 / -inf padded; a score is log p + weight x cos
        (the weight per item with a cold weight, minus the popularity penalty when set)."""
        n = len(histories)
        beam_items, _ = self.generator.recommend_with_scores(histories, max(k, self.candidates), exclude)
        items_out = np.full((n, k), -1, dtype=np.int64)
        scores_out = np.full((n, k), NEG_INF, dtype=np.float32)
        batch = self.generator.config.eval_batch_size
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            items, scores = self._rerank(histories[lo:hi], beam_items[lo:hi], None if exclude is None else exclude[lo:hi], k)
            items_out[lo:hi], scores_out[lo:hi] = items, scores
        return items_out, scores_out

    def recommend(self, histories: Sequence[np.ndarray], k: int, exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
        return self.recommend_with_scores(histories, k, exclude)[0]

    def _rerank(self, histories, beam_items: np.ndarray, exclude, k: int) -> tuple[np.ndarray, np.ndarray]:
        hidden = self.generator.last_states(histories)  # once: the candidates and the added items read it
        near = self.last_item_similarity(histories, exclude)  # once: the candidates and the gate read it
        pool, log_p, cosine = self.candidates_of(histories, beam_items, exclude, hidden, near)
        scores = prior_scores(pool, log_p, cosine, self.item_weight, self.penalty, self.mixture, self.mixture_sharpness)
        if not self.new_item_share or self.n_trained == self.n_items:
            return top_k(pool, scores, k)
        return rank_with_new_items(pool, scores, k, self.new_item_logits(histories, exclude, hidden), self.n_trained,
                                   self.new_item_shares(histories, exclude, near))

    def new_item_cosines(self, histories, exclude) -> torch.Tensor:
        """(users, added items) cosine of each added item to the user's last item; -inf where
        excluded, 0 for a user without history (the new-item part then spreads evenly)."""
        device = self.device
        last = torch.tensor([int(h[-1]) if len(h) else -1 for h in histories], device=device)
        cosine = self.content[last.clamp(min=0)] @ self.content[self.n_trained:].T
        cosine[last < 0] = 0.0
        for row, excluded in enumerate(exclude if exclude is not None else []):
            added = np.asarray(excluded, np.int64)
            added = added[added >= self.n_trained] - self.n_trained
            cosine[row, torch.as_tensor(added, device=device)] = NEG_INF
        return cosine

    def new_item_shares(self, histories, exclude, near: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> float | torch.Tensor:
        """new_item_share, or with new_item_gate each user's own (users,) (module docstring). `near`:
        last_item_similarity(histories, exclude), where the caller has it already."""
        if not self.new_item_gate:
            return self.new_item_share
        return gated_shares(self.new_item_share, self.new_item_gate,
                            self.neighbourhood_log_ratio(near or self.last_item_similarity(histories, exclude)))

    def neighbourhood_log_ratio(self, near: tuple[torch.Tensor, torch.Tensor], sharpness: float | None = None
                                ) -> torch.Tensor:
        """(users,) log of the added items' share of a softmax of `sharpness` (default
        new_item_gate_sharpness) x cosine to the last item, over the items the user may be shown,
        minus log of their share of those items (0 for a user without history); -inf where every
        added item is excluded. `near`: last_item_similarity(histories, exclude)."""
        similarity, blocked = near
        sharpness = self.new_item_gate_sharpness if sharpness is None else sharpness
        logits = (sharpness * similarity).masked_fill(blocked, NEG_INF)
        shown = ~blocked
        added = slice(self.n_trained, None)
        neighbourhood = torch.logsumexp(logits[:, added], dim=1) - torch.logsumexp(logits, dim=1)
        catalogue = shown[:, added].sum(dim=1).log() - shown.sum(dim=1).log()
        return (neighbourhood - catalogue).masked_fill(catalogue == NEG_INF, NEG_INF)

    def new_item_prefix_log_probs(self, hidden: torch.Tensor, levels: int) -> torch.Tensor:
        """(users, added items) the generator's log p of each added item's first `levels` codes, from
        the users' last states (generator.last_states)."""
        added = torch.arange(self.n_trained, self.n_items, device=self.device)
        return self.generator.model.pair_log_probs(hidden, added.expand(len(hidden), -1), self.generator.tree,
                                                   levels=levels)

    def new_item_logits(self, histories, exclude, hidden: torch.Tensor) -> torch.Tensor:
        """(users, added items) what the added items' part takes a softmax of (module docstring):
        new_item_sharpness x cosine, plus the log p of the first new_item_prefix_levels codes; -inf
        where excluded. `hidden`: the users' last states."""
        logits = self.new_item_sharpness * self.new_item_cosines(histories, exclude)
        levels = self.new_item_prefix_levels
        return logits + self.new_item_prefix_log_probs(hidden, levels) if levels else logits

    def last_item_similarity(self, histories, exclude) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarity, blocked), each (users, items): every item's cosine to the user's last item (0
        for a user without history: no prior, and no neighbours) and whether `exclude` holds it."""
        device = self.device
        last = torch.tensor([int(h[-1]) if len(h) else -1 for h in histories], device=device)
        similarity = self.content[last.clamp(min=0)] @ self.content.T
        similarity[last < 0] = 0.0
        blocked = torch.zeros_like(similarity, dtype=torch.bool)
        for row, excluded in enumerate(exclude if exclude is not None else []):
            blocked[row, torch.as_tensor(np.asarray(excluded, np.int64), device=device)] = True
        return similarity, blocked

    def candidates_of(self, histories, beam_items: np.ndarray, exclude, hidden: torch.Tensor | None = None,
                      near: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
        """(pool, log_p, cos), each (users, P): the users' candidates (-1: none), their exact log p
        and their cosine to the last item; what every weight combines (rank_candidates). `hidden`
        (the users' last states) and `near` (last_item_similarity), where the caller has them already."""
        device = self.device
        last = torch.tensor([int(h[-1]) if len(h) else -1 for h in histories], device=device)
        similarity, blocked = near or self.last_item_similarity(histories, exclude)
        neighbour_score, neighbours = similarity.masked_fill(blocked, NEG_INF).topk(min(self.candidates, self.n_items),
                                                                                   dim=1)
        neighbours[(neighbour_score == NEG_INF) | (last < 0)[:, None]] = -1
        pool = torch.cat([torch.from_numpy(np.asarray(beam_items)).to(device), neighbours], dim=1)
        pool, _ = pool.sort(dim=1)
        pool[:, 1:][pool[:, 1:] == pool[:, :-1]] = -1  # each candidate once
        hidden = self.generator.last_states(histories) if hidden is None else hidden
        log_p = self.generator.model.pair_log_probs(hidden, pool.clamp(min=0), self.generator.tree)
        return pool, log_p.masked_fill(pool < 0, NEG_INF), similarity.gather(1, pool.clamp(min=0))


def popularity_penalty(train_counts: np.ndarray, adjustment: float) -> torch.Tensor:
    """(items,) adjustment x log(1 + training interactions): what the popularity adjustment subtracts."""
    return adjustment * torch.log1p(torch.from_numpy(np.asarray(train_counts, dtype=np.int64)).float())


def content_weights(train_counts: np.ndarray, weight: float, cold_weight: float) -> torch.Tensor:
    """(items,) weight + cold_weight x COLD_HALF / (COLD_HALF + training interactions): the cosine's
    weight per item under a cold weight."""
    counts = torch.from_numpy(np.asarray(train_counts, dtype=np.int64)).float()
    return weight + cold_weight * COLD_HALF / (COLD_HALF + counts)


def candidate_scores(pool: torch.Tensor, log_p: torch.Tensor, cosine: torch.Tensor, weight: float | torch.Tensor,
                     penalty: torch.Tensor | None = None) -> torch.Tensor:
    """log_p + weight x cosine (minus `penalty`, per item, when given) of each candidate. `weight`:
    one number, or one per item (content_weights)."""
    if penalty is not None:
        log_p = log_p - penalty[pool.clamp(min=0)]
    if isinstance(weight, torch.Tensor):
        weight = weight[pool.clamp(min=0)]
    return log_p + weight * cosine


def prior_scores(pool: torch.Tensor, log_p: torch.Tensor, cosine: torch.Tensor, weight: float | torch.Tensor,
                 penalty: torch.Tensor | None = None, mixture: float = 0.0, sharpness: float = 10.0) -> torch.Tensor:
    """What the prior ranks the candidates by: candidate_scores, or with `mixture` lambda > 0 the log of
    (1 - lambda) x softmax(candidate_scores) + lambda x softmax(sharpness x cosine), both softmaxes
    over the row's candidates (module docstring, "mixture")."""
    score = candidate_scores(pool, log_p, cosine, weight, penalty)
    if not mixture:
        return score
    empty = pool < 0
    generator_part = score.masked_fill(empty, NEG_INF).log_softmax(dim=1)
    content_part = (sharpness * cosine).masked_fill(empty, NEG_INF).log_softmax(dim=1)
    mixed = torch.logaddexp(generator_part + math.log1p(-mixture), content_part + math.log(mixture))
    return mixed.nan_to_num(nan=NEG_INF)  # a row without candidates: -inf - -inf


def rank_candidates(pool: torch.Tensor, log_p: torch.Tensor, cosine: torch.Tensor, weight: float | torch.Tensor,
                    k: int, penalty: torch.Tensor | None = None, mixture: float = 0.0,
                    sharpness: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """The top k of prior_scores per row: (items, scores) as numpy, -1 / -inf padded."""
    return top_k(pool, prior_scores(pool, log_p, cosine, weight, penalty, mixture, sharpness), k)


def gated_shares(share: float, gate: float, log_ratio: torch.Tensor) -> torch.Tensor:
    """(users,) each user's share of the added items: logit(share) + gate x log_ratio
    (ContentPriorRecommender.neighbourhood_log_ratio), back through the logistic."""
    return torch.sigmoid(math.log(share) - math.log1p(-share) + gate * log_ratio)


def rank_with_new_items(pool: torch.Tensor, scores: torch.Tensor, k: int, new_logits: torch.Tensor, n_trained: int,
                        share: float | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The top k of the new-item mixture (module docstring): the trained candidates of `pool` at
    log(1 - share) + their `scores` (prior_scores), and the k added items of highest `new_logits`
    ((users, added items), -inf where excluded; ContentPriorRecommender.new_item_logits) at
    log share + log softmax(new_logits). `share`: one for every user, or one per user (users,)."""
    if isinstance(share, torch.Tensor):
        log_share, log_rest = share.log()[:, None], torch.log1p(-share)[:, None]
    else:
        log_share, log_rest = math.log(share), math.log1p(-share)
    trained = scores.masked_fill(pool >= n_trained, NEG_INF)
    top_logit, top_new = new_logits.topk(min(k, new_logits.shape[1]), dim=1)
    new_score = log_share + top_logit - torch.logsumexp(new_logits, dim=1, keepdim=True)
    new_score = new_score.masked_fill(top_logit == NEG_INF, NEG_INF)  # every added item excluded: nan otherwise
    items = torch.cat([pool, top_new + n_trained], dim=1)
    return top_k(items, torch.cat([trained + log_rest, new_score], dim=1), k)


def top_k(pool: torch.Tensor, score: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best-scored items of each row of `pool`: (items, scores) as numpy, -1 / -inf padded."""
    top_score, top = score.topk(min(k, score.shape[1]), dim=1)
    items = pool.gather(1, top).masked_fill(top_score == NEG_INF, -1)
    b = len(pool)
    out_items = np.full((b, k), -1, dtype=np.int64)
    out_scores = np.full((b, k), NEG_INF, dtype=np.float32)
    out_items[:, : items.shape[1]] = items.cpu().numpy()
    out_scores[:, : items.shape[1]] = top_score.float().cpu().numpy()
    return out_items, out_scores


def with_content_prior(generator, cfg, features, train_counts: np.ndarray | None = None):
    """`generator` as `cfg.generator.content_prior` asks (unchanged at weight 0); `features`: the run's
    ItemFeatures, read over the modalities the tokenizer uses; `train_counts`: training interactions
    per item (SplitDataset.train_item_counts), needed with a popularity adjustment or a cold weight."""
    prior = cfg.generator.content_prior
    if not (prior.weight or prior.mixture or prior.new_item_share):
        return generator
    content = features.content_matrix(cfg.tokenizer.content_modalities)
    return ContentPriorRecommender(generator, content, prior.weight, prior.candidates,
                                   content_column_scale(features, cfg.tokenizer.content_modalities, prior.image_weight),
                                   train_counts, prior.popularity_adjustment, prior.cold_weight,
                                   prior.new_item_share, prior.new_item_sharpness, mixture=prior.mixture,
                                   mixture_sharpness=prior.mixture_sharpness,
                                   new_item_prefix_levels=prior.new_item_prefix_levels,
                                   new_item_gate=prior.new_item_gate,
                                   new_item_gate_sharpness=prior.new_item_gate_sharpness)


def content_column_scale(features, modalities, image_weight: float) -> np.ndarray | None:
    """Per column of features.content_matrix(modalities): `image_weight` on the image block, 1 on
    the text's; None when that changes nothing."""
    if image_weight == 1.0 or "image" not in modalities or features.image is None:
        return None
    text_width = features.text.shape[1] if "text" in modalities and features.text is not None else 0
    # content_matrix puts the text block first and the image block last
    return np.concatenate([np.ones(text_width, np.float32), np.full(features.image.shape[1], image_weight, np.float32)])
