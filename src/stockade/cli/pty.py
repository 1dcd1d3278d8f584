"""``stockade run -i``: the user's terminal, relayed to the sandbox's own.

The command runs on a new pseudo-terminal (its controlling terminal; see
:mod:`stockade.launch.terminal`); the user's terminal is never passed in,
so nothing inside can reach its job control or type into it.  While the
command runs, the user's terminal is in raw mode, so that every key
(``^C``, ``^Z``, ``^D``) reaches the command's terminal as a byte and its
line discipline, not ours, turns it into a signal or end of file.  The
mode is restored on every way out: return, exception, and a SIGTSTP sent
to stockade (it stops with the terminal restored and raws it again on
SIGCONT).  The window size is copied at start and on every SIGWINCH.

Imported only for ``-i``: the plain ``run`` path does not load termios.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import time
import tty
from typing import Any

from stockade.kernel import pty
from stockade.launch import terminal


def _open_at_start(fd: int) -> bool:
    """Whether *fd* (0, 1 or 2) is the descriptor we were started with.
    Python leaves sys.stdin (stdout, stderr) None when it was closed: the
    number may since belong to another descriptor (the master, even)."""
    return (sys.stdin, sys.stdout, sys.stderr)[fd] is not None


def user_terminal() -> int | None:
    """The first of stdin, stdout, stderr that is a terminal, if any."""
    for fd in (0, 1, 2):
        if _open_at_start(fd) and os.isatty(fd):
            return fd
    return None


def initial_size() -> tuple[int, int] | None:
    """``(columns, lines)`` of the user's terminal, for the new one."""
    fd = user_terminal()
    if fd is None:
        return None
    try:
        rows, cols, _, _ = pty.get_winsize(fd)
    except OSError:
        return None
    return (cols, rows) if rows and cols else None


class _RawMode:
    """The user's terminal (stdin) in raw mode, and back."""

    def __init__(self) -> None:
        self.saved: list[Any] | None = None
        if _open_at_start(0) and os.isatty(0):
            self.saved = termios.tcgetattr(0)

    def enter(self) -> None:
        if self.saved is not None:
            tty.setraw(0, termios.TCSADRAIN)

    def leave(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self.saved)


def interact(proc: Any, timeout: float | None, wake_fd: int | None = None) -> bool:
    """Relay between the user and the command's terminal until the command
    exits (True) or *timeout* passes (False); then end the sandbox and copy
    what it wrote last.  The user's terminal is as it was on return.
    *wake_fd*: see :func:`stockade.launch.terminal.relay`."""
    master = proc.pty.fileno()
    size_from = user_terminal()

    def copy_size(_signum: int = 0, _frame: object = None) -> None:
        if size_from is None:
            return
        try:
            pty.set_winsize(master, pty.get_winsize(size_from))
        except OSError:
            pass  # the user's terminal went away; keep the last size

    raw = _RawMode()

    def suspend(_signum: int, _frame: object) -> None:
        # Stopped from outside (kill -TSTP): stop with the terminal usable.
        raw.leave()
        os.kill(os.getpid(), signal.SIGSTOP)
        raw.enter()
        copy_size()

    deadline = None if timeout is None else time.monotonic() + timeout
    old_winch = signal.signal(signal.SIGWINCH, copy_size)
    old_tstp = signal.signal(signal.SIGTSTP, suspend)
    try:
        copy_size()
        raw.enter()
        source: int | bytes = 0 if _open_at_start(0) else b""
        sink = 1 if _open_at_start(1) else None
        exited = terminal.relay(master, proc.exit_fd, source=source, sink=sink, deadline=deadline,
                                wake_fd=wake_fd)  # fmt: skip
        proc.kill_tree()
        terminal.drain(master, sink)
    finally:
        raw.leave()
        signal.signal(signal.SIGWINCH, old_winch)
        signal.signal(signal.SIGTSTP, old_tstp)
        proc.pty.close()
    return exited
