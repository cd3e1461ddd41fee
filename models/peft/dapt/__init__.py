"""DAPT: Dynamic Adapter meets Prompt Tuning (Zhou et al., CVPR 2024).

SSF scale-shift pairs, a dynamic adapter per block and one internal prompt per block made from
the adapter's output (``model.DAPT``). Official code LMD0311/DAPT@41aa0bc (Point-MAE);
Point-BERT is reported in later papers' tables but the official model has no ``reduce_dim``
(our port). Methods ``dapt`` (default, mended) and ``dapt_faithful``; each difference is one
option (``DAPTOptions``, docs/methods/dapt.md).

Counts (Point-MAE): 1,087,771 trainable / 22,912,795 total (15 classes, rank 64, head on
[cls; prompt mean; patch max]); 989,467 on OBJ_ONLY ([cls; prompt mean]); 1,069,716 /
22,894,740 for ModelNet40 (rank 72, [cls; patch max]). Both modes have the same tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from models.errors import ConfigError
from models.peft.base import Method, choice, mark_trainable, parse_options, require_cls_token, with_mode
from models.peft.dapt.model import DAPT

HEAD_TOKENS = ("cls", "prompt_mean", "patch_max")


@dataclass(frozen=True)
class DAPTOptions:
    mode: str = "default"
    rank: int = 64                                  # 64 (ScanObjectNN), 72 (ModelNet40)
    adapter_dropout: float = 0.0                    # 0.2 PB_T50_RS, 0.5 OBJ_BG, 0 OBJ_ONLY / ModelNet40
    head_tokens: tuple = ("cls", "prompt_mean", "patch_max")  # OBJ_ONLY: cls, prompt_mean; MN40: cls, patch_max
    # faithful-mode behaviours (None = the mode's value)
    pos_every_block: bool | None = None     # official: pos added once, before block 0
    prompt_source: str | None = None        # official "all": the prompt averages every token present
    freeze_bn_stats: bool | None = None     # official: frozen BNs in train mode (batch statistics)

    def check(self):
        choice("dapt", "mode", self.mode, ("default", "faithful"))
        if self.rank < 1:
            raise ConfigError(f"dapt option rank={self.rank} is invalid: expected >= 1")
        if not 0 <= self.adapter_dropout < 1:
            raise ConfigError(f"dapt option adapter_dropout={self.adapter_dropout} is invalid: expected a "
                              "probability in [0, 1)")
        bad = [t for t in self.head_tokens if t not in HEAD_TOKENS]
        if bad or not self.head_tokens or len(set(self.head_tokens)) != len(self.head_tokens):
            raise ConfigError(f"dapt option head_tokens={list(self.head_tokens)} is invalid: expected distinct "
                              f"names from {', '.join(HEAD_TOKENS)}")
        if self.prompt_source is not None:
            choice("dapt", "prompt_source", self.prompt_source, ("all", "points"))
        for name in ("pos_every_block", "freeze_bn_stats"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"dapt option {name}={value!r} is invalid: expected true or false")

    def resolved(self) -> "DAPTOptions":
        faithful = self.mode == "faithful"
        fill = {"pos_every_block": not faithful, "prompt_source": "all" if faithful else "points",
                "freeze_bn_stats": not faithful}
        return replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})


def build_dapt(model: nn.Module, options: dict, mode: str) -> DAPT:
    method = "dapt_faithful" if mode == "faithful" else "dapt"
    opts = parse_options(DAPTOptions, with_mode(options, method, mode), "dapt").resolved()
    require_cls_token(model, "dapt")
    dapt = DAPT(model, opts)
    mark_trainable(dapt, dapt.is_tuned)
    return dapt.train()


def apply_dapt(model: nn.Module, options: dict) -> DAPT:
    return build_dapt(model, options, "default")


def apply_dapt_faithful(model: nn.Module, options: dict) -> DAPT:
    return build_dapt(model, options, "faithful")


_PAPER = "Zhou et al., Dynamic Adapter Meets Prompt Tuning: Parameter-Efficient Transfer Learning for Point Cloud Analysis, CVPR 2024"
_CODE = "LMD0311/DAPT@41aa0bc"
_BACKBONES = {"point_mae": "official", "point_bert": "paper"}
# the official per-dataset configs (cfgs/finetune_{scan_objbg,scan_objonly,modelnet}_dapt.yaml)
_DATASETS = {"scanobjectnn_obj_bg": {"adapter_dropout": 0.5},
             "scanobjectnn_pb_t50_rs": {"adapter_dropout": 0.2},
             "scanobjectnn_obj_only": {"head_tokens": ["cls", "prompt_mean"]},
             "modelnet40": {"rank": 72, "head_tokens": ["cls", "patch_max"]}}
METHODS = [
    Method(name="dapt", display="DAPT", order=310, apply=apply_dapt, paper=_PAPER, code=_CODE,
           backbones=_BACKBONES, dataset_options=_DATASETS, doc="docs/methods/dapt.md"),
    Method(name="dapt_faithful", display="DAPT (faithful)", order=311, apply=apply_dapt_faithful,
           paper=_PAPER, code=_CODE, backbones=_BACKBONES, dataset_options=_DATASETS, doc="docs/methods/dapt.md"),
]
