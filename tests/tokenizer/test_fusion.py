import math

import pytest
import torch

from cemg.tokenizer.fusion import (
    FUSIONS,
    CollaborativeGuidedFusion,
    ConcatFusion,
    ContentGuidedFusion,
    MeanFusion,
    build_fusion,
)


def _identity_fusion(d: int, **kw) -> CollaborativeGuidedFusion:
    fusion = CollaborativeGuidedFusion(d, d, **kw)
    with torch.no_grad():
        fusion.key.weight.copy_(torch.eye(d))
        fusion.query.weight.copy_(torch.eye(d))
    return fusion


def test_alphas_match_a_hand_computed_case():
    # d = 2, W_Q = W_K = I: q = e_c = (1, 0); k_v = v = (2, 0); k_t = t = (0, 3).
    # logits: q.k_v / sqrt(2) = 2 / sqrt(2) = sqrt(2), q.k_t = 0 -> alpha_v = e^sqrt2 / (e^sqrt2 + 1).
    fusion = _identity_fusion(2)
    v, t, e = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 0.0]])
    out = fusion(v, torch.tensor([True]), t, torch.tensor([True]), e)
    a_v = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1)
    a_t = 1 - a_v
    assert out.alphas[0].tolist() == pytest.approx([a_v, a_t], abs=1e-6)
    assert out.fused[0].tolist() == pytest.approx([2 * a_v, 3 * a_t, 1.0, 0.0], abs=1e-6)


def test_missing_modality_is_masked_not_zero_filled():
    fusion = _identity_fusion(2)
    # Item 0 lacks an image; its image row holds garbage that must not leak into the output.
    v = torch.tensor([[float("nan"), 1e6], [1.0, 1.0]])
    t = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    e = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    out = fusion(v, torch.tensor([False, True]), t, torch.tensor([True, True]), e)
    assert out.alphas[0, 0].item() == 0.0
    assert out.alphas[0, 1].item() == 1.0
    assert torch.equal(out.fused[0, :2], t[0])
    # A zero-filled image would have taken part in the softmax: q.k = 0 -> weight 1/2 for text.
    assert 0 < out.alphas[1, 0].item() < 1 and torch.isfinite(out.fused).all()


def test_item_without_any_content_gets_zero_content_and_finite_gradients():
    fusion = CollaborativeGuidedFusion(3, 4)
    v, t = torch.randn(2, 3), torch.randn(2, 3)
    e = torch.randn(2, 4, requires_grad=True)
    out = fusion(v, torch.tensor([False, True]), t, torch.tensor([False, True]), e)
    assert torch.equal(out.alphas[0], torch.zeros(2))
    assert torch.equal(out.fused[0, :3], torch.zeros(3))
    assert torch.equal(out.fused[0, 3:], e[0].detach())
    out.fused.sum().backward()
    assert torch.isfinite(e.grad).all()
    assert torch.isfinite(fusion.query.weight.grad).all() and fusion.query.weight.grad.abs().sum() > 0
    assert fusion.key.weight.grad.abs().sum() > 0


def test_alphas_sum_to_one_where_some_modality_is_present():
    torch.manual_seed(0)
    fusion = CollaborativeGuidedFusion(8, 6)
    n = 50
    image_mask, text_mask = torch.rand(n) > 0.3, torch.rand(n) > 0.3
    out = fusion(torch.randn(n, 8), image_mask, torch.randn(n, 8), text_mask, torch.randn(n, 6))
    some = image_mask | text_mask
    assert torch.allclose(out.alphas[some].sum(1), torch.ones(int(some.sum())))
    assert (out.alphas[~image_mask, 0] == 0).all() and (out.alphas[~text_mask, 1] == 0).all()


def test_ablation_switches_set_the_output_dimension():
    d, dc, n = 8, 6, 5
    v, t, e, m = torch.randn(n, d), torch.randn(n, d), torch.randn(n, dc), torch.ones(n, dtype=torch.bool)

    full = CollaborativeGuidedFusion(d, dc)
    assert full.out_dim == d + dc and full(v, m, t, m, e).fused.shape == (n, d + dc)

    # Without collab: a learned query vector, content part only.
    no_collab = CollaborativeGuidedFusion(d, None)
    out = no_collab(v, m, t, m, None)
    assert no_collab.out_dim == d and out.fused.shape == (n, d)
    assert not hasattr(no_collab, "query") and no_collab.query_vector.shape == (d,)

    # Without image: text gets weight 1, dimension unchanged.
    no_image = CollaborativeGuidedFusion(d, dc, use_image=False)
    out = no_image(v, m, t, m, e)
    assert no_image.out_dim == d + dc
    assert torch.equal(out.alphas[:, 1], torch.ones(n)) and torch.equal(out.fused[:, :d], t)

    no_text = CollaborativeGuidedFusion(d, dc, use_text=False)
    assert torch.equal(no_text(v, m, None, None, e).fused[:, :d], v)

    collab_only = CollaborativeGuidedFusion(d, dc, use_image=False, use_text=False)
    assert collab_only.out_dim == dc and torch.equal(collab_only(None, None, None, None, e).fused, e)

    with pytest.raises(ValueError, match="at least one"):
        CollaborativeGuidedFusion(d, None, use_image=False, use_text=False)
    with pytest.raises(ValueError, match="collab"):
        full(v, m, t, m, None)


# --- variants (tokenizer.fusion) -------------------------------------------------------------------


def _inputs(n=6, d=4, dc=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    v, t, e = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(n, dc, generator=g)
    # items: both, image only, text only, neither, both, both
    image_mask = torch.tensor([True, True, False, False, True, True])[:n]
    text_mask = torch.tensor([True, False, True, False, True, True])[:n]
    return v, image_mask, t, text_mask, e


@pytest.mark.parametrize("kind", FUSIONS)
@pytest.mark.parametrize("collab, use_image, use_text", [
    (True, True, True), (False, True, True), (True, False, True), (True, True, False), (False, False, True),
    (True, False, False),
])
def test_every_variant_respects_switches_and_masks(kind, collab, use_image, use_text):
    d, dc = 4, 3
    v, im, t, tm, e = _inputs(d=d, dc=dc)
    fusion = build_fusion(kind, d, dc if collab else None, use_image, use_text)
    # Garbage in the rows of missing modalities must not reach the output.
    v_bad, t_bad = v.masked_fill(~im[:, None], float("nan")), t.masked_fill(~tm[:, None], 1e6)
    out = fusion(v_bad if use_image else None, im, t_bad if use_text else None, tm, e if collab else None)
    used = [use_image, use_text].count(True)
    content_dim = (used * d if kind == "concat" else d) if used else 0
    assert fusion.out_dim == content_dim + (dc if collab else 0)
    assert out.fused.shape == (6, fusion.out_dim) and torch.isfinite(out.fused).all()
    assert out.alphas.shape == (6, 2)
    present = torch.stack([im & use_image, tm & use_text], dim=1)
    assert (out.alphas[~present] == 0).all()
    some = present.any(dim=1)
    assert torch.allclose(out.alphas[some].sum(1), torch.ones(int(some.sum())))
    assert (out.alphas[~some] == 0).all() and (out.fused[~some, :content_dim] == 0).all()
    if collab:
        assert torch.equal(out.fused[:, content_dim:], e)  # e_c is appended as it is
    # the same item without the garbage gives the same output
    clean = fusion(v if use_image else None, im, t if use_text else None, tm, e if collab else None)
    assert torch.equal(clean.fused, out.fused) and torch.equal(clean.alphas, out.alphas)


def test_concat_puts_the_blocks_side_by_side_with_zeros_for_a_missing_modality():
    v, im, t, tm, e = _inputs()
    out = ConcatFusion(4, 3)(v, im, t, tm, e)
    assert out.fused.shape == (6, 4 + 4 + 3)
    assert torch.equal(out.fused, torch.cat([v * im[:, None], t * tm[:, None], e], dim=1))
    assert out.alphas.tolist() == [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5], [0.5, 0.5]]
    no_image = ConcatFusion(4, 3, use_image=False)(None, None, t, tm, e)
    assert torch.equal(no_image.fused, torch.cat([t * tm[:, None], e], dim=1))
    assert list(ConcatFusion(4, 3).parameters()) == []


def test_mean_weights_are_exactly_one_half_or_one():
    v, im, t, tm, e = _inputs()
    fusion = MeanFusion(4, 3)
    out = fusion(v, im, t, tm, e)
    assert out.alphas.tolist() == [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5], [0.5, 0.5]]
    assert torch.allclose(out.fused[0, :4], (v[0] + t[0]) / 2)
    assert torch.equal(out.fused[1, :4], v[1]) and torch.equal(out.fused[2, :4], t[2])
    assert list(fusion.parameters()) == []


def test_content_attention_query_ignores_the_collaborative_embedding():
    torch.manual_seed(0)
    v, im, t, tm, e = _inputs()
    fusion = ContentGuidedFusion(4, 3)
    assert fusion.query.in_features == 8  # W_Q over [v; t]
    out = fusion(v, im, t, tm, e)
    other = fusion(v, im, t, tm, torch.randn(6, 3) * 10)
    assert torch.equal(out.alphas, other.alphas) and torch.equal(out.fused[:, :4], other.fused[:, :4])
    both = im & tm
    assert ((out.alphas[both] > 0) & (out.alphas[both] < 1)).all()  # softmax weights, not a fixed split
    # The weights follow the content: a hand-computed case with W_Q = [I I], W_K = I, d = 2:
    # v = (1, 0), t = (0, 2): q = v + t = (1, 2); logits q.v / sqrt2 = 1 / sqrt2, q.t / sqrt2 = 4 / sqrt2.
    small = ContentGuidedFusion(2, None)
    with torch.no_grad():
        small.key.weight.copy_(torch.eye(2))
        small.query.weight.copy_(torch.cat([torch.eye(2), torch.eye(2)], dim=1))
    a = small(torch.tensor([[1.0, 0.0]]), None, torch.tensor([[0.0, 2.0]]), None, None).alphas[0]
    a_v = 1 / (1 + math.exp(3 / math.sqrt(2)))
    assert a.tolist() == pytest.approx([a_v, 1 - a_v], abs=1e-6)
    # W_Q and W_K learn from the loss; without text the query reads the image block alone
    out.fused.sum().backward()
    assert fusion.query.weight.grad.abs().sum() > 0 and fusion.key.weight.grad.abs().sum() > 0
    assert ContentGuidedFusion(4, 3, use_text=False).query.in_features == 4


def test_attention_variant_is_the_papers_module_and_unknown_names_are_refused():
    assert type(build_fusion("attention", 4, 3)) is CollaborativeGuidedFusion
    with pytest.raises(ValueError, match="tokenizer.fusion.*'sum'"):
        build_fusion("sum", 4, 3)
