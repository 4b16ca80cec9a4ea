"""One writer per run directory: an exclusive lock on DIR/.lock (filelock, the one lock
mechanism of mimbench: the teacher cache uses it too), taken before anything in the directory
is read and released when the job returns (and by the kernel on any exit, a SIGKILL included,
so a dead holder never blocks the next run). DIR/.lock.owner names the holder's process."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import FileLock, Timeout

from mimbench.errors import MimbenchError

LOCK, OWNER = ".lock", ".lock.owner"
_held: dict[Path, FileLock] = {}  # run directory -> its held lock


def hold(folder: str | Path) -> None:
    """Take the run directory `folder` (created if missing) for this process, or refuse."""
    folder = Path(folder).resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        owner = folder / OWNER
        holder = owner.read_text().strip() if owner.exists() else "another process"
        raise MimbenchError(f"'{folder}' is being written by process {holder}; wait for it to "
                            f"finish or choose another --out.") from None
    (folder / OWNER).write_text(str(os.getpid()))
    _held[folder] = lock


def release(folder: Path) -> None:
    _held.pop(folder).release()


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
            release(folder)


@contextlib.contextmanager
def holding(folder: str | Path):
    """Hold `folder` for the whole block (a command's pre-training and evaluations, a suite's
    run), taken before anything there is read; a folder this block created and left holding
    nothing but the lock is removed again, so a refused command leaves no trace."""
    folder = Path(folder).resolve()
    created = not folder.exists()
    with released_after(folder):
        hold(folder)
        try:
            yield
        finally:
            if created and {p.name for p in folder.iterdir()} <= {LOCK, OWNER}:
                release(folder)
                for name in (LOCK, OWNER):
                    (folder / name).unlink(missing_ok=True)
                folder.rmdir()
