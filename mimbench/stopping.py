"""Ctrl-C and SIGTERM between steps: the first asks the loop in flight to stop after its step
(it then saves what it can and says how to continue); a second one stops at once."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """A context in which SIGINT/SIGTERM set `asked` instead of raising. Outside the main
    thread signals cannot be caught and `asked` stays False."""

    def __init__(self):
        self.asked = False
        self._previous = {}

    def _ask(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._ask)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
