"""The threads stockade starts in its host take none of the host's signals.

A signal sent to a process goes to any of its threads that does not block
it, and Python runs the handler only when the main thread next wakes: a
host blocked in poll() (the command line relaying a terminal) never saw a
SIGHUP that the supervisor's thread had taken, and hung.
"""

from __future__ import annotations

import signal
import threading

import stockade
from conftest import SYSTEM

#: Signals a host handles: forwarded to the command, or KeyboardInterrupt.
HOST_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGCHLD, signal.SIGWINCH, signal.SIGTSTP)  # fmt: skip


def blocked(native_id: int) -> set[int]:
    with open(f"/proc/self/task/{native_id}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}
    raise AssertionError("no SigBlk line")


def test_stockade_threads_block_the_hosts_signals() -> None:
    sb = stockade.Sandbox(read=SYSTEM)  # writes restricted: supervised
    assert sb.plan.notify is not None
    assert sb.run(["/bin/true"]).returncode == 0
    ours = [
        t for t in threading.enumerate()
        if t.name in ("stockade-supervisor", "stockade-forkserver") and t.native_id is not None
    ]  # fmt: skip
    assert {t.name for t in ours} == {"stockade-supervisor", "stockade-forkserver"}
    for thread in ours:
        assert thread.native_id is not None
        missing = set(HOST_SIGNALS) - blocked(thread.native_id)
        assert not missing, (thread.name, sorted(missing))
    # The main thread's own mask is untouched.
    assert not set(HOST_SIGNALS) & blocked(threading.main_thread().native_id or 0)
