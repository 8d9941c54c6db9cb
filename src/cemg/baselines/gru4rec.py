"""GRU4Rec (Hidasi et al., ICLR 2016) trained like SASRec: a GRU over the item history whose state
at each position is scored against the (tied) item embeddings with a full softmax."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class GRU4Rec(nn.Module):
    def __init__(self, n_items: int, max_len: int, hidden: int = 64, layers: int = 1, dropout: float = 0.25):
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.hparams = {"n_items": n_items, "max_len": max_len, "hidden": hidden, "layers": layers,
                        "dropout": dropout}
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out_dropout = nn.Dropout(dropout)
        nn.init.xavier_normal_(self.item_emb.weight[1:])

    @property
    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (batch, L) shifted ids, left-padded -> hidden states (batch, L, hidden)."""
        batch, length = seq.shape
        lengths = (seq > 0).sum(1)
        # The GRU must start from h0 at the first real item, not after a run of padding: rotate
        # each row to right-padding, pack, run, and rotate back.
        shift = (length - lengths)[:, None]
        pos = torch.arange(length, device=seq.device)[None]
        right = seq.gather(1, (pos + shift) % length)
        x = self.emb_dropout(self.item_emb(right))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)  # (batch, L, hidden)
        out = out.gather(1, ((pos - shift) % length).unsqueeze(-1).expand(-1, -1, out.size(-1)))
        return self.out_dropout(out)
