"""Ctrl-C and SIGTERM stop a run where its storage is consistent.

Python raises KeyboardInterrupt in whatever code runs when the signal arrives. When that is the
middle of a storage write (SQLAlchemy ending a session, the sqlite3 or psycopg driver, Optuna's
storage classes), the session is left half-finished: the trial cannot be marked FAIL
"interrupted", Optuna's own FAIL write then fails with StorageInternalError, and the run ends with
an internal error (exit 1) instead of "Run the same command again to resume" (exit 130). CI saw
it once; locally it took about 1 Ctrl-C in 40 at random moments, and a signal raised from
SQLAlchemy's `after_transaction_end` event reproduces it every time (tests/test_interrupt.py).

So the handler looks at what the main thread is running. Outside storage code (and the few other
places of DEFER_MODULES) it raises KeyboardInterrupt at once, as Python's default handler does.
Inside, it notes the signal and asks again every few milliseconds (a timer thread re-delivers it
with `_thread.interrupt_main`) until the call has returned, then raises. Written here because no
library offers it: Optuna's `optimize` does not shield its storage from KeyboardInterrupt, and
Python cannot mask signals around a block of code.
"""

from __future__ import annotations

import _thread
import atexit
import signal
import sys
import threading
from types import FrameType

# Modules whose code must not be cut short: the storage stack under Optuna's RDBStorage; Optuna's
# tell (its caller catches only Exception there, and a KeyboardInterrupt inside left the trial
# RUNNING with an UnboundLocalError, seen with two Ctrl-Cs 20 ms apart).
DEFER_MODULES = (
    "sqlalchemy",
    "sqlite3",
    "psycopg",
    "psycopg2",
    "alembic",
    "optuna.storages",
    "optuna.study._tell",
)
RETRY_SECONDS = 0.005


def in_deferred_code(frame: FrameType | None) -> bool:
    """Whether `frame` or any frame under which it runs belongs to one of DEFER_MODULES."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if any(module == m or module.startswith(m + ".") for m in DEFER_MODULES):
            return True
        frame = frame.f_back
    return False


class DeferredInterrupt:
    """A SIGINT/SIGTERM handler that raises KeyboardInterrupt only outside DEFER_MODULES' code.

    A signal that arrives while one already waits is absorbed: the waiting one is raised. `repeat`
    says what a signal does once KeyboardInterrupt has been raised: "raise" it again (a user
    pressing Ctrl-C again, e.g. after a KeyboardInterrupt that a library swallowed), still never
    inside that code, or "ignore" it (a worker of `--workers N` gets the terminal's Ctrl-C and the
    parent's copy of it; the second must not cut short the recording of its trial as FAIL
    "interrupted").
    """

    def __init__(self, repeat: str = "raise") -> None:
        if repeat not in ("raise", "ignore"):
            raise ValueError(f"repeat must be 'raise' or 'ignore', got {repeat!r}")
        self.repeat = repeat
        self.pending = False  # a signal came while deferred code ran; raised once that returns
        self.taken = False  # KeyboardInterrupt has been raised
        self._retrying = False  # the next call is the timer's re-delivery, not a new signal
        self.previous: dict[int, object] = {}  # the handlers install() replaced
        self._unraisable_hook = sys.unraisablehook

    def _unraisable(self, unraisable: object) -> None:
        # Python swallows what a weakref callback or a __del__ run by the garbage collector raises
        # ("Exception ignored in ..."): a KeyboardInterrupt raised there would be lost (seen: a
        # matplotlib weakref callback ate a worker's Ctrl-C), so it is delivered again, shortly.
        if getattr(unraisable, "exc_type", None) is KeyboardInterrupt and self.taken:
            self.taken, self.pending = False, True
            self._retry_soon()
            return
        self._unraisable_hook(unraisable)

    def _retry_soon(self) -> None:
        timer = threading.Timer(RETRY_SECONDS, self._redeliver)
        timer.daemon = True
        timer.start()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        retry, self._retrying = self._retrying, False
        if retry and not self.pending:
            return  # a re-delivery of a signal that is gone
        if self.pending and not retry:
            return  # another signal while one waits: the waiting one will be raised
        if self.taken and self.repeat == "ignore":
            return
        if in_deferred_code(frame):
            self.pending = True
            self._retry_soon()
            return
        self.pending, self.taken = False, True
        raise KeyboardInterrupt

    def _redeliver(self) -> None:
        if self.pending:  # not dropped meanwhile (uninstall)
            self._retrying = True
            _thread.interrupt_main(signal.SIGINT)

    def uninstall(self) -> None:
        """The work is done: drop a signal still waiting and put back the handlers that were there
        before (a caller of hpsearch.cli.main in its own process keeps its Ctrl-C). From the
        interpreter's exit on, SIGINT and SIGTERM are ignored, so that a late one cannot surface
        there (as "Exception ignored in atexit callback", or a death by SIGINT after a run)."""
        self.pending = False
        for signum, previous in self.previous.items():
            if previous is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signum, previous)
        sys.unraisablehook = self._unraisable_hook
        atexit.register(ignore_signals)


def install(repeat: str = "raise", sigterm: bool = False) -> DeferredInterrupt:
    """Handle SIGINT (and SIGTERM: a scheduler's stop) in this process; return the handler."""
    handler = DeferredInterrupt(repeat)
    signums = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)
    handler.previous = {s: signal.getsignal(s) for s in signums}
    for signum in signums:  # SIGINT is also how the timer re-delivers a deferred signal
        signal.signal(signum, handler)
    sys.unraisablehook = handler._unraisable
    return handler


def ignore_signals() -> None:
    """For a process about to exit that starts no other (ignoring is inherited): SIGINT and
    SIGTERM do nothing from now on, and a signal still waiting is dropped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
