"""Checkpoints: written atomically, loaded with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mimbench.errors import MimbenchError

CHECKPOINT = "checkpoint.pt"


def save_atomic(state: dict, path: Path) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a reader sees the old
    file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MimbenchError(f"no checkpoint at '{path}'.") from None
    except Exception as e:
        raise MimbenchError(f"checkpoint '{path}' cannot be read ({type(e).__name__}); "
                            f"it may be truncated or not a mimbench checkpoint.") from None
