"""Graceful stop on SIGTERM / SIGINT, as clusters send before preemption.

The first signal only sets a flag: the trainer finishes the step it is in, saves, and exits 0 with
a resume hint. A second signal exits at once with the signal's default action; saves are atomic,
so the last checkpoint on disk stays intact (the next start removes the half-written copy).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """Context manager: `.requested` names the first signal received (None until then)."""

    def __init__(self, announce: bool = True):
        self.requested: str | None = None
        self.announce = announce
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:  # second signal: die now, by the signal's default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signal.Signals(signum).name
        if self.announce:
            print(f"\n{self.requested} received: finishing this step and saving (send it again to exit at once)",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only live there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
