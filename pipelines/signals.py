"""SIGTERM ends a run as Ctrl-C does, at every moment of it: one exception, `Terminated`, a `KeyboardInterrupt`.

Why a KeyboardInterrupt: it is the one exception every layer of the driver already unwinds cleanly (the flow run is
marked crashed, the Ray session shut down, the rows written so far kept, the lease released), and the one that Ray's
native calls pass through: ``ray.wait`` and ``ray.get`` run Python's signal handlers from Cython and turn a
KeyboardInterrupt into a KeyboardInterrupt, but any other exception raised there into ``SystemError: <cyfunction
CoreWorker.wait …> returned a result with an exception set`` (Ray 2.60). Prefect's flow engine installs its own
SIGTERM handler while a flow runs, raising its ``TerminationSignal`` (a BaseException, not a KeyboardInterrupt), and
cannot be told not to (Prefect 3.9: ``utilities.engine.capture_sigterm``, no setting); so the flows put
`sigterm_as_interrupt` inside it and hand the signal back to Prefect's handler when they end (`forward`), which marks
the flow run crashed — or cancelled, when a Prefect runner sent it — and hands it on to the handler before it.

Signals are counted once for all the blocks open in the process: the first one raises, a second one of either kind
while the first unwinds is recorded and ignored (finally blocks finish: the report flushed, the lease released).
Handlers are set from the main thread only; elsewhere nothing changes. Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Received", "Terminated", "deferred", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""


@dataclass(eq=False)  # blocks are told apart by identity (`_open`)
class Received:
    """The signals a block received, in order (SIGTERM, and SIGINT where the block handles it)."""

    signals: list[int] = field(default_factory=list)

    @property
    def first(self) -> int | None:
        return self.signals[0] if self.signals else None


_open: list[Received] = []  # the blocks open now, outermost first


def _seen() -> bool:
    return any(r.signals for r in _open)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _inside_locking(frame: Any) -> bool:
    """Whether the main thread stands in the standard library's logging code, where an exception raised by a
    handler can leave logging's lock taken: a signal that arrives during ``fork()`` (Ray starts its processes with a
    ``preexec_fn``, hence with the at-fork hooks) runs at logging's after-fork hook, which swallows the exception
    before it releases the lock, and every later log line waits for it forever (seen: a run hung after SIGTERM)."""
    if frame is None:
        return False
    # A finaliser (``__del__``) swallows what it raises too, printing "Exception ignored in …" with a traceback
    # (seen: a run's stderr after SIGTERM 0.7 s after its lease).
    return frame.f_code.co_filename == logging.__file__ or frame.f_code.co_name == "__del__"


def _again_soon(signum: int) -> None:
    """The signal is sent to the main thread again a moment later, to be raised outside the locking code."""
    main = threading.main_thread().ident
    if main is not None:
        timer = threading.Timer(0.05, signal.pthread_kill, (main, signum))
        timer.daemon = True
        timer.start()


@contextlib.contextmanager
def sigterm_as_interrupt(*, sigint: bool = False, forward: bool = True) -> Iterator[Received]:
    """While the block runs, the first SIGTERM (and SIGINT, with `sigint`) of the process raises `Terminated`
    (KeyboardInterrupt); later ones are recorded in the `Received` yielded and ignored. When the block ends, the
    handlers before it are back, and with `forward` a SIGTERM it received is raised again for the handler before it
    (Prefect's flow engine; Python's default ends the process as SIGTERM would have)."""
    got = Received()
    if not _main_thread():
        yield got
        return

    def handler(signum: int, frame: Any) -> None:
        if _inside_locking(frame):
            _again_soon(signum)
            return
        first = not _seen()
        for received in _open:  # the blocks around this one count it too: theirs is no longer a first signal
            received.signals.append(signum)
        if first:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    names = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    previous = {s: signal.signal(s, handler) for s in names}
    _open.append(got)
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _open.remove(got)
        if forward and signal.SIGTERM in got.signals:
            signal.raise_signal(signal.SIGTERM)  # raise() runs the handler before it returns


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGTERM and SIGINT arriving in the block wait for its end (a write that must be whole, a shutdown that must
    finish), then reach the handlers before it."""
    if not _main_thread():
        yield
        return
    got: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)
