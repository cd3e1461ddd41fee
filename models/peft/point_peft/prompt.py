"""Point-prior prompt: memory-bank retrieval and the cache prompt (docs/point-peft.md §2.1-§2.3).

The retrieval is the official "parameter-free attention": cosine similarity of the
L2-normalised query against the bank columns, top-K, softmax at temperature 1 over the K
scores, weighted sum of the K columns. The cache prompt is the token sequence
[raw query; weighted sum; the K retrieved columns] (T = K + 2 tokens of width D), fed to each
cache-carrying block's ``cp_adapter``. No labels are involved. Nothing here has parameters.
"""
from __future__ import annotations

import torch


def retrieve(query: torch.Tensor, bank: torch.Tensor, k: int, temperature: float = 1.0,
             exclude_top1: bool = False):
    """Top-k retrieval of ``query`` (B, D) in ``bank`` (D, M).

    Returns (scores (B, k) descending, indices (B, k), softmax weights (B, k), the weighted
    sum (B, D), the retrieved columns (B, k, D)). ``exclude_top1`` skips the best match (a
    leave-one-out approximation when the bank is the training split and the query one of its
    samples).
    """
    if bank.dim() != 2 or bank.shape[0] != query.shape[-1]:
        raise ValueError(f"memory bank of shape {tuple(bank.shape)} does not fit queries of width "
                         f"{query.shape[-1]}: expected ({query.shape[-1]}, M)")
    need = k + int(exclude_top1)
    if bank.shape[1] < need:
        raise ValueError(f"memory bank has {bank.shape[1]} columns; retrieval needs at least {need}")
    q = query / query.norm(dim=-1, keepdim=True)
    sim = q @ bank
    scores, idx = sim.topk(need, dim=-1, largest=True, sorted=True)
    if exclude_top1:
        scores, idx = scores[:, 1:], idx[:, 1:]
    weights = torch.softmax(scores / temperature, dim=-1)
    values = bank.t().index_select(0, idx.reshape(-1)).view(*idx.shape, bank.shape[0])
    agg = (weights.unsqueeze(-1) * values).sum(dim=1)
    return scores, idx, weights, agg, values


def cache_prompt(query: torch.Tensor, bank: torch.Tensor | None, k: int, temperature: float = 1.0,
                 exclude_top1: bool = False) -> torch.Tensor:
    """The cache prompt (B, k + 2, D): [query (raw); weighted sum; top-k columns].

    With no bank (``None`` or zero columns) the retrieved part is zeros: shapes and gradients
    of the trainable tensors are those of a real run, the numbers are not. Models warn when
    they take this path.
    """
    b, d = query.shape
    if bank is None or bank.shape[1] == 0:
        return torch.cat([query.unsqueeze(1), query.new_zeros(b, k + 1, d)], dim=1)
    _, _, _, agg, values = retrieve(query, bank, k, temperature, exclude_top1)
    return torch.cat([query.unsqueeze(1), agg.unsqueeze(1), values], dim=1)
