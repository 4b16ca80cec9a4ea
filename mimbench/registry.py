"""One small registry: name -> factory, filled by decorators and (lazily) by entry points."""

from __future__ import annotations

import importlib.metadata
import inspect
from dataclasses import dataclass
from typing import Callable

from mimbench.errors import ConfigError, did_you_mean
from mimbench.typed import annotations, coerce


@dataclass
class Entry:
    name: str
    source: str  # "built-in" or the distribution that provides it
    _factory: Callable | None = None
    _entry_point: importlib.metadata.EntryPoint | None = None

    @property
    def factory(self) -> Callable:
        if self._factory is None:  # entry points import their module on first use only
            self._factory = self._entry_point.load()
        return self._factory


class Registry:
    """Maps names to factories. Built-ins register with `register`; installed packages with
    an entry point in `group`, loaded only when a factory is first asked for."""

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._scanned = False

    def register(self, name: str, source: str = "built-in"):
        def decorate(factory):
            self._add(Entry(name, source, _factory=factory))
            return factory

        return decorate

    def register_lazily(self, name: str, value: str, source: str = "built-in") -> None:
        """`name` is the factory at `value` ('module:attribute'), imported on first use only,
        so that naming or mistyping an entry costs no import of its heavy libraries."""
        self._add(Entry(name, source, _entry_point=importlib.metadata.EntryPoint(name, value, self.group)))

    def _add(self, entry: Entry) -> None:
        old = self._entries.get(entry.name)
        if old is not None and old._entry_point is not None and entry._factory is not None \
                and entry._factory.__module__ == old._entry_point.module:
            old._factory = entry._factory  # the entry point's module registering itself on import
            return
        if old is not None and not (old.source == entry.source and old._factory is entry._factory):
            raise ConfigError(
                f"two {self.kind}s are named '{entry.name}': one from {old.source} and one from "
                f"{entry.source}; uninstall or rename one of them."
            )
        self._entries[entry.name] = entry

    def _scan_entry_points(self) -> None:
        if self._scanned or self.group is None:
            return
        self._scanned = True
        for ep in importlib.metadata.entry_points(group=self.group):
            source = f"package '{ep.dist.name}'" if ep.dist is not None else f"entry point '{ep.value}'"
            self._add(Entry(ep.name, source, _entry_point=ep))

    def entries(self) -> list[Entry]:
        self._scan_entry_points()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def checked_options(self, name: str, options: dict, section: str) -> dict:
        """Entry `name`'s options, each a parameter of its factory (unless the factory takes
        **kwargs), converted by the parameter's annotation: `--set target.bins=12` arrives as
        an int, `abc` for an int is refused naming the type."""
        factory = self.get(name).factory
        params = inspect.signature(factory).parameters
        hints = annotations(factory)
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
        converted = dict(options)
        for key, value in options.items():
            if key not in params and not open_ended:
                raise ConfigError(f"unknown config key '{section}.{key}'{did_you_mean(key, params)}; "
                                  f"{section} '{name}' takes: {', '.join(params) or 'no options'}.")
            if key in hints:
                try:
                    converted[key] = coerce(value, hints[key], f"{section}.{key}")
                except TypeError:  # an annotation the checker does not know: passed as given
                    pass
        return converted

    def get(self, name: str) -> Entry:
        self._scan_entry_points()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                              f"known: {', '.join(sorted(self._entries))}.")
        return self._entries[name]

