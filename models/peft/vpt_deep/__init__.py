"""VPT-deep (Jia et al., ECCV 2022) as IDPT's repository runs it on Point-MAE.

IDPT ``PointTransformerPromptDeep`` (zyh16143998882/ICCV23-IDPT models/Point_MAE.py L1229-1371,
loop ``TransformerEncoderDeep`` L237-265; configs ``cfgs/finetune_*_vpt.yaml``, 10 prompts):
before block l the sequence is cut back to its first 1 + G tokens and the block's own prompts
P_l (10, C) are **appended after the points**, with their own learned positions Q_l:
``x <- Block_l([x[:, :1+G]; P_l] + [pos; Q_l])``. Prompts are replaced at every block and left
out of the head ([cls; max over the G points]). P_l = ``cls_prompt_list.l`` and
Q_l = ``cls_prompt_pos_list.l`` (1, 10, C), both trunc_normal(0.02). What trains: names with
``cls`` (prompts, prompt positions, cls token and position, head): 360,463 / 366,888 on
Point-MAE for 15 / 40 classes.

Point-BERT: the same loop (our port). Point-M2AE (our port): one prompt set per block of every
level, with that level's width; prompts are outside the level's radius mask (every token may
attend to them and they to every token).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import trunc_normal_
from models.peft.base import HEAD_AND_CLS, Method, mark_trainable, name_has, parse_options
from models.peft.shared import encoder_names, replace_module


@dataclass(frozen=True)
class VPTDeepOptions:
    num_prompts: int = 10      # IDPT configs: prompt_nums 10

    def check(self):
        if self.num_prompts < 1:
            from models.errors import ConfigError
            raise ConfigError(f"vpt_deep option num_prompts={self.num_prompts} is invalid: expected >= 1")


class VPTDeepEncoder(nn.Module):
    """A backbone block stack (adopted as ``blocks``) running VPT-deep's loop; its prompts are
    the model's ``cls_prompt_list`` / ``cls_prompt_pos_list`` entries ``first .. first+depth-1``."""

    def __init__(self, encoder: nn.Module, prompts: nn.ParameterList, poses: nn.ParameterList, first: int):
        super().__init__()
        self.blocks = encoder.blocks
        self.first = first
        # the owner's lists, held outside the module tree (their names are the model's)
        object.__setattr__(self, "_prompts", (prompts, poses))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        prompts, poses = self._prompts
        t = prompts[self.first].shape[1]
        if mask is not None:  # prompts attend to and are attended by every token
            mask = nn.functional.pad(mask, (0, t, 0, t), value=True)
        for i, block in enumerate(self.blocks):
            p, q = prompts[self.first + i].expand(b, -1, -1), poses[self.first + i].expand(b, -1, -1)
            x = block(torch.cat([x[:, :n], p], dim=1) + torch.cat([pos, q], dim=1), mask)
        return x[:, :n]


def apply_vpt_deep(model: nn.Module, options: dict) -> nn.Module:
    opts = parse_options(VPTDeepOptions, options, "vpt_deep")
    names = encoder_names(model)
    stacks = [model.get_submodule(n) for n in names]
    dims = [blk.norm1.normalized_shape[0] for enc in stacks for blk in enc.blocks]
    model.cls_prompt_list = nn.ParameterList(nn.Parameter(torch.zeros(1, opts.num_prompts, d)) for d in dims)
    model.cls_prompt_pos_list = nn.ParameterList(nn.Parameter(torch.zeros(1, opts.num_prompts, d)) for d in dims)
    for p in list(model.cls_prompt_list) + list(model.cls_prompt_pos_list):
        trunc_normal_(p, std=0.02)
    first = 0
    for name, enc in zip(names, stacks):
        replace_module(model, name, VPTDeepEncoder(enc, model.cls_prompt_list, model.cls_prompt_pos_list, first))
        first += len(enc.blocks)
    return mark_trainable(model, name_has(*HEAD_AND_CLS, "cls_prompt_list", "cls_prompt_pos_list"))


METHODS = [Method(
    name="vpt_deep", display="VPT-deep", order=30, apply=apply_vpt_deep,
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022; 3D version in IDPT's repository (ICCV 2023)",
    code="zyh16143998882/ICCV23-IDPT@bf152f2 (PointTransformerPromptDeep)",
    backbones={"point_mae": "official", "point_bert": "port", "point_m2ae": "port"},
    doc="docs/methods/vpt_deep.md")]
