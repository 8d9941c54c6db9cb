"""RQ-VAE (paper 4.2.3): MLP encoder, M residual codebooks of K codes, MLP decoder.

    z = Enc(x);  r_1 = z;  c_l = argmin_k ||r_l - e_l,k||;  r_{l+1} = r_l - e_l,c_l
    z_q = sum_l e_l,c_l;   x_hat = Dec(z + sg(z_q - z))                      # straight-through
    L = L_recon + beta * sum_l ||r_l - sg(e_l,c_l)||^2 + gamma * sum_l L_div,l

Each level is a `vector_quantize_pytorch.VectorQuantize`, which provides most of what the paper's
quantizer needs: the commitment term (weight beta), k-means initialisation of the codebook on the
first batch it sees, and dead-code expiry (a code whose EMA usage falls below a threshold is
re-seeded, every training step, from the current batch's residuals). The codebook itself follows an
exponential moving average of its assigned residuals, the VQ-VAE (van den Oord et al. 2017, app. A.1)
replacement for the codebook term ||sg(r) - e||^2, which is why that term does not appear in L.

Diversity. The paper's exact term did not survive in our copy. We use the negative entropy of the
batch's mean soft code assignment per level (lowest when the batch spreads evenly over the
codebook). The library has this term too, with soft assignments softmax(-T * ||r - e||) at a fixed
temperature T; but the latent's scale is free (the decoder undoes any rescaling), so a fixed T means
a different sharpness from run to run and during training. Our default ("relative") divides the
squared distances by their spread over the codebook, softmax(-d^2 / (T * mean_n std_k d^2)), whose
value does not change when latent and codebook are rescaled together. On the sweep data (docs/results.md,
## Tokenizer) the library's form left more collisions than no diversity term at all, the relative
form far fewer; "absolute" keeps the library's form for that comparison.

Why the residual loop is written here instead of using the library's `ResidualVQ`: we need each
level's commitment and diversity terms separately (for logging and the report) and the error after
each level, which `ResidualVQ` folds into one number; and `ResidualVQ` sums each level's
straight-through output, which multiplies the decoder's gradient reaching the encoder by M, whereas
RQ-VAE (Lee et al. 2022) passes it through once, as done below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize


def _batch_mean(x: Tensor, across_processes: bool) -> Tensor:
    """Mean over the rows of x; under data-parallel training, over the rows of every process.

    The diversity term is a non-linear function of a batch mean, so the mean of the per-process
    terms is not the term of the whole batch. The sum is all-reduced with the differentiable
    all_reduce, whose backward sums the gradients of every process's copy of the term; DDP's
    averaging then divides that by the world size, giving the gradient of the global term.
    """
    if not across_processes:
        return x.mean(dim=0)
    from torch.distributed.nn.functional import all_reduce

    count = torch.tensor([float(len(x))], device=x.device)
    dist.all_reduce(count)
    return all_reduce(x.sum(dim=0)) / count


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (n, dim) sum of the chosen codes; gradients pass straight through to z
    codes: Tensor  # (n, levels) int64
    loss: Tensor  # scalar: beta * commitment + gamma * diversity, summed over levels (0 in eval mode)
    commitment: Tensor  # (levels,) unweighted, detached (0 in eval mode or when beta == 0)
    diversity: Tensor  # (levels,) unweighted negative entropy, detached (0 in eval mode or when gamma == 0)
    level_errors: Tensor  # (levels,) mean ||z - sum_{j<=l} e_j||^2 after each level, detached


class ResidualQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        levels: int,
        codebook_size: int,
        beta: float,
        gamma: float,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        diversity_form: str = "relative",
        diversity_temperature: float = 0.3,
    ) -> None:
        super().__init__()
        if diversity_form not in ("relative", "absolute"):
            raise ValueError(f"diversity_form must be 'relative' or 'absolute', not {diversity_form!r}")
        self.dim, self.levels, self.codebook_size = dim, levels, codebook_size
        self.gamma, self.diversity_form, self.diversity_temperature = gamma, diversity_form, diversity_temperature
        self.across_processes = False
        library_gamma = gamma if diversity_form == "absolute" else 0.0
        self.layers = nn.ModuleList(
            VectorQuantize(
                dim=dim,
                codebook_size=codebook_size,
                decay=ema_decay,
                kmeans_init=kmeans_init,
                kmeans_iters=kmeans_iters,
                threshold_ema_dead_code=dead_code_threshold,
                commitment_weight=beta,
                codebook_diversity_loss_weight=library_gamma,
                codebook_diversity_temperature=diversity_temperature,
                rotation_trick=False,  # plain straight-through estimator, as in the paper
                sync_codebook=False,
            )
            for _ in range(levels)
        )

    def share_batch_statistics(self, enabled: bool = True) -> None:
        """Under torchrun: compute the codebooks' EMA updates and the diversity term over the global
        batch (all ranks' rows), as one process would.

        The library does this only when built with sync_codebook, which also runs its distributed
        k-means init; ours runs beforehand on the same full sample on every rank, so only the EMA's
        all-reduce is switched on, after it.
        """
        self.across_processes = enabled
        for layer in self.layers:
            layer._codebook.all_reduce_fn = dist.all_reduce if enabled else (lambda *args, **kwargs: None)

    @property
    def codebooks(self) -> Tensor:
        """(levels, K, dim) current code vectors."""
        return torch.stack([layer._codebook.embed[0] for layer in self.layers])

    def forward(self, z: Tensor) -> QuantizerOutput:
        residual = z
        z_q = torch.zeros_like(z)
        codes, commit, div, errors = [], [], [], []
        loss = z.new_zeros(())
        for layer in self.layers:
            if self.training and self.gamma > 0 and self.diversity_form == "relative":
                # Before the layer's forward: in training mode it moves its codebook (EMA, dead codes).
                book = layer._codebook.embed[0].detach()  # (K, dim)
                d2 = (residual**2).sum(1, keepdim=True) - 2 * residual @ book.T + (book**2).sum(1)  # (n, K)
                scale = _batch_mean(d2.std(dim=1), self.across_processes).clamp_min(1e-12)  # not detached
                usage = _batch_mean(torch.softmax(-d2 / (self.diversity_temperature * scale), dim=1),
                                    self.across_processes)
                neg_entropy = (usage * torch.log(usage.clamp_min(1e-12))).sum()
            else:
                neg_entropy = None
            q, idx, layer_loss, parts = layer(residual, return_loss_breakdown=True)
            if neg_entropy is not None:
                layer_loss = layer_loss + self.gamma * neg_entropy
                parts = parts._replace(codebook_diversity=neg_entropy)
            q = q.detach()
            # residual keeps its graph to z, so each level's commitment term trains the encoder
            residual = residual - q
            z_q = z_q + q
            loss = loss + layer_loss
            codes.append(idx)
            commit.append(parts.commitment.detach())
            div.append(parts.codebook_diversity.detach())
            errors.append(((z.detach() - z_q) ** 2).sum(dim=-1).mean())
        return QuantizerOutput(
            quantized=z + (z_q - z).detach(),
            codes=torch.stack(codes, dim=1).long(),
            loss=loss,
            commitment=torch.stack(commit),
            diversity=torch.stack(div),
            level_errors=torch.stack(errors),
        )

    def lookup(self, codes: Tensor) -> Tensor:
        """(n, levels) codes -> (n, dim) sum of their code vectors."""
        books = self.codebooks  # (levels, K, dim)
        return books[torch.arange(self.levels, device=codes.device), codes].sum(dim=1)


def mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    dims = [in_dim, *hidden]
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(a, b), nn.ReLU()]
    blocks.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*blocks)


@dataclass
class RQVAEOutput:
    recon: Tensor  # (n, out_dim)
    latent: Tensor  # (n, latent_dim) encoder output z
    quant: QuantizerOutput


class RQVAE(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        latent_dim: int,
        hidden_dims: list[int],
        levels: int,
        codebook_size: int,
        beta: float,
        gamma: float,
        **quantizer_kwargs,
    ) -> None:
        super().__init__()
        self.encoder = mlp(in_dim, hidden_dims, latent_dim)
        self.quantizer = ResidualQuantizer(latent_dim, levels, codebook_size, beta, gamma, **quantizer_kwargs)
        self.decoder = mlp(latent_dim, hidden_dims[::-1], out_dim)

    def forward(self, x: Tensor) -> RQVAEOutput:
        z = self.encoder(x)
        quant = self.quantizer(z)
        return RQVAEOutput(self.decoder(quant.quantized), z, quant)
