"""What every PEFT method is and gets: its registry entry, options parsing, trainability.

A method is a package ``models/peft/<name>/`` whose ``__init__`` defines ``METHODS``, a list of
``Method`` entries (one package may register a faithful and a default variant). A ``Method``
says how to apply it to a backbone (``apply(backbone, options) -> model`` with
``requires_grad`` marking what trains) and carries the metadata that ``params``, ``bench``, the
configs and the result tables read (display name, paper, official code, supported backbones).
Methods never import each other; shared pieces live in ``models/layers.py`` or here.

Everything else a method gets for free works on the returned ``nn.Module``:
``trainable_summary`` (here), adapter-only checkpoints (``models.peft.adapter_io``), its row in
``run_all.py params`` and ``bench``. A method whose update folds into frozen weights gives the
model a ``merge()`` method (see ``models.peft.lora``).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:   # annotations only: the registry's metadata (``registry.titles``) needs no torch
    from torch import nn

from models.errors import ConfigError

BACKBONE_NAMES = ("point_mae", "point_bert", "point_m2ae")


@dataclass(frozen=True)
class Method:
    """One registered method (one ``method:`` name in configs).

    ``apply(backbone, options)``: the backbone model (pre-trained weights already loaded) and
    the config's ``method_options`` dict -> the model to train, ``requires_grad`` set.
    ``backbones``: backbone name -> support note: ``"official"`` (the method's own code covers
    it), ``"paper"`` (the paper reports it, no official code; our port) or ``"port"`` (neither;
    our port). Backbones not listed are refused with a one-line error.
    ``definition``: ``"official"`` (from the method's code) or ``"inferred"`` (no code defines
    it; the docs say how it was pinned down).
    """

    name: str
    display: str
    paper: str
    apply: Callable[[nn.Module, dict], nn.Module]
    backbones: dict[str, str]
    code: str = ""
    definition: str = "official"
    doc: str = ""
    order: int = 100
    # dataset name -> the method options its official config for that dataset sets (e.g. IDPT's
    # OBJ_BG head); ``params`` counts with them, the recipe files under experiments/recipes/ hold them too
    dataset_options: dict[str, dict] = field(default_factory=dict)

    def supports(self, backbone: str) -> bool:
        return backbone in self.backbones

    def support_note(self, backbone: str) -> str:
        """A short note for tables: ``official code``, ``paper row, no official code``, ..."""
        note = self.backbones.get(backbone)
        return {"official": "official code", "paper": "paper reports it; no official code (our port)",
                "port": "no official code (our port)", None: "not supported"}.get(note, note)

    def info(self) -> dict[str, Any]:
        """Plain metadata for tables and reports."""
        return {"name": self.name, "display": self.display, "paper": self.paper, "code": self.code,
                "definition": self.definition, "backbones": dict(self.backbones), "doc": self.doc}


def parse_options(cls, options: dict | None, method: str):
    """``options`` (a config's ``method_options``) -> an instance of dataclass ``cls``.

    Unknown keys and values of the wrong type are one-line ``ConfigError`` s naming the method,
    the option and what was expected. Lists become tuples.
    """
    options = dict(options or {})
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"unknown {method} option {unknown[0]!r}; valid: {', '.join(names) or '(none)'}")
    for f in fields(cls):
        if f.name not in options:
            continue
        value = options[f.name]
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)  # type: ignore[misc]
        options[f.name] = _check_type(method, f.name, value, default)
    obj = cls(**options)
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


def _check_type(method: str, name: str, value, default):
    def bad(expected):
        return ConfigError(f"{method} option {name}={value!r} is invalid: expected {expected}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
    elif isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        value = tuple(value)
    return value


def choice(method: str, name: str, value, valid: Iterable[str]) -> None:
    """One-line error unless ``value`` is one of ``valid``."""
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"{method} option {name}={value!r} is invalid: expected one of {', '.join(valid)}")


def with_mode(options: dict, method: str, mode: str) -> dict:
    """``options`` with ``mode`` set for the registered variant ``method`` (``idpt`` = default,
    ``idpt_faithful`` = faithful); a config naming the other mode is a one-line error."""
    options = dict(options)
    if options.setdefault("mode", mode) != mode:
        base = method.removesuffix("_faithful")
        raise ConfigError(f"method {method} has mode {mode}, got mode={options['mode']!r}; use method "
                          f"{base} or {base}_faithful")
    return options


def require_cls_token(model: nn.Module, method: str) -> None:
    """One-line error unless the backbone has a cls token (Point-MAE, Point-BERT)."""
    if not hasattr(model, "cls_token"):
        raise ConfigError(f"{method} has no recipe for {backbone_name(model)}: it needs a cls token "
                          "(Point-MAE, Point-BERT)")


def backbone_name(model: nn.Module) -> str:
    """The registry name of a backbone model (``point_mae``, ``point_bert``, ``point_m2ae``)."""
    from models.backbones.point_bert import PointBERT
    from models.backbones.point_m2ae import PointM2AE
    from models.backbones.point_mae import PointMAE
    for cls, name in ((PointMAE, "point_mae"), (PointBERT, "point_bert"), (PointM2AE, "point_m2ae")):
        if isinstance(model, cls):
            return name
    raise ConfigError(f"{type(model).__name__} is not a known backbone; expected one of {', '.join(BACKBONE_NAMES)}")


def mark_trainable(model: nn.Module, is_tuned: Callable[[str], bool]) -> nn.Module:
    """Set ``requires_grad`` on every parameter: True iff ``is_tuned(name)``."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(is_tuned(name)))
    return model


def name_has(*parts: str) -> Callable[[str], bool]:
    """A name filter: True when one of the dotted name's components is in ``parts``
    (``cls_head_finetune.0.weight`` and ``blocks.blocks.3.lora_A`` match ``cls_head_finetune`` /
    ``lora_A``)."""
    wanted = set(parts)

    def test(name: str) -> bool:
        return any(p in wanted for p in name.split("."))
    return test


HEAD_AND_CLS = ("cls_token", "cls_pos", "cls_head_finetune")


def trainable_summary(model: nn.Module) -> str:
    """One line, as every 3D PEFT table reports it:
    ``trainable params: 1,087,771 || all params: 22,912,795 || trainable%: 4.7474``.

    Counts each parameter tensor once (shared tensors are not double counted); buffers excluded.
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    tuned = sum(p.numel() for p in params if p.requires_grad)
    pct = 100.0 * tuned / total if total else 0.0
    return f"trainable params: {tuned:,} || all params: {total:,} || trainable%: {pct:.4f}"


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that takes none."""

