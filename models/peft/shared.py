"""Small pieces several methods build on: where a backbone keeps its blocks, the SSF scale-shift.

Not a method (the registry only reads packages). Everything here works on the backbones'
public structure: ``TransformerEncoder.blocks`` (Point-MAE / Point-BERT ``blocks``, Point-M2AE
``h_encoder.encoder_blocks[l]``), ``Block.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``.
"""
from __future__ import annotations

import torch
from torch import nn

from models.layers import Block, TransformerEncoder, pos_mlp, trunc_normal_


def encoders(model: nn.Module) -> list[TransformerEncoder]:
    """The backbone's block stacks in forward order (one for Point-MAE / Point-BERT, one per
    level for Point-M2AE)."""
    return [m for m in model.modules() if isinstance(m, TransformerEncoder)]


def blocks(model: nn.Module) -> list[Block]:
    """Every transformer block in forward order."""
    return [b for enc in encoders(model) for b in enc.blocks]


def patch_embedding(model: nn.Module) -> nn.Module:
    """The module whose output is the first level's patch tokens (B, G, C): Point-BERT's
    ``reduce_dim``, Point-MAE's ``encoder``, Point-M2AE's ``h_encoder.token_embed[0]``."""
    if hasattr(model, "h_encoder"):
        return model.h_encoder.token_embed[0]
    return getattr(model, "reduce_dim", None) or model.encoder


def ssf_init(gamma: nn.Parameter, beta: nn.Parameter, std: float = 0.02) -> None:
    """SSF init (Lian et al., NeurIPS 2022; DAPT ``init_tfts``): gamma ~ N(1, std), beta ~ N(0, std)."""
    nn.init.normal_(gamma, mean=1.0, std=std)
    nn.init.normal_(beta, mean=0.0, std=std)


def add_scale_shift(owner: nn.Module, index: int, dim: int, prefix: str = "tfts") -> tuple[nn.Parameter, nn.Parameter]:
    """Register ``{prefix}_gamma_{index}`` / ``{prefix}_beta_{index}`` (dim,) on ``owner``."""
    gamma, beta = nn.Parameter(torch.empty(dim)), nn.Parameter(torch.empty(dim))
    ssf_init(gamma, beta)
    owner.register_parameter(f"{prefix}_gamma_{index}", gamma)
    owner.register_parameter(f"{prefix}_beta_{index}", beta)
    return gamma, beta


class _ScaleShiftHook:
    """Forward hook: output * gamma + beta (over the last axis). A class, not a closure, so
    models with the hook can be deep-copied and pickled."""

    def __init__(self, owner: nn.Module, index: int, prefix: str):
        self.owner, self.names = owner, (f"{prefix}_gamma_{index}", f"{prefix}_beta_{index}")

    def __call__(self, module, args, output):
        gamma, beta = (getattr(self.owner, n) for n in self.names)
        return output * gamma + beta


def scale_shift_output(module: nn.Module, owner: nn.Module, index: int, dim: int, prefix: str = "tfts"):
    """SSF on ``module``'s output, its parameters registered on ``owner`` (official names:
    ``attn.tfts_gamma_1`` sits on ``attn`` and scales ``attn.qkv``'s output)."""
    add_scale_shift(owner, index, dim, prefix)
    module.register_forward_hook(_ScaleShiftHook(owner, index, prefix))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``model.get_submodule(name)`` is (same name, so state-dict keys stay)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)  # ModuleList accepts string indices through setattr


def encoder_names(model: nn.Module) -> list[str]:
    """Module names of the block stacks, in forward order (``blocks``; ``h_encoder.encoder_blocks.0`` ...)."""
    return [n for n, m in model.named_modules() if isinstance(m, TransformerEncoder)]


def frozen_batchnorms_eval(model: nn.Module) -> None:
    """Put every BatchNorm without a trainable parameter in eval mode (its statistics stay the
    pre-trained ones); call after ``model.train()``. The official runners keep them in train mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def adopt_stem(module: nn.Module, backbone: nn.Module) -> None:
    """Give ``module`` a Point-MAE / Point-BERT backbone's tokenizer under its official names:
    ``cls_token``, ``cls_pos``, ``group_divider``, ``encoder`` (``reduce_dim``), ``pos_embed``;
    ``checkpoint_sha256`` is carried over."""
    module.checkpoint_sha256 = getattr(backbone, "checkpoint_sha256", None)
    module.cls_token, module.cls_pos = backbone.cls_token, backbone.cls_pos
    module.group_divider = backbone.group_divider
    module.encoder = backbone.encoder
    if hasattr(backbone, "reduce_dim"):
        module.reduce_dim = backbone.reduce_dim
    module.pos_embed = backbone.pos_embed


class FrozenBNStatsMixin:
    """``train()`` keeps the frozen BatchNorms in eval mode (their pre-trained statistics) unless
    the method runs them as the official code does (train mode): per ``opts.freeze_bn_stats``
    where the options have that switch, else in every mode but ``faithful``."""

    def keeps_bn_stats(self) -> bool:
        flag = getattr(self.opts, "freeze_bn_stats", None)
        return flag if flag is not None else self.opts.mode != "faithful"

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.keeps_bn_stats():
            frozen_batchnorms_eval(self)
        return self


def carry_checkpoint_identity(module: nn.Module, backbone: nn.Module) -> None:
    """Copy the backbone's ``checkpoint_sha256`` / ``checkpoint_path`` (set by ``build_model``
    when it loaded pre-trained weights) onto the method's model that replaces it."""
    for attr in ("checkpoint_sha256", "checkpoint_path"):
        if hasattr(backbone, attr):
            setattr(module, attr, getattr(backbone, attr))


def small_mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    """Linear -> GELU -> Linear (keys ``.0`` / ``.2``), trunc_normal(0.02) weights, zero biases:
    the prompt MLPs of PPT and PointLoRA (their official ``_init_weights``)."""
    mlp = pos_mlp(dim, hidden, out)   # the same three layers as the positional embeddings
    for layer in (mlp[0], mlp[2]):
        trunc_normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return mlp
