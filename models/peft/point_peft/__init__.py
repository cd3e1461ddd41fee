"""Point-PEFT (AAAI 2024): point-prior prompt + geometry-aware adapter on a frozen backbone.

Registers ``point_peft`` (fixed mode, the default) and ``point_peft_faithful`` (the official
numerics and counts). The model for Point-MAE / Point-BERT is ``model.PointPEFTTransformer``,
for Point-M2AE ``m2ae.PointPEFTM2AE``; options are ``options.PointPEFTOptions``. Modes and the
official bugs each option reproduces: ``docs/point-peft.md``.
"""
from __future__ import annotations

from torch import nn

from models.errors import ConfigError
from models.peft.base import Method, backbone_name
from models.peft.point_peft.m2ae import PointPEFTM2AE
from models.peft.point_peft.model import PointPEFT, PointPEFTTransformer

KINDS = {"point_mae": "mae", "point_bert": "bert", "point_m2ae": "m2ae"}


def apply_point_peft(model: nn.Module, options: dict) -> PointPEFT:
    """Method ``point_peft``: the Point-PEFT model around ``model``'s (pre-trained) weights."""
    kind = KINDS[backbone_name(model)]
    peft = PointPEFTM2AE(model, options) if kind == "m2ae" else PointPEFTTransformer(model, options, kind)
    path = getattr(model, "checkpoint_path", None)
    if path:  # the query encoder from the pre-training file itself (M2AE's final norm is only there)
        peft.reset_query_encoder(checkpoint=path)
    if peft.opts.bank_path:
        from models.peft.point_peft.memory_bank import load_memory_bank
        load_memory_bank(peft.opts.bank_path, peft)
    return peft


def apply_point_peft_faithful(model: nn.Module, options: dict) -> PointPEFT:
    """Method ``point_peft_faithful``: ``point_peft`` with ``mode: faithful`` (so tables such as
    ``run_all.py params`` show the official counts next to the fixed ones)."""
    if options.get("mode", "faithful") != "faithful":
        raise ConfigError(f"method point_peft_faithful has mode faithful, got mode={options['mode']!r}; "
                          "use method point_peft for other modes")
    return apply_point_peft(model, {**options, "mode": "faithful"})


_PAPER = "Tang et al., Point-PEFT: Parameter-Efficient Fine-Tuning for 3D Pre-trained Models, AAAI 2024"
_CODE = "Ivan-Tang-3D/Point-PEFT@d8bc13e"
_BACKBONES = {"point_mae": "official", "point_bert": "paper", "point_m2ae": "official"}
METHODS = [
    Method(name="point_peft", display="Point-PEFT", order=200, apply=apply_point_peft, paper=_PAPER,
           code=_CODE, backbones=_BACKBONES, doc="docs/point-peft.md"),
    Method(name="point_peft_faithful", display="Point-PEFT (faithful)", order=201,
           apply=apply_point_peft_faithful, paper=_PAPER, code=_CODE, backbones=_BACKBONES,
           doc="docs/point-peft.md"),
]
