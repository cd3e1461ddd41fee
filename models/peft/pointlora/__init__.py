"""PointLoRA (CVPR 2025): LoRA with multi-scale token selection. See ``model.py`` and
docs/methods/pointlora.md."""
from __future__ import annotations

from functools import partial

from torch import nn

from models.errors import ConfigError
from models.peft.base import Method, mark_trainable, parse_options
from models.peft.pointlora.model import PointLoRA, PointLoRAOptions, is_tuned


def apply(backbone: nn.Module, options: dict, mode: str = "default") -> PointLoRA:
    """The PointLoRA model around ``backbone``'s (pre-trained) weights (LoRA wrappers injected
    after they loaded, as the official runner does); ``requires_grad`` set by the official filter."""
    name = "pointlora" if mode == "default" else "pointlora_faithful"
    if options.get("mode", mode) != mode:
        raise ConfigError(f"method {name} has mode {mode}, got mode={options['mode']!r}; use the other variant")
    opts = parse_options(PointLoRAOptions, {**options, "mode": mode}, name).resolved()
    return mark_trainable(PointLoRA(backbone, opts), is_tuned)


COMMON = dict(paper="PointLoRA, Wang et al., CVPR 2025", code="songw-zju/PointLoRA@82719f0",
              backbones={"point_mae": "official"}, doc="docs/methods/pointlora.md")
METHODS = [
    Method(name="pointlora", display="PointLoRA", apply=apply, order=66, **COMMON),
    Method(name="pointlora_faithful", display="PointLoRA (faithful)", order=67,
           apply=partial(apply, mode="faithful"), **COMMON),
]
