"""Events (SPEC section 6): what the supervisor decided, as data.

An :class:`Event` is made only when someone will read it (a denial, an
``on_event`` callback, ``--log``, an audit plan): allowed calls on the hot
path make none.
"""

from __future__ import annotations

import errno as errno_mod
import time
from collections.abc import Callable
from typing import Any

from stockade._record import record

#: Actions an event reports.
ALLOW = "allow"
DENY = "deny"
AUDIT = "audit"


@record(frozen=True)
class Event:
    """One decision or one process event.

    ``target`` is the path (resolved in the sandbox's view) or the address
    (``ADDR!PORT``); ``rule`` the rule that decided, or None when the
    category's default did; ``argv`` is set for exec.
    """

    time: float
    pid: int
    syscall: str
    category: str
    target: str
    action: str
    errno: int
    rule: str | None = None
    argv: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict."""
        out: dict[str, Any] = {
            "time": self.time,
            "pid": self.pid,
            "syscall": self.syscall,
            "category": self.category,
            "target": self.target,
            "action": self.action,
            "errno": self.errno,
            "rule": self.rule,
        }
        if self.argv is not None:
            out["argv"] = list(self.argv)
        return out

    def to_json(self) -> str:
        """One JSON line (without the newline)."""
        import json  # only for logs and callbacks that ask: not on every run's path

        return json.dumps(self.to_dict(), sort_keys=True)


def make(
    pid: int,
    syscall: str,
    category: str,
    target: str,
    action: str,
    err: int,
    rule: str | None,
    argv: tuple[str, ...] | None = None,
) -> Event:
    """An event stamped now."""
    return Event(time.time(), pid, syscall, category, target, action, err, rule, argv)


def callback_verdict(on_event: Callable[[Event], Any], event: Event) -> tuple[str, int]:
    """Ask *on_event* about *event*; returns ``(action, errno)``.

    The callback may only narrow what the policy allows: ``None`` or
    ``"allow"`` keeps the policy's verdict, ``"audit"`` keeps it and marks
    the event, ``"deny"`` denies with EACCES and an int denies with that
    errno.  Anything else, and any exception, denies (EACCES).
    """
    try:
        answer = on_event(event)
    except Exception:
        return DENY, errno_mod.EACCES
    if answer is None or answer == "allow":
        return event.action, event.errno
    if answer == "audit":
        return (AUDIT, 0) if event.action != DENY else (DENY, event.errno)
    if answer == "deny":
        return DENY, errno_mod.EACCES
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 < answer < 4096:
        return DENY, answer
    return DENY, errno_mod.EACCES


class EventLog:
    """``--log FILE`` / policy ``log``: events as JSON lines; ``-`` is
    standard error.  Thread-safe (workers write to it)."""

    def __init__(self, target: str) -> None:
        import sys
        import threading

        self._lock = threading.Lock()
        self._own = target != "-"
        self._file: Any = (
            sys.stderr if not self._own else open(target, "a", buffering=1)  # noqa: SIM115 - lives with the sandbox
        )

    def __call__(self, event: Event) -> None:
        self.write(event.to_dict())

    def write(self, record: dict[str, Any]) -> None:
        """Write one JSON line."""
        import json  # cached after the first event

        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        """Close the file (not standard error)."""
        with self._lock:
            if self._file is not None and self._own:
                self._file.close()
            self._file = None
