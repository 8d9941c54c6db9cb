"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attention encoder over the item history.

Item ids are shifted by one inside the model so that 0 is padding; histories are left-padded, so
the most recent item always sits at the last position (as in the original code).
"""

from __future__ import annotations

import torch
from torch import nn


class SASRec(nn.Module):
    def __init__(self, n_items: int, max_len: int, hidden: int = 64, layers: int = 2, heads: int = 1,
                 dropout: float = 0.5):
        super().__init__()
        self.n_items, self.max_len, self.heads = n_items, max_len, heads
        self.hparams = {"n_items": n_items, "max_len": max_len, "hidden": hidden, "layers": layers,
                        "heads": heads, "dropout": dropout}
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        # Pre-LN blocks with a point-wise feed-forward of width `hidden`, as in the paper (3.3).
        block = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=hidden, dropout=dropout, activation="relu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden)
        # Xavier-normal embeddings as in the reference implementations; PyTorch's N(0, 1) default,
        # scaled by sqrt(d) below, gives logits far too large to start from.
        nn.init.xavier_normal_(self.item_emb.weight[1:])
        nn.init.xavier_normal_(self.pos_emb.weight)

    @property
    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, hidden): row 0 is padding; outputs are scored against rows 1..n."""
        return self.item_emb.weight

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (batch, L) shifted ids, 0 = pad -> hidden states (batch, L, hidden)."""
        batch, length = seq.shape
        real = seq > 0
        x = self.item_emb(seq) * self.item_emb.embedding_dim**0.5
        x = x + self.pos_emb(torch.arange(length, device=seq.device))
        x = self.emb_dropout(x) * real.unsqueeze(-1)
        # True = may not attend: future positions and padding keys. A padding query keeps its own
        # position so that its softmax row is never empty (an all-masked row gives NaN).
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).triu(1)
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        blocked = causal | (~real[:, None, :] & ~eye)  # (batch, L, L)
        blocked = blocked.repeat_interleave(self.heads, dim=0)  # (batch * heads, L, L)
        return self.final_norm(self.encoder(x, mask=blocked))
