"""Relaying bytes between a sandboxed command's pseudo-terminal and its user.

With ``pty`` on, the command's stdin, stdout and stderr are the slave of a
pseudo-terminal made for the run (see :mod:`stockade.kernel.pty`), and the
host keeps the master.  :func:`relay` copies what the user types (a
descriptor, or bytes given up front) to the master and what the command
writes from the master to the user, until the command exits; :func:`drain`
collects what it wrote just before.

End of input on a source that is not a terminal is passed on as the
terminal's end-of-file character (VEOF): a pseudo-terminal has no other
way to say it, and a shell reading a line, or ``cat``, takes it as EOF.
From a terminal, end of input is the user's own ``^D``, relayed as a byte.
"""

from __future__ import annotations

import errno
import os
import select
import time

from stockade.kernel import pty

CHUNK = 65536
#: How long :func:`drain` waits for the last holder of the slave to go.
DRAIN_TIMEOUT = 2.0

#: A sink: a descriptor to write to, or a list that collects chunks.
Sink = int | list[bytes]


def _emit(sink: Sink | None, data: bytes) -> Sink | None:
    """Write *data* to *sink*; a descriptor that fails is dropped (the
    user's terminal went away: what follows is discarded)."""
    if sink is None:
        return None
    if isinstance(sink, list):
        sink.append(data)
        return sink
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(sink, view) :]
        except InterruptedError:
            continue
        except BlockingIOError:
            poller = select.poll()
            poller.register(sink, select.POLLOUT)
            poller.poll()
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                return None
            raise
    return sink


def relay(
    master: int,
    exit_fd: int,
    *,
    source: int | bytes,
    sink: Sink | None,
    deadline: float | None = None,
    wake_fd: int | None = None,
) -> bool:
    """Copy *source* to the terminal's *master* and its output to *sink*
    until *exit_fd* becomes readable (the command exited: returns True) or
    *deadline* (a ``time.monotonic()`` value) passes (returns False).

    *source* is a descriptor read as data arrives (not read again once it
    reports end of input), or bytes typed all at once and followed by end
    of file.  Raises OSError for a failure of the master itself.

    *wake_fd* is the read end of the host's ``signal.set_wakeup_fd`` pipe,
    if it has one: a signal whose handler must act while we wait (the
    command line forwards them to the command) may arrive after the
    interpreter last looked for one and before the poll begins, and then
    nothing but this descriptor ends the poll for the handler to run.
    """
    os.set_blocking(master, False)
    pending = bytearray()
    source_fd: int | None = None
    eof_sent = False
    if isinstance(source, int):
        source_fd = source
    else:
        pending += source
    master_open = True
    while True:
        if source_fd is None and not pending and not eof_sent:
            pending += pty.eof_char(master)
            eof_sent = True
        poller = select.poll()
        poller.register(exit_fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        if master_open:
            poller.register(master, select.POLLIN | (select.POLLOUT if pending else 0))
        if source_fd is not None and not pending:
            poller.register(source_fd, select.POLLIN)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        events = dict(poller.poll(None if timeout is None else timeout * 1000))
        if not events:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            continue
        readable = {fd for fd, ev in events.items() if ev & ~select.POLLOUT}
        if wake_fd is not None and wake_fd in readable:
            # The handler has run by now (on the return from poll).
            drain_wakeups(wake_fd)
        writable = events.get(master, 0) & select.POLLOUT
        if master in readable:
            try:
                data = os.read(master, CHUNK)
            except BlockingIOError:
                data = None
            except OSError as err:
                if err.errno != errno.EIO:
                    raise
                # Every slave descriptor is closed; the command may still run.
                master_open = False
                data = None
            if data:
                sink = _emit(sink, data)
        if exit_fd in readable:
            return True
        if writable:
            try:
                del pending[: os.write(master, pending)]
            except BlockingIOError:
                pass
        if source_fd is not None and source_fd in readable:
            try:
                data = os.read(source_fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError as err:
                # A terminal that hung up, or a stdin that was never open.
                if err.errno not in (errno.EIO, errno.EBADF):
                    raise
                data = b""
            if data:
                pending += data
            else:
                eof_from_tty = os.isatty(source_fd)
                source_fd = None
                # From a terminal, end of input is a hang-up: the user's ^D
                # already came through as a byte.
                eof_sent = eof_from_tty


def drain_wakeups(wake_fd: int) -> None:
    """Empty a (non-blocking) ``signal.set_wakeup_fd`` pipe."""
    while True:
        try:
            if not os.read(wake_fd, 512):
                return
        except BlockingIOError:
            return


def drain(master: int, sink: Sink | None, timeout: float = DRAIN_TIMEOUT) -> None:
    """Copy what is left on *master* to *sink*, once the command and every
    process of the sandbox are gone: until EIO (no slave open and nothing
    buffered), or *timeout* seconds without an end."""
    os.set_blocking(master, False)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        poller = select.poll()
        poller.register(master, select.POLLIN)
        if not poller.poll(remaining * 1000):
            return
        try:
            data = os.read(master, CHUNK)
        except BlockingIOError:
            continue
        except OSError as err:
            if err.errno == errno.EIO:
                return
            raise
        if not data:
            return
        sink = _emit(sink, data)
