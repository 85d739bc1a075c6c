"""Preemption: SIGTERM (what schedulers and TPU preemption send) and SIGINT become a request
that the fit loop honours after the current step, by checkpointing and exiting cleanly."""
from __future__ import annotations

import signal
import threading


class PreemptionGuard:
    """While active, records SIGTERM/SIGINT instead of dying; ``requested`` names the signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
