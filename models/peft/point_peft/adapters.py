"""Bottleneck adapters of Point-PEFT (docs/point-peft.md §4).

One class covers the three official flavours:

* ``AdapterSuper_f`` (Point-MAE MLP branch): returns only the delta ``up(drop(act(down(x))))``;
  the block scales it by 0.7.
* ``AdapterSuper`` (``adapter1`` at the block end, ``cp_adapter`` on the cache prompt, the M2AE
  MLP-branch adapter): residual, ``x + up(drop(act(down(x))))``.

The activation is QuickGELU (x * sigmoid(1.702 x)); the dropout (0.1) is plain dropout despite
the official name ``adapter_drop_path_rate``. Official init: xavier_uniform weights, biases
N(0, 1e-6); ``init="zero_up"`` zeroes the up-projection instead, so the adapter starts as the
identity (residual) or as zero (delta).

Names are the official ones (``ln1`` down-projection, ``activate``, ``dropout``, ``ln2``
up-projection; Point-PEFT ``models/adapter_super.py``), so official fine-tuned files load as
they are. Files written before this naming (``down`` / ``up``) load through
``models.checkpoints.LEGACY_KEYS``.
"""
from __future__ import annotations

import torch
from torch import nn

INITS = ("xavier", "zero_up")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the CLIP approximation of GELU used by the official adapters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Adapter(nn.Module):
    """dim -> hidden -> dim bottleneck; ``residual`` adds the input back (AdapterSuper).

    Input and output (..., dim); parameters ``ln1`` (hidden, dim) + (hidden,), ``ln2`` (dim,
    hidden) + (dim,)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1, residual: bool = True,
                 init: str = "xavier"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"adapter init {init!r} is not one of {INITS}")
        self.residual = residual
        self.ln1 = nn.Linear(dim, hidden)     # down-projection (official name)
        self.activate = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.ln2 = nn.Linear(hidden, dim)     # up-projection (official name)
        for layer in (self.ln1, self.ln2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)
        if init == "zero_up":
            nn.init.zeros_(self.ln2.weight)
            nn.init.zeros_(self.ln2.bias)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln2(self.dropout(self.activate(self.ln1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x) if self.residual else self.delta(x)

    def extra_repr(self) -> str:
        return f"residual={self.residual}"
