"""Target providers: built-ins register here; plugins through the `mimbench.targets` entry point group."""

from __future__ import annotations

import sys

from mimbench.registry import Registry
from mimbench.targets.base import TargetProvider, TargetSpec

TARGETS = Registry("target", group="mimbench.targets")


def register_target(name: str, kind: str | None = None):
    """Decorator: make a TargetProvider class (or a factory returning one) available as `name`.
    `kind` ('features' or 'tokens') is set as the factory's `kind` attribute, which `mimbench
    targets list` shows without building anything (an entry-point plugin sets it itself)."""
    module = sys._getframe(1).f_globals.get("__name__", "__main__")
    source = "built-in" if module.startswith("mimbench.targets.") else f"module '{module}'"
    register = TARGETS.register(name, source=source)

    def decorate(factory):
        if kind is not None:
            factory.kind = kind
        return register(factory)

    return decorate


def build_target(name: str, **options) -> TargetProvider:
    """Build the target `name` with its options (as in the config's `target` section)."""
    return TARGETS.get(name).factory(**options)


# Built-ins, imported when first used (their modules import torch): a typo costs no import.
BUILT_INS = {"clip": "mimbench.targets.clip:clip_target", "dvae": "mimbench.targets.dvae:DVAETarget",
             "pixels": "mimbench.targets.pixels:PixelTarget", "run": "mimbench.targets.run_teacher:run_target",
             "multi": "mimbench.targets.multi:multi_target",
             "timm": "mimbench.targets.timm_features:timm_target",
             "vqkd": "mimbench.targets.vqkd:VQKDTarget"}
for _name, _value in BUILT_INS.items():
    TARGETS.register_lazily(_name, _value)

__all__ = ["TARGETS", "TargetProvider", "TargetSpec", "build_target", "register_target"]
