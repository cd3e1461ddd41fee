"""PPT, positional prompt tuning (arXiv 2408.11567). See ``model.py`` and docs/methods/ppt.md."""
from __future__ import annotations

from functools import partial

from torch import nn

from models.errors import ConfigError
from models.peft.base import Method, mark_trainable, parse_options
from models.peft.ppt.model import PPT, PPTOptions, is_tuned


def apply(backbone: nn.Module, options: dict, mode: str = "default") -> PPT:
    """The PPT model around ``backbone``'s (pre-trained) weights; ``requires_grad`` set by the
    official filter (which unfreezes ``encoder.first_conv`` and ``pos_embed``)."""
    name = "ppt" if mode == "default" else "ppt_faithful"
    if options.get("mode", mode) != mode:
        raise ConfigError(f"method {name} has mode {mode}, got mode={options['mode']!r}; use the other variant")
    opts = parse_options(PPTOptions, {**options, "mode": mode}, name)
    return mark_trainable(PPT(backbone, opts), is_tuned)


COMMON = dict(paper="Positional Prompt Tuning, Zhang et al., arXiv 2408.11567", code="zsc000722/PPT@8f87fb8",
              backbones={"point_mae": "official"}, doc="docs/methods/ppt.md")
METHODS = [
    Method(name="ppt", display="PPT", apply=apply, order=62, **COMMON),
    Method(name="ppt_faithful", display="PPT (faithful)", order=63,
           apply=partial(apply, mode="faithful"), **COMMON),
]
