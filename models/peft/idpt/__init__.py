"""IDPT: Instance-aware Dynamic Prompt Tuning (Zha et al., ICCV 2023).

One dynamic prompt token per sample, made by a DGCNN from the point tokens before block
``prompt_layer`` and inserted after cls (``model.IDPT``). Official code
zyh16143998882/ICCV23-IDPT@bf152f2 (Point-MAE); Point-BERT is reported in later papers' tables
but has no official config (our port). Methods ``idpt`` (default, mended) and ``idpt_faithful``
(the official behaviour); each difference is one option (``IDPTOptions``, docs/methods/idpt.md).

Counts (Point-MAE, faithful): 1,696,783 trainable / 23,522,191 total (15 classes, head on
[cls; prompt; max]), 1,500,175 / 23,325,583 with ``head_input: prompt_only`` (OBJ_BG),
1,703,208 / 23,528,616 for 40 classes. The default mode also trains ``prompt_pos`` (+384).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from models.errors import ConfigError
from models.peft.base import Method, choice, mark_trainable, parse_options, require_cls_token, with_mode
from models.peft.idpt.model import IDPT

MODES = ("default", "faithful")


@dataclass(frozen=True)
class IDPTOptions:
    mode: str = "default"
    prompt_layer: int = 11          # 11 for PB_T50_RS / OBJ_BG / ModelNet40, 6 for OBJ_ONLY
    head_input: str = "all"         # "all" = [cls; prompt; max points]; "prompt_only" (OBJ_BG)
    k: int = 20                     # DGCNN neighbours (feature space)
    # faithful-mode behaviours (None = the mode's value)
    train_prompt_pos: bool | None = None    # official: prompt_pos is never optimised
    clip_frozen_grads: bool | None = None   # official: the clip norm includes the frozen backbone's grads
    bn_aliases: bool | None = None          # official: each DGCNN BN under two state-dict keys
    freeze_bn_stats: bool | None = None     # official: frozen BNs in train mode (batch statistics)

    def check(self):
        choice("idpt", "mode", self.mode, MODES)
        choice("idpt", "head_input", self.head_input, ("all", "prompt_only"))
        if self.k < 1:
            raise ConfigError(f"idpt option k={self.k} is invalid: expected >= 1")

    def resolved(self) -> "IDPTOptions":
        faithful = self.mode == "faithful"
        fill = {"train_prompt_pos": not faithful, "clip_frozen_grads": faithful, "bn_aliases": faithful,
                "freeze_bn_stats": not faithful}
        return replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})


def _bool_or_none(opts: IDPTOptions):
    for name in ("train_prompt_pos", "clip_frozen_grads", "bn_aliases", "freeze_bn_stats"):
        value = getattr(opts, name)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"idpt option {name}={value!r} is invalid: expected true or false")


def build_idpt(model: nn.Module, options: dict, mode: str) -> IDPT:
    method = "idpt_faithful" if mode == "faithful" else "idpt"
    opts = parse_options(IDPTOptions, with_mode(options, method, mode), "idpt")
    _bool_or_none(opts)
    opts = opts.resolved()
    require_cls_token(model, "idpt")
    if not 0 <= opts.prompt_layer < model.cfg.depth:
        raise ConfigError(f"idpt option prompt_layer={opts.prompt_layer} is invalid: expected a block index "
                          f"below {model.cfg.depth}")
    if opts.k > model.cfg.num_group:
        raise ConfigError(f"idpt option k={opts.k} exceeds the backbone's {model.cfg.num_group} patches")
    idpt = IDPT(model, opts)
    mark_trainable(idpt, idpt.is_tuned)
    return idpt.train()


def apply_idpt(model: nn.Module, options: dict) -> IDPT:
    return build_idpt(model, options, "default")


def apply_idpt_faithful(model: nn.Module, options: dict) -> IDPT:
    return build_idpt(model, options, "faithful")


_PAPER = "Zha et al., Instance-aware Dynamic Prompt Tuning for Pre-trained Point Cloud Models, ICCV 2023"
_CODE = "zyh16143998882/ICCV23-IDPT@bf152f2"
_BACKBONES = {"point_mae": "official", "point_bert": "paper"}
# the official per-dataset configs (cfgs/finetune_scan_{objbg,objonly}_idpt.yaml)
_DATASETS = {"scanobjectnn_obj_bg": {"head_input": "prompt_only"}, "scanobjectnn_obj_only": {"prompt_layer": 6}}
METHODS = [
    Method(name="idpt", display="IDPT", order=300, apply=apply_idpt, paper=_PAPER, code=_CODE,
           backbones=_BACKBONES, dataset_options=_DATASETS, doc="docs/methods/idpt.md"),
    Method(name="idpt_faithful", display="IDPT (faithful)", order=301, apply=apply_idpt_faithful,
           paper=_PAPER, code=_CODE, backbones=_BACKBONES, dataset_options=_DATASETS, doc="docs/methods/idpt.md"),
]
