"""No pathname UNIX socket outside the write rules is reached by racing a
connect (SPEC section 2: "UNIX sockets follow the filesystem rules";
section 8: "not through ... races").

Landlock (ABI 7) does not mediate connect(2) to a pathname UNIX socket, so
the supervisor decides every connect and performs it itself, on its own
copy of the address.  An inet connect the port rules allow is the common
case and has a fast path; these tests attack exactly what a fast path that
let the kernel run the call (SECCOMP_USER_NOTIF_FLAG_CONTINUE) would
expose.  The kernel would read both of these again after the decision:

- the sockaddr buffer: a second thread flips it between an allowed inet
  address and the path of a socket outside the write rules;
- the descriptor number: a third thread keeps putting an inet socket and a
  UNIX socket at the number the first thread connects (dup2), so that the
  supervisor may see an inet socket and the kernel use a UNIX one.

The first thread connects that number in a tight loop, and also an
AF_INET and an AF_UNIX socket of its own, on the same flipped buffer.  The
host side counts the connections its denied listener accepts: none, while
the allowed TCP listener gets many and the denied path is refused many
times (so both spellings and both socket kinds really reached the
decision).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CountingListener, run_probe

SECONDS = 3.0

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")

RACE = """
import threading, time, struct
PATH, PORT, SECONDS = {path!r}, {port}, {seconds}
SIZE = 110  # sizeof(struct sockaddr_un)
unix = struct.pack("=H", socket.AF_UNIX) + PATH.encode()
inet = struct.pack("=H", socket.AF_INET) + struct.pack("!H", PORT) + bytes([127, 0, 0, 1])
unix, inet = unix.ljust(SIZE, b"\\0"), inet.ljust(SIZE, b"\\0")
buf = ctypes.create_string_buffer(inet, SIZE)
stop = time.monotonic() + SECONDS
def flipper():
    while time.monotonic() < stop:
        ctypes.memmove(buf, unix, SIZE)
        ctypes.memmove(buf, inet, SIZE)
# The number the first thread connects: dup2 keeps changing what it is.
TARGET = os.dup(0)
def swapper():
    while time.monotonic() < stop:
        for family in (socket.AF_INET, socket.AF_UNIX):
            s = socket.socket(family, socket.SOCK_STREAM)
            os.dup2(s.fileno(), TARGET)
            s.close()
counts = {{}}
def count(kind, ret):
    key = kind + ":" + ("ok" if ret == 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
    counts[key] = counts.get(key, 0) + 1
def connect(fd):
    return libc.syscall(ctypes.c_long(42), ctypes.c_long(fd), buf, ctypes.c_long(SIZE))
threading.Thread(target=flipper, daemon=True).start()
threading.Thread(target=swapper, daemon=True).start()
while time.monotonic() < stop:
    count("swapped", connect(TARGET))
    for family in (socket.AF_INET, socket.AF_UNIX):
        s = socket.socket(family, socket.SOCK_STREAM)
        count("inet" if family == socket.AF_INET else "unix", connect(s.fileno()))
        s.close()
attempt("counts", lambda: json.dumps(counts))
"""


@pytest.fixture
def listeners(workdir: Path) -> Iterator[tuple[CountingListener, CountingListener, str]]:
    denied_dir = workdir / "denied"
    denied_dir.mkdir()
    path = str(denied_dir / "s")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(128)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(128)
    pair = (CountingListener(unix), CountingListener(tcp), path)
    try:
        yield pair
    finally:
        pair[0].close()
        pair[1].close()


@pytest.mark.parametrize("net", ["any-address", "one-address"])
def test_racing_the_buffer_and_the_descriptor_never_reaches_a_denied_unix_socket(
    workdir: Path, listeners: tuple[CountingListener, CountingListener, str], net: str
) -> None:
    denied, allowed, path = listeners
    port = allowed.sock.getsockname()[1]
    writable = workdir / "ok"
    writable.mkdir()
    # "*:PORT" is held by Landlock alone (the fast path); "127.0.0.1:PORT"
    # names an address, which only the supervisor can hold.
    host = "*" if net == "any-address" else "127.0.0.1"
    res, v = run_probe(
        RACE.format(path=path, port=port, seconds=SECONDS),
        write=[str(writable)],
        net_allow=[f"{host}:{port}"],
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    counts = json.loads(v["counts"]["value"])
    assert denied.accepted == 0, counts
    # The race really ran: the allowed inet address was connected, from
    # the sandbox's own inet sockets and through the swapped number, and
    # the denied path was refused from its own UNIX sockets and through
    # the swapped number.
    assert allowed.accepted > 0, counts
    assert counts.get("inet:ok", 0) > 0 and counts.get("unix:EACCES", 0) > 0, counts
    assert counts.get("swapped:ok", 0) > 0 and counts.get("swapped:EACCES", 0) > 0, counts
    assert counts.get("unix:ok", 0) == 0, counts
    denials = [d for d in res.denials if d.category == "write" and d.syscall == "connect"]
    assert denials and denials[0].target == path


SHARED = """
import mmap, time, struct
PATH, PORT, SECONDS = {path!r}, {port}, {seconds}
SIZE = 110
unix = struct.pack("=H", socket.AF_UNIX) + PATH.encode()
inet = struct.pack("=H", socket.AF_INET) + struct.pack("!H", PORT) + bytes([127, 0, 0, 1])
unix, inet = unix.ljust(SIZE, b"\\0"), inet.ljust(SIZE, b"\\0")
# Memory shared with a second process, which flips it: this process keeps
# one thread, so its inet connects take the supervisor's fast path.
mem = mmap.mmap(-1, 4096)
buf = (ctypes.c_char * SIZE).from_buffer(mem)
buf[:] = inet
stop = time.monotonic() + SECONDS
pid = os.fork()
if pid == 0:
    while time.monotonic() < stop:
        buf[:] = unix
        buf[:] = inet
    os._exit(0)
counts = {{}}
while time.monotonic() < stop:
    for family in (socket.AF_INET, socket.AF_UNIX):
        s = socket.socket(family, socket.SOCK_STREAM)
        ret = libc.syscall(ctypes.c_long(42), ctypes.c_long(s.fileno()), buf, ctypes.c_long(SIZE))
        name = "inet" if family == socket.AF_INET else "unix"
        key = name + ":" + ("ok" if ret == 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
        counts[key] = counts.get(key, 0) + 1
        s.close()
os.waitpid(pid, 0)
attempt("counts", lambda: json.dumps(counts))
"""


def test_a_single_threaded_caller_racing_shared_memory_never_reaches_a_denied_unix_socket(
    workdir: Path, listeners: tuple[CountingListener, CountingListener, str]
) -> None:
    denied, allowed, path = listeners
    port = allowed.sock.getsockname()[1]
    writable = workdir / "ok"
    writable.mkdir()
    res, v = run_probe(
        SHARED.format(path=path, port=port, seconds=SECONDS),
        write=[str(writable)],
        net_allow=[f"*:{port}"],
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    counts = json.loads(v["counts"]["value"])
    assert denied.accepted == 0, counts
    assert allowed.accepted > 0 and counts.get("inet:ok", 0) > 0, counts
    assert counts.get("unix:EACCES", 0) > 0 and counts.get("unix:ok", 0) == 0, counts


def test_a_descriptor_table_is_shared_only_by_threads() -> None:
    # What lets the fast path trust a one-thread caller's table: no other
    # process can share it (plan/filter.py refuses CLONE_FILES alone).
    _, v = run_probe(
        """
import threading
SIGCHLD, CLONE_FILES, CLONE_VM, CLONE_VFORK = 17, 0x400, 0x100, 0x4000
def child(flags):
    pid = sys_call(56, flags, 0, 0, 0, 0)
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
attempt("shared table", lambda: child(SIGCHLD | CLONE_FILES))
attempt("fork", lambda: child(SIGCHLD))
t = threading.Thread(target=lambda: None)
t.start()
attempt("thread", lambda: t.join())
"""
    )
    assert v["shared table"]["errno"] == errno.EPERM
    assert v["fork"] == {"name": "fork", "errno": 0, "value": 7}
    assert v["thread"]["errno"] == 0
