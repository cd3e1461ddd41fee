"""BitFit (Ben Zaken et al., ACL 2022): every bias of the backbone trains, plus the head and the
cls token / position. No 3D repository implements it; the only trace is a commented-out filter
in GAPrompt (runner_module.py L93: the block biases ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``,
``norm1``, ``norm2``). Option ``biases: all`` (default, the BitFit paper: every ``*.bias`` of
the model, patch encoder, positional MLP and final norm included) or ``blocks`` (that
GAPrompt subset only). [inferred]
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from models.peft.base import HEAD_AND_CLS, Method, choice, mark_trainable, name_has, parse_options

BLOCK_BIASES = ("attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias", "norm1.bias", "norm2.bias")


@dataclass(frozen=True)
class BitFitOptions:
    biases: str = "all"   # "all" | "blocks"

    def check(self):
        choice("bitfit", "biases", self.biases, ("all", "blocks"))


def apply_bitfit(model: nn.Module, options: dict) -> nn.Module:
    opts = parse_options(BitFitOptions, options, "bitfit")
    head = name_has(*HEAD_AND_CLS)

    def tuned(name: str) -> bool:
        if head(name):
            return True
        if opts.biases == "all":
            return name.endswith(".bias")
        return any(name.endswith("." + b) for b in BLOCK_BIASES)
    return mark_trainable(model, tuned)


METHODS = [Method(
    name="bitfit", display="BitFit", order=20, apply=apply_bitfit, definition="inferred",
    paper="Ben Zaken et al., BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked "
          "Language-models, ACL 2022",
    backbones={"point_mae": "port", "point_bert": "port", "point_m2ae": "port"},
    doc="docs/methods/bitfit.md")]
