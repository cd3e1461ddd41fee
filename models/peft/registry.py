"""The one registry of methods: every package under ``models/peft/`` that defines ``METHODS``.

``methods()`` -> name -> ``Method`` (sorted by ``Method.order``, then name); ``get(name)``
raises a one-line ``ConfigError`` listing the valid names. ``titles()`` -> name -> display name
in the same order, read from the packages' source without importing them (no torch: the result
tables use it). ``build_model``, ``params``, config
validation, ``bench`` and the result tables all read this. Adding a method = adding a package
(``docs/adding-a-method.md``); nothing here names a method.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path

from models.errors import ConfigError
from models.peft.base import Method


@lru_cache(maxsize=None)
def _discover() -> dict[str, Method]:
    import models.peft as pkg
    found: list[Method] = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for method in getattr(module, "METHODS", ()):
            if not isinstance(method, Method):
                raise TypeError(f"models.peft.{info.name}.METHODS holds {type(method).__name__}, not Method")
            found.append(method)
    names = [m.name for m in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TypeError(f"method name(s) registered twice: {dupes}")
    return {m.name: m for m in sorted(found, key=lambda m: (m.order, m.name))}


def methods() -> dict[str, Method]:
    """Every registered method, in table order."""
    return dict(_discover())


def get(name: str) -> Method:
    registry = _discover()
    if name not in registry:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(registry)}")
    return registry[name]


def method_info(name: str) -> dict:
    """Display name, paper, official code, definition and backbones of a method (for tables)."""
    return get(name).info()


def _literal_entries(source: str) -> list[dict] | None:
    """The literal ``name``, ``display`` and ``order`` of every ``Method(...)`` call in a
    package's ``__init__`` source; None when one of them is not a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Method":
            kw = {k.arg: k.value for k in node.keywords if k.arg in ("name", "display", "order")}
            if not all(isinstance(kw.get(k), ast.Constant) for k in ("name", "display")) or \
                    ("order" in kw and not isinstance(kw["order"], ast.Constant)):
                return None
            found.append({k: v.value for k, v in kw.items()})
    return found


@lru_cache(maxsize=None)
def _titles() -> tuple[tuple[str, str], ...]:
    import models.peft as pkg
    entries = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg:
            continue
        found = _literal_entries((Path(pkg.__path__[0]) / info.name / "__init__.py").read_text())
        if found is None:   # not literal: import the registry
            return tuple((name, m.display) for name, m in _discover().items())
        entries += found
    default = Method.__dataclass_fields__["order"].default
    entries.sort(key=lambda e: (e.get("order", default), e["name"]))
    return tuple((e["name"], e["display"]) for e in entries)


def titles() -> dict[str, str]:
    """Every registered method's display name, in table order (as ``methods()``), without
    importing the method packages."""
    return dict(_titles())
