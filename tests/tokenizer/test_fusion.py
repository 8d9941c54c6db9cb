import math

import pytest
import torch

from cemg.tokenizer.fusion import CollaborativeGuidedFusion


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
