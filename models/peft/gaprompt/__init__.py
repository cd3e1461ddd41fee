"""GAPrompt (ICML 2025): geometry-aware point cloud prompts. See ``model.py`` and
docs/methods/gaprompt.md."""
from __future__ import annotations

from functools import partial

from torch import nn

from models.errors import ConfigError
from models.peft.base import Method, mark_trainable, parse_options
from models.peft.gaprompt.model import GAPrompt, GAPromptOptions, is_tuned


def apply(backbone: nn.Module, options: dict, mode: str = "default") -> GAPrompt:
    """The GAPrompt model around ``backbone``'s (pre-trained) weights; ``requires_grad`` set by
    the official filter."""
    name = "gaprompt" if mode == "default" else "gaprompt_faithful"
    if options.get("mode", mode) != mode:
        raise ConfigError(f"method {name} has mode {mode}, got mode={options['mode']!r}; use the other variant")
    opts = parse_options(GAPromptOptions, {**options, "mode": mode}, name)
    return mark_trainable(GAPrompt(backbone, opts), is_tuned)


# the official per-dataset configs (cfgs/gaprompt_scan_{objbg,objonly}.yaml, gaprompt_modelnet.yaml),
# so `params` shows each dataset's official count
DATASETS = {"scanobjectnn_obj_bg": {"point_number": 10, "perturbation": 0.2, "propagation": "before"},
            "scanobjectnn_obj_only": {"point_number": 10, "perturbation": 0.1},
            "modelnet40": {"perturbation": 0.05}}
COMMON = dict(paper="GAPrompt, Ai et al., ICML 2025", code="zhoujiahuan1991/ICML2025-GAPrompt@8a26a2e",
              backbones={"point_mae": "official"}, dataset_options=DATASETS, doc="docs/methods/gaprompt.md")
METHODS = [
    Method(name="gaprompt", display="GAPrompt", apply=apply, order=64, **COMMON),
    Method(name="gaprompt_faithful", display="GAPrompt (faithful)", order=65,
           apply=partial(apply, mode="faithful"), **COMMON),
]
