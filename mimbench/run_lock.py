"""One writer per run directory: an exclusive lock on DIR/.lock, taken when a job first
writes there and released when it returns (and by the kernel on any exit, a SIGKILL
included, so a dead holder never blocks the next run)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mimbench.errors import MimbenchError

LOCK = ".lock"
_held: dict[Path, int] = {}  # run directory -> the open lock file


def hold(folder: str | Path) -> None:
    """Take the run directory `folder` (created if missing) for this process, or refuse."""
    folder = Path(folder).resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode().strip() or "another process"
        os.close(fd)
        raise MimbenchError(f"'{folder}' is being written by process {holder}; wait for it to "
                            f"finish or choose another --out.") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[folder] = fd


@contextlib.contextmanager
def released_after(folder: str | Path):
    """Release `folder`'s lock when the block ends, if this block took it (so a job inside
    another one, evaluations inside `run`, leaves the outer job's lock alone)."""
    folder = Path(folder).resolve()
    outer = folder in _held
    try:
        yield
    finally:
        if not outer and folder in _held:
            os.close(_held.pop(folder))
