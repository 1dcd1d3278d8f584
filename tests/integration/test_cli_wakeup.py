"""``stockade run`` forwards a signal even when nothing interrupts its wait.

CPython's C-level handler only notes a signal; the Python handler (which
forwards it to the command) runs when the main thread next looks: between
bytecodes, or when a system call fails with EINTR.  A signal taken after
the last look and before the wait's poll() begins leaves exactly this
state: noted, with the main thread blocked in a poll nothing interrupts.
``stockade run -i`` sent SIGHUP right after a line it relayed hung so, now
and then (tests/integration/test_pty.py, under load).

That race is a matter of nanoseconds; the state it leaves is made here on
purpose.  The command line's own code runs in this process, its main
thread blocking the signal: the kernel hands it to another thread, whose
C-level handler notes it, and the main thread's poll is not interrupted.
Only the wakeup pipe (``signal.set_wakeup_fd``), which the C-level handler
writes to, can end that poll.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import stockade
from conftest import SYSTEM
from stockade.cli import run as cli_run

WAIT = 30.0
#: poll, select, pselect6, ppoll (x86_64).
WAIT_SYSCALLS = {"7", "23", "270", "271"}
#: The functions the command line waits in while the command runs.
WAIT_FUNCTIONS = {"relay", "_exited", "exited"}


def waiting(thread: threading.Thread) -> bool:
    """Whether *thread* is blocked in the command line's wait for the command."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None or frame.f_code.co_name not in WAIT_FUNCTIONS:
        return False
    with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
        return f.read().split()[0] in WAIT_SYSCALLS


@pytest.fixture
def host_signals() -> Iterator[None]:
    """The handlers, wakeup descriptor, mask and stdin the command line
    changes, put back afterwards (pytest's SIGINT handler among them)."""
    saved = {sig: signal.getsignal(sig) for sig in cli_run.FORWARDED}
    stdin = os.dup(0)
    # The relay reads stdin: never a developer's terminal (nor raw mode on it).
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        os.dup2(stdin, 0)
        os.close(stdin)


@pytest.mark.parametrize("pty", [False, True], ids=["plain", "pty"])
def test_a_signal_that_interrupts_no_wait_is_forwarded(
    pty: bool, workdir: Path, host_signals: None
) -> None:
    started = workdir / "started"
    sandbox = stockade.Sandbox(read=SYSTEM, write=[workdir], pty=pty, timeout=WAIT)
    main = threading.current_thread()
    sent = threading.Event()

    def send_when_waiting() -> None:
        # This thread does not block SIGTERM: it takes it, not the main one.
        deadline = time.monotonic() + WAIT
        while not (started.exists() and waiting(main)) and time.monotonic() < deadline:
            time.sleep(0.01)
        if time.monotonic() < deadline:
            os.kill(os.getpid(), signal.SIGTERM)
            sent.set()

    sender = threading.Thread(target=send_when_waiting, daemon=True)
    sender.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    argv = ["/bin/sh", "-c", f"touch {started}; exec /bin/sleep 300"]
    status = cli_run._supervise(sandbox, argv, sandbox.policy)
    sender.join()
    assert sent.is_set()
    # Forwarded at once: the command died of it, with no timeout reached.
    assert status == 128 + signal.SIGTERM
