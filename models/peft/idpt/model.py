"""IDPT on Point-MAE (official) and Point-BERT (paper row, our port): the model.

Forward (zyh16143998882/ICCV23-IDPT models/Point_MAE.py L1034-1054, encoder L289-361):
blocks l < p run on [cls; G points] with pos re-added before each; at block p the point tokens
Y = x[:, -G:] (without pos) give the prompt P = DGCNN(Y), inserted after cls; blocks p..L-1 run
on [cls; P; points] with pos [cls_pos; prompt_pos; PosMLP(centers)]. Then the final LayerNorm
and the head on [x_0; x_1; max_{j>=2} x_j] (``head_input: all``, 1152 wide) or x_1 alone
(``prompt_only``, OBJ_BG). The backbone's modules keep their official names; the DGCNN is
``blocks.cls`` and the prompt's position ``prompt_pos``.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from models.layers import mlp_head, trunc_normal_
from models.peft.idpt.dgcnn import DGCNNPrompt
from models.peft.shared import FrozenBNStatsMixin, adopt_stem


class IDPTEncoder(nn.Module):
    """The backbone's blocks (adopted as ``blocks``) and the prompt generator ``cls``."""

    def __init__(self, encoder: nn.Module, dim: int, k: int, bn_aliases: bool):
        super().__init__()
        self.blocks = encoder.blocks
        self.cls = DGCNNPrompt(dim, k, aliases=bn_aliases)


def _store_grad(param: nn.Parameter, grad: torch.Tensor) -> None:
    param.grad = grad if param.grad is None else param.grad + grad


class IDPT(FrozenBNStatsMixin, nn.Module):
    """(B, N, 3) points -> (B, num_classes) logits."""

    def __init__(self, backbone: nn.Module, opts):
        super().__init__()
        cfg = backbone.cfg
        self.cfg, self.opts = cfg, opts
        dim = cfg.trans_dim
        adopt_stem(self, backbone)
        self.prompt_pos = nn.Parameter(torch.zeros(1, 1, dim))
        trunc_normal_(self.prompt_pos, std=0.02)
        self.blocks = IDPTEncoder(backbone.blocks, dim, opts.k, opts.bn_aliases)
        self.norm = backbone.norm
        width = dim * (3 if opts.head_input == "all" else 1)
        batch_norm = isinstance(backbone.cls_head_finetune[1], nn.BatchNorm1d)
        self.cls_head_finetune = mlp_head(width, cfg.num_classes, batch_norm=batch_norm)
        self._swapped = False
        self._embed = backbone.__class__.embed  # the backbone's own tokenizer (group, encode, pos)

    # -- what trains ---------------------------------------------------------------------------
    def is_tuned(self, name: str) -> bool:
        """IDPT's filter: names containing ``cls`` (official), plus ``prompt_pos`` when it trains."""
        return "cls" in name or (self.opts.train_prompt_pos and name == "prompt_pos")

    # -- forward -------------------------------------------------------------------------------
    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        if (self.opts.clip_frozen_grads and self.training and torch.is_grad_enabled()
                and not self._swapped):
            return self._forward_with_frozen_grads(pts)
        return self._forward(pts)

    def _forward(self, pts: torch.Tensor) -> torch.Tensor:
        x, pos, _ = self._embed(self, pts)
        b, g = x.shape[0], x.shape[1] - 1
        p = self.opts.prompt_layer
        for i, block in enumerate(self.blocks.blocks):
            if i == p:
                prompt = self.blocks.cls(x[:, -g:].transpose(1, 2))
                x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
                pos = torch.cat([pos[:, :1], self.prompt_pos.expand(b, -1, -1), pos[:, 1:]], dim=1)
            x = block(x + pos)
        x = self.norm(x)
        if self.opts.head_input == "all":
            feat = torch.cat([x[:, 0], x[:, 1], x[:, 2:].max(dim=1).values], dim=-1)
        else:
            feat = x[:, 1]
        return self.cls_head_finetune(feat)

    def _forward_with_frozen_grads(self, pts: torch.Tensor) -> torch.Tensor:
        """The official runner leaves the frozen tensors ``requires_grad=True``, so backward fills
        their gradients and ``clip_grad_norm_`` over all parameters counts them. Here the frozen
        tensors are swapped for leaf copies that require grad; their gradients land in the frozen
        parameters' ``.grad`` (cleared at every forward), where gradient clipping sees them,
        while the optimizer (built over ``requires_grad`` tensors) never moves them."""
        swaps = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                continue
            p.grad = None
            leaf = p.detach().requires_grad_()
            leaf.register_hook(partial(_store_grad, p))
            swaps[name] = leaf
        self._swapped = True
        try:
            return torch.func.functional_call(self, swaps, (pts,), strict=False)
        finally:
            self._swapped = False
