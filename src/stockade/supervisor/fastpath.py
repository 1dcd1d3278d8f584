"""The receiver's compiled fast path, when it is built (and not turned off).

``_fastpath`` (C, ``_fastpath.c``) is the receiver's wait: it polls the
listeners and answers there, without the GIL, the commonest call of all,
a read-only open of a file or a directory in a directory whose every child
the rules allow (what :func:`stockade.supervisor.fs.q_open` does, for the
case it covers).  Python decides the first open in each directory and
teaches the session's :class:`DirCache` the directories where one verdict,
allow, holds for every child; everything else reaches Python as before.

It is optional: a machine without a C compiler or Python's headers
installs stockade without it, and ``STOCKADE_FASTPATH=0`` turns it off
(read once, at import).  Either way, :func:`receiver` returns an object
with the same interface, backed by ``select.poll``, which answers nothing
itself.  ``stockade check`` says which one runs.
"""

from __future__ import annotations

import os
import select
from typing import TYPE_CHECKING, Protocol

from stockade.policy.model import Category

if TYPE_CHECKING:
    from stockade.plan.notify import NotifyPlan

try:
    from stockade.supervisor import _fastpath  # type: ignore[attr-defined]
except ImportError:  # not built: no compiler, or no Python headers
    _fastpath = None

#: Whether the compiled fast path runs in this process.
ENABLED = _fastpath is not None and os.environ.get("STOCKADE_FASTPATH", "1") != "0"

#: What :meth:`Receiver.wait` returns as its state (besides ``-errno``
#: when receiving failed): an event for Python; a notification received
#: into the buffer; nothing (only answers to count).
STATE_EVENT, STATE_RECEIVED, STATE_TICK = 0, 1, 2


class DirCache(Protocol):
    """Directories whose every child may be read, and the sandbox's root
    (``_fastpath.DirCache``)."""

    def add(self, directory: bytes, generation: int, tree: bool, /) -> None: ...
    def clear(self, generation: int, stops: list[bytes], /) -> None: ...
    def set_root(self, fd: int, /) -> None: ...
    def allows(self, directory: bytes, /) -> bool: ...
    def __len__(self) -> int: ...


class Receiver(Protocol):
    """The receiver's poll set (``_fastpath.Receiver`` or :class:`PollReceiver`)."""

    @property
    def answered(self) -> int: ...
    def register(self, fd: int, /) -> None: ...
    def unregister(self, fd: int, /) -> None: ...
    def fast(self, fd: int, cache: DirCache | None, /) -> None: ...
    def wait(self, notif: object, fast: bool, /) -> tuple[int, int, int, int]: ...


class PollReceiver:
    """:class:`Receiver` on ``select.poll``, answering nothing itself."""

    answered = 0

    def __init__(self) -> None:
        self._poll = select.poll()
        #: Events of the last poll not yet returned, last first.
        self._ready: list[tuple[int, int]] = []

    def register(self, fd: int) -> None:
        self._poll.register(fd, select.POLLIN)

    def unregister(self, fd: int) -> None:
        self._poll.unregister(fd)
        self._ready = [event for event in self._ready if event[0] != fd]

    def fast(self, fd: int, cache: DirCache | None) -> None:
        pass

    def wait(self, notif: object, fast: bool) -> tuple[int, int, int, int]:
        ready = self._ready
        while not ready:
            ready.extend(reversed(self._poll.poll()))
        fd, mask = ready.pop()
        return fd, mask, STATE_EVENT, 0


def receiver() -> Receiver:
    """A new poll set for a receiver: the compiled one when it runs."""
    if ENABLED:
        rx: Receiver = _fastpath.Receiver()
        return rx
    return PollReceiver()


def dir_cache(plan: NotifyPlan) -> DirCache | None:
    """A new cache for a session deciding with *plan* (None when the
    compiled fast path does not run).  Emptied whenever the plan's rules
    change, and only directories decided under the rules in force are
    ever added (:meth:`DirCache.add` takes the generation that decided)."""
    if not ENABLED:
        return None
    cache: DirCache = _fastpath.DirCache()

    def changed(_generation: int) -> None:
        # The generation and its stops, read together from the rules in
        # force (a later change calls this again).
        generation, stops = plan.stops(Category.READ)
        cache.clear(generation, [s.encode("utf-8", "surrogateescape") for s in stops])

    changed(plan.generation)
    plan.watch(changed)
    return cache


def status() -> str:
    """One line for ``stockade check``."""
    if ENABLED:
        return "compiled (quick opens answered without Python)"
    if _fastpath is not None:
        return "off (STOCKADE_FASTPATH=0)"
    return "not built (no C compiler or Python headers at install): every call in Python"
