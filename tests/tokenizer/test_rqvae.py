import math

import pytest
import torch

from cemg.tokenizer.rqvae import RQVAE, ResidualQuantizer


def _initialised(rq: ResidualQuantizer, z: torch.Tensor) -> ResidualQuantizer:
    rq.train()
    with torch.no_grad():
        rq(z)  # k-means init of every level on the residuals left by the previous one
    return rq.eval()


def test_each_level_reduces_the_quantisation_error():
    torch.manual_seed(0)
    z = torch.randn(600, 8)
    rq = _initialised(ResidualQuantizer(8, levels=4, codebook_size=16, beta=0.25, gamma=0.0), z)
    errors = rq(z).level_errors.tolist()
    total = (z**2).sum(1).mean().item()
    assert errors[0] < total
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors


def test_quantized_is_the_sum_of_the_chosen_codes_with_straight_through_gradient():
    torch.manual_seed(0)
    z0 = torch.randn(200, 4)
    rq = _initialised(ResidualQuantizer(4, levels=3, codebook_size=8, beta=0.25, gamma=0.0), z0)
    out = rq(z0)
    assert out.codes.shape == (200, 3) and out.codes.dtype == torch.int64
    assert torch.allclose(out.quantized, rq.lookup(out.codes), atol=1e-5)

    z = z0.clone().requires_grad_(True)
    rq.train()
    out = rq(z)
    (out.quantized * torch.arange(4.0)).sum().backward()
    # Straight-through once (not once per level): dL/dz is exactly the upstream gradient.
    assert torch.allclose(z.grad, torch.arange(4.0).expand(200, 4))


def test_training_losses_commitment_and_diversity():
    torch.manual_seed(0)
    K = 16
    z = torch.randn(300, 6, requires_grad=True)
    rq = ResidualQuantizer(6, levels=2, codebook_size=K, beta=0.5, gamma=0.2).train()
    out = rq(z)
    assert (out.commitment > 0).all()
    # Negative entropy of a distribution over K codes lies in [-log K, 0].
    assert ((out.diversity >= -math.log(K) - 1e-5) & (out.diversity <= 0)).all()
    assert out.loss.item() == pytest.approx(0.5 * out.commitment.sum().item() + 0.2 * out.diversity.sum().item(), rel=1e-4)
    out.loss.backward()
    assert z.grad.abs().sum() > 0
    rq.eval()
    assert rq(z).loss.item() == 0.0


def test_relative_diversity_ignores_the_latent_scale():
    torch.manual_seed(0)
    z = torch.randn(400, 5)
    values = []
    for scale in (1.0, 50.0):
        torch.manual_seed(1)
        rq = _initialised(ResidualQuantizer(5, levels=2, codebook_size=8, beta=0.0, gamma=1.0), z * scale)
        values.append(rq.train()(z * scale).diversity)
    assert torch.allclose(values[0], values[1], atol=1e-4)


def test_dead_codes_are_reseeded_from_current_residuals():
    torch.manual_seed(0)
    rq = ResidualQuantizer(2, levels=1, codebook_size=8, beta=0.25, gamma=0.0, kmeans_init=False, dead_code_threshold=1.0)
    with torch.no_grad():
        rq.layers[0]._codebook.embed.fill_(100.0)  # every code far from the data: all but one unused
    z = torch.randn(256, 2)
    rq.train()
    for _ in range(5):
        rq(z)
    rq.eval()
    assert rq(z).codes.unique().numel() > 4
    assert rq.codebooks.abs().max() < 10


def test_rqvae_learns_to_reconstruct():
    torch.manual_seed(0)
    x = torch.randn(256, 3) @ torch.randn(3, 12)  # rank-3 data in 12 dims
    model = RQVAE(12, 12, latent_dim=4, hidden_dims=[32], levels=3, codebook_size=16, beta=0.25, gamma=0.01)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(150):
        out = model(x)
        recon = ((out.recon - x) ** 2).mean()
        opt.zero_grad()
        (recon + out.quant.loss).backward()
        opt.step()
        losses.append(recon.item())
    assert losses[-1] < 0.5 * losses[0]
