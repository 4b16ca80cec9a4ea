"""Checkpoints: written atomically, checksummed, loaded with weights_only=True.

A run keeps two: `checkpoint.pt` (the latest) and `checkpoint.prev.pt` (the one before).
Each carries a SHA-256 of its own contents, so a truncated or corrupted latest file is
detected and the previous one used instead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from mimbench.errors import MimbenchError

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def digest(state: dict) -> str:
    """SHA-256 over every tensor's bytes and every other value, in key order."""
    h = hashlib.sha256()

    def visit(value, key: str):
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                visit(value[k], f"{key}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{key}[{i}]")
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())

    visit({k: v for k, v in state.items() if k != "sha256"}, "")
    return h.hexdigest()


def save_atomic(state: dict, path: Path, keep_previous: bool = False) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a reader sees the old
    file or the new one, never half of one. With `keep_previous` the old file becomes
    PREVIOUS first. A full disk leaves the files as they were and says so."""
    path = Path(path)
    state = {**state, "sha256": digest(state)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MimbenchError(f"the disk is full while writing a checkpoint to '{path.parent}'; "
                                f"the previous checkpoint is kept: free space, then --resume.") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """One checkpoint file, checked against its SHA-256 when it carries one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MimbenchError(f"no checkpoint at '{path}'.") from None
    except Exception as e:
        raise MimbenchError(f"checkpoint '{path}' cannot be read ({type(e).__name__}); "
                            f"it may be truncated or not a mimbench checkpoint.") from None
    if not isinstance(state, dict):
        raise MimbenchError(f"'{path}' is not a mimbench checkpoint.")
    if "sha256" in state and digest(state) != state["sha256"]:
        raise MimbenchError(f"checkpoint '{path}' is corrupt: its contents do not match its SHA-256.")
    return state


def load_latest(folder: Path) -> dict | None:
    """The newest good checkpoint of a run directory (None if it has none): the latest, or,
    when that one is missing, truncated or corrupt, the previous one, with a warning."""
    latest, previous = Path(folder) / CHECKPOINT, Path(folder) / PREVIOUS
    problem = None
    if latest.exists():
        try:
            return load(latest)
        except MimbenchError as e:
            problem = str(e)
    if previous.exists():
        state = load(previous)
        log.warning("%s; using the previous checkpoint (step %d) instead.",
                    (problem or f"'{latest}' is missing").rstrip("."), state["step"])
        return state
    if problem:
        raise MimbenchError(f"{problem[:-1]}, and the run has no previous checkpoint to fall back on.")
    return None
