"""Shared fixtures: run probes inside real sandboxes and read their verdicts.

A probe is a small Python program run by the system interpreter
(``/usr/bin/python3``, readable by every user) inside a sandbox.  It
attempts operations and prints one JSON line per attempt: the errno it got
(0 for success) and, optionally, a value.  Tests assert the errno, never
just "it failed".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stockade

#: The interpreter that runs probes inside sandboxes.
PROBE_PY = "/usr/bin/python3"
#: What a probe needs to start: the system directories, read and execute.
SYSTEM = ["/usr", "/lib", "/lib64", "/bin", "/etc"]

PROBE_PRELUDE = """
import errno, json, os, sys, socket, ctypes
def attempt(name, fn):
    try:
        value = fn()
        plain = isinstance(value, (int, str, list, type(None)))
        out = {"name": name, "errno": 0, "value": value if plain else repr(value)}
    except OSError as e:
        out = {"name": name, "errno": e.errno, "value": None}
    print(json.dumps(out), flush=True)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sys_call(nr, *args):
    ret = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret
"""


def probe_code(body: str) -> str:
    """A full probe program: the prelude plus *body*."""
    return PROBE_PRELUDE + textwrap.dedent(body)


def verdicts(stdout: bytes | str) -> dict[str, dict[str, Any]]:
    """Parse a probe's output into ``{name: {"errno": ..., "value": ...}}``."""
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            out[record["name"]] = record
    return out


def run_probe(body: str, **sandbox: Any) -> tuple[stockade.Result, dict[str, dict[str, Any]]]:
    """Run a probe in ``Sandbox(read=SYSTEM + read, **sandbox)``."""
    sandbox["read"] = SYSTEM + list(sandbox.get("read", []))
    sb = stockade.Sandbox(**sandbox)
    res = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60)
    assert res.stdout is not None
    return res, verdicts(res.stdout)


def stockade_cli(
    *args: str, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the ``stockade`` command line with this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "stockade.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory every user can enter (tmp_path's parents may not be)."""
    base = Path(os.environ.get("STOCKADE_TEST_TMP", "/tmp"))
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="stockade-test-", dir=base))
    d.chmod(0o755)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def is_root() -> bool:
    return os.geteuid() == 0


class CountingListener:
    """Accepts and counts connections on *sock* until closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        # shutdown wakes the accept; close alone does not.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)
