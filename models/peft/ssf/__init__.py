"""SSF (Lian et al., NeurIPS 2022): a learned scale and shift, v * gamma + beta, after each op.

Positions are DAPT's SSF ("tfts") positions without its prompt pair (LMD0311/DAPT
models/DAPT.py): the patch tokens out of the patch encoder (``tfts_*_1``) and the final
LayerNorm (``tfts_*_2``) at model level; in every block after LN1 and LN2 (``tfts_*_1``,
``tfts_*_2``), on the qkv output before the head split and on the proj output
(``attn.tfts_*_{1,2}``), after fc1 and fc2 (``mlp.tfts_*_{1,2}``). gamma ~ N(1, 0.02),
beta ~ N(0, 0.02). Trains the SSF pairs, cls token and position, head: 371,215 / 377,640 on
Point-MAE for 15 / 40 classes [inferred: no 3D repository runs SSF alone].
Point-M2AE: the model-level pair sits on level 0's patch tokens (96 wide).
"""
from __future__ import annotations

from torch import nn

from models.peft.base import HEAD_AND_CLS, Method, NoOptions, mark_trainable, name_has, parse_options
from models.peft.shared import blocks, patch_embedding, scale_shift_output


def _width(module: nn.Module) -> int:
    return module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else module.out_features


def apply_ssf(model: nn.Module, options: dict) -> nn.Module:
    parse_options(NoOptions, options, "ssf")
    embed = patch_embedding(model)
    scale_shift_output(embed, model, 1, getattr(embed, "out_features", None) or embed.out_channels)
    for block in blocks(model):
        for module, owner, index in ((block.norm1, block, 1), (block.norm2, block, 2),
                                     (block.attn.qkv, block.attn, 1), (block.attn.proj, block.attn, 2),
                                     (block.mlp.fc1, block.mlp, 1), (block.mlp.fc2, block.mlp, 2)):
            scale_shift_output(module, owner, index, _width(module))
    scale_shift_output(model.norm, model, 2, _width(model.norm))
    return mark_trainable(model, lambda n: name_has(*HEAD_AND_CLS)(n) or "tfts_" in n)


METHODS = [Method(
    name="ssf", display="SSF", order=60, apply=apply_ssf, definition="inferred",
    paper="Lian et al., Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning, NeurIPS 2022",
    code="positions from LMD0311/DAPT@41aa0bc (tfts)",
    backbones={"point_mae": "port", "point_bert": "port", "point_m2ae": "port"},
    doc="docs/methods/ssf.md")]
