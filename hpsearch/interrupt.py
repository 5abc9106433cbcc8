"""Ctrl-C and SIGTERM stop a run where its storage is consistent.

Python raises KeyboardInterrupt in whatever code runs when the signal arrives. When that is the
middle of a storage write (SQLAlchemy ending a session, the sqlite3 or psycopg driver, Optuna's
storage classes), the session is left half-finished: the trial cannot be marked FAIL
"interrupted", Optuna's own FAIL write then fails with StorageInternalError, and the run ends with
an internal error (exit 1) instead of "Run the same command again to resume" (exit 130). CI saw
it once; locally it took about 1 Ctrl-C in 40 at random moments, and a signal raised from
SQLAlchemy's `after_transaction_end` event reproduces it every time (tests/test_interrupt.py).

So the handler looks at what the main thread is running. Outside storage code it raises
KeyboardInterrupt at once, as Python's default handler does. Inside, it notes the signal and asks
again every few milliseconds (a timer thread re-delivers it with `_thread.interrupt_main`) until
the storage call has returned, then raises. Written here because no library offers it: Optuna's
`optimize` does not shield its storage from KeyboardInterrupt, and Python cannot mask signals
around a block of code.
"""

from __future__ import annotations

import _thread
import signal
import threading
from types import FrameType

# Modules whose code must not be cut short: the storage stack under Optuna's RDBStorage.
STORAGE_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2", "alembic", "optuna.storages")
RETRY_SECONDS = 0.005


def in_storage_code(frame: FrameType | None) -> bool:
    """Whether `frame` or any frame under which it runs belongs to a storage module."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if any(module == m or module.startswith(m + ".") for m in STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


class DeferredInterrupt:
    """A SIGINT/SIGTERM handler that raises KeyboardInterrupt only outside storage code.

    `repeat` says what a further signal does once the first has been taken: "raise" (a user
    pressing Ctrl-C again means stop now, as with Python's default handler) or "ignore" (a worker
    of `--workers N` gets the terminal's Ctrl-C and the parent's copy of it; the second must not
    cut short the recording of its trial as FAIL "interrupted").
    """

    def __init__(self, repeat: str = "raise") -> None:
        if repeat not in ("raise", "ignore"):
            raise ValueError(f"repeat must be 'raise' or 'ignore', got {repeat!r}")
        self.repeat = repeat
        self.pending = False  # a signal came while storage code ran; raised once that returns
        self.taken = False  # KeyboardInterrupt has been raised
        self._retrying = False  # the next call is the timer's re-delivery, not a new signal

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        retry, self._retrying = self._retrying, False
        if retry and not self.pending:
            return  # a re-delivery overtaken by a later signal that was raised already
        if self.taken:
            if self.repeat == "raise":
                raise KeyboardInterrupt
            return
        if self.pending and not retry:  # another signal while the first waits
            if self.repeat == "raise":
                self._take()  # Ctrl-C again while a storage call is slow: stop now
            return  # a worker's copy of the same Ctrl-C: the waiting one will be raised
        if in_storage_code(frame):
            self.pending = True
            timer = threading.Timer(RETRY_SECONDS, self._redeliver)
            timer.daemon = True
            timer.start()
            return
        self._take()

    def close(self) -> None:
        """The work is done: a signal still waiting for a storage call is dropped (it would
        otherwise surface in whatever runs next, or at the interpreter's exit), and any later
        signal raises at once."""
        self.pending, self.taken, self.repeat = False, True, "raise"

    def _take(self) -> None:
        self.pending, self.taken = False, True
        raise KeyboardInterrupt

    def _redeliver(self) -> None:
        self._retrying = True
        _thread.interrupt_main(signal.SIGINT)


def install(repeat: str = "raise", sigterm: bool = False) -> DeferredInterrupt:
    """Handle SIGINT (and SIGTERM: a scheduler's stop) in this process; return the handler."""
    handler = DeferredInterrupt(repeat)
    signal.signal(signal.SIGINT, handler)  # also how the timer re-delivers a deferred signal
    if sigterm:
        signal.signal(signal.SIGTERM, handler)
    return handler
