"""Ctrl-C and SIGTERM as a request to stop at the next safe point, never mid-write.

Long loops (extraction batches, training steps) check `StopRequest.requested` between units of
work and then stop cleanly, leaving their output at its last commit. A second signal raises
KeyboardInterrupt at once, for a user who does not want to wait.

A signal that the process inherited as ignored stays ignored: a shell runs background jobs with
SIGINT ignored on purpose, and a handler must not undo that.
"""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED_EXIT = 130
"""Exit status of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report Ctrl-C)."""


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set `requested` (and `signal_name`) instead of raising.

    Outside the main thread (where Python cannot install handlers) it only carries the flag, which
    callers and tests may also set directly with `request()`.
    """

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def request(self, reason: str = "stop requested") -> None:
        self.signal_name = self.signal_name or reason
        self.requested = True

    def check(self) -> None:
        """Raise Interrupted if a stop was requested: called between the steps of a set-up, so that
        a signal during one is honoured when it ends, not after the set-up's last step."""
        if self.requested:
            raise Interrupted(self.signal_name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) == signal.SIG_IGN:  # an int when inherited
                    continue  # inherited as ignored: respect it
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.request(signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


class Interrupted(KeyboardInterrupt):
    """Raised where a loop honours a StopRequest: its output is at its last commit."""
