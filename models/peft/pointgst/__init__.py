"""PointGST (TPAMI 2025): graph-spectral adapters on a frozen backbone. See ``model.py`` and
docs/methods/pointgst.md."""
from __future__ import annotations

from functools import partial

from torch import nn

from models.errors import ConfigError
from models.peft.base import Method, mark_trainable, parse_options
from models.peft.pointgst.model import PointGST, PointGSTOptions, is_tuned


def apply(backbone: nn.Module, options: dict, mode: str = "default") -> PointGST:
    """The PointGST model around ``backbone``'s (pre-trained) weights; ``requires_grad`` set by the
    official filter. ``mode``: the registered variant (``pointgst`` / ``pointgst_faithful``)."""
    name = "pointgst" if mode == "default" else "pointgst_faithful"
    if options.get("mode", mode) != mode:
        raise ConfigError(f"method {name} has mode {mode}, got mode={options['mode']!r}; use the other variant")
    opts = parse_options(PointGSTOptions, {**options, "mode": mode}, name).resolved()
    return mark_trainable(PointGST(backbone, opts), is_tuned)


COMMON = dict(paper="PointGST, Liang et al., TPAMI 2025 (arXiv 2410.08114)", code="jerryfeng2003/PointGST@7fbe92f",
              backbones={"point_mae": "official", "point_bert": "paper"}, doc="docs/methods/pointgst.md")
METHODS = [
    Method(name="pointgst", display="PointGST", apply=apply, order=60, **COMMON),
    Method(name="pointgst_faithful", display="PointGST (faithful)", order=61,
           apply=partial(apply, mode="faithful"), **COMMON),
]
