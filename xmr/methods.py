"""The method registry: one entry per research method, naming the package that implements it.

A method (UWE, FusionSent, PromptHash, OTSeq2Set, ...) lives in its own folder and, when imported, registers what it
adds to the shared spine: encoder types (``register_encoder``), index stages (``register_stage``), training tasks
(``register_task``) and predictor kinds (``PREDICTOR_KINDS``). Nothing else names it: when a config, manifest or
recipe asks for a type no registry knows, :func:`import_methods` imports every listed method once and the lookup
is retried. Adding a method is adding its folder and one line here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# method name -> package whose import registers its encoders, stages, tasks and predictor kinds
METHODS: dict[str, str] = {
    "fusionsent": "xmr.fusionsent",
    "otseq2set": "xmr.seq2set",
    "prompthash": "xmr.prompthash",
    "uwe": "xmr.uwe",
}
# extra "name=package" entries, comma separated, for methods that live outside xmr (plugins, tests)
PLUGINS_VARIABLE = "XMR_METHODS"

_imported: set[str] = set()


def method_packages() -> dict[str, str]:
    """The built-in methods plus those named in ``$XMR_METHODS``."""
    packages = dict(METHODS)
    for entry in filter(None, (part.strip() for part in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        name, _, package = entry.partition("=")
        packages[name] = package or name
    return packages


def import_methods() -> None:
    """Import every registered method package (once each), so their registrations take effect."""
    for package in method_packages().values():
        if package not in _imported:
            importlib.import_module(package)
            _imported.add(package)


def registrar(table: dict[str, Any], name: str, attribute: str | None = "type_name") -> Callable[[T], T]:
    """A class decorator that enters the class in ``table`` under ``name`` (and sets ``cls.<attribute> = name``):
    what ``register_encoder``, ``register_stage`` and ``register_task`` share."""

    def decorate(cls: T) -> T:
        if attribute:
            setattr(cls, attribute, name)
        table[name] = cls
        return cls

    return decorate

