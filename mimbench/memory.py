"""One rule for what may be held in memory: at most half of this machine's."""

from __future__ import annotations

import os

from mimbench.errors import ConfigError


def half_of_memory() -> int:
    """Bytes: half of this machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def refuse_over_half(need: int, what: str, advice: str, budget: int | None = None) -> None:
    """Raise ConfigError when `need` bytes exceed `budget` (default: half of memory), saying
    what would hold them and what to do instead."""
    if need > (budget or half_of_memory()):
        raise ConfigError(f"{what} would hold {need / 2**30:.1f} GiB, more than half of this "
                          f"machine's memory; {advice}.")
