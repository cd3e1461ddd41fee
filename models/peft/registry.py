"""The one registry of methods: every package under ``models/peft/`` that defines ``METHODS``.

``methods()`` -> name -> ``Method`` (sorted by ``Method.order``, then name); ``get(name)``
raises a one-line ``ConfigError`` listing the valid names. ``build_model``, ``params``, config
validation, ``bench`` and the result tables all read this. Adding a method = adding a package
(``docs/adding-a-method.md``); nothing here names a method.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

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
