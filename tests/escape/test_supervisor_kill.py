"""Killing the supervisor while a call waits on it allows nothing (SPEC
section 8: "no pending system call is ever allowed by default").

``stockade run`` is the supervisor.  The sandboxed program opens a FIFO
under a policy that routes its reads to the supervisor, which opens the
FIFO itself and so blocks, with the program's call pending.  We SIGKILL
the supervisor.  The listener dies with it (a pending call then fails with
ENOSYS, never succeeds), and the fork server, on its host's death, kills
the sandbox.  The program would record any answer it got in a marker file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import PROBE_PY, SYSTEM

PROGRAM = """
import os, sys
fifo, marker = sys.argv[1], sys.argv[2]
print(os.getpid(), flush=True)
try:
    with open(fifo) as f:
        got = "opened"
except OSError as e:
    got = "errno %d" % e.errno
with open(marker, "w") as m:
    m.write(got)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_the_supervisor_kills_the_sandbox_and_allows_nothing(workdir: Path) -> None:
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    marker = workdir / "marker"
    cmd = [sys.executable, "-m", "stockade.cli.main", "run",
           *[f"-r{p}" for p in SYSTEM], "-w", str(workdir),
           "-c", f"allow/read+{workdir}/f*",  # a glob: reads go to the supervisor
           "--", PROBE_PY, "-c", PROGRAM, str(fifo), str(marker)]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as cli:
        try:
            assert cli.stdout is not None
            pid = int(cli.stdout.readline())
            # Wait until the call is pending in the supervisor: the program
            # sleeps in the kernel (seccomp_do_user_notification).
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with open(f"/proc/{pid}/wchan") as f:
                    if "seccomp" in f.read():
                        break
                time.sleep(0.02)
            with open(f"/proc/{pid}/wchan") as f:
                assert "seccomp" in f.read()
            cli.send_signal(signal.SIGKILL)
            cli.wait(timeout=20)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(pid)
        finally:
            cli.kill()
    # Nobody ever opened the FIFO for the program: a writer would not block.
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        assert err.errno == 6  # ENXIO: no reader, none ever got it open
    else:
        os.close(fd)
        raise AssertionError("the FIFO has a reader: the open went through")
    assert not marker.exists() or marker.read_text() != "opened"
