"""No pathname UNIX socket outside the write rules is reached by turning an
abstract address into a path while the call is decided (SPEC section 2:
"UNIX sockets follow the filesystem rules"; section 8: "not through ...
races"; stockade issue 5, "No TOCTOU").

An abstract address is the one the supervisor cannot connect for the
sandbox (it has no Landlock domain, and Landlock scopes abstract sockets to
the sandbox), so such a call runs in the kernel, which reads the sockaddr
again.  Here the buffer flips between an abstract address (a listener of
the sandbox's own) and the path of a socket outside the write rules: from
a second thread of the caller, or from another process through a
``MAP_SHARED`` mapping while the caller keeps one thread.  The host's
denied listener must never accept.  And a one-thread client whose address
nobody else can write (D-Bus style) still reaches a listener of another
process in the same sandbox, by connect and by sendto.
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

SETUP = """
import mmap, threading, time, struct
PATH, SECONDS, NAME = {path!r}, {seconds}, {name!r}
SIZE = 110  # sizeof(struct sockaddr_un): both spellings have the same length
unix = (struct.pack("=H", socket.AF_UNIX) + PATH.encode()).ljust(SIZE, b"\\0")
abstract = (struct.pack("=H", socket.AF_UNIX) + b"\\0" + NAME.encode()).ljust(SIZE, b"\\0")
# The sandbox's own abstract listener, bound with the same padded address.
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(abstract[2:])
server.listen(4096)
stop = time.monotonic() + SECONDS
counts = {{}}
def count(kind, ret):
    key = kind + ":" + ("ok" if ret == 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
    counts[key] = counts.get(key, 0) + 1
"""

THREADS = """
buf = ctypes.create_string_buffer(abstract, SIZE)
def flipper():
    while time.monotonic() < stop:
        ctypes.memmove(buf, unix, SIZE)
        ctypes.memmove(buf, abstract, SIZE)
def acceptor():
    server.settimeout(0.2)
    while time.monotonic() < stop + 1:
        try:
            server.accept()[0].close()
        except OSError:
            pass
threading.Thread(target=flipper, daemon=True).start()
threading.Thread(target=acceptor, daemon=True).start()
while time.monotonic() < stop:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    count("flipped", libc.syscall(ctypes.c_long(42), ctypes.c_long(s.fileno()), buf,
                                  ctypes.c_long(SIZE)))
    s.close()
    # The two spellings alone, from the same threaded caller.
    for kind, addr in (("path", unix), ("abstract", abstract)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        one = ctypes.create_string_buffer(addr, SIZE)
        count(kind, libc.syscall(ctypes.c_long(42), ctypes.c_long(s.fileno()), one,
                                 ctypes.c_long(SIZE)))
        s.close()
attempt("counts", lambda: json.dumps(counts))
"""

SHARED = """
mem = mmap.mmap(-1, 4096)
buf = (ctypes.c_char * SIZE).from_buffer(mem)
buf[:] = abstract
pid = os.fork()
if pid == 0:
    while time.monotonic() < stop:
        buf[:] = unix
        buf[:] = abstract
    os._exit(0)
# One thread: the listener's backlog is drained by connecting non-blocking
# and accepting in turn.
server.setblocking(False)
while time.monotonic() < stop:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    count("flipped", libc.syscall(ctypes.c_long(42), ctypes.c_long(s.fileno()), buf,
                                  ctypes.c_long(SIZE)))
    s.close()
    try:
        while True:
            server.accept()[0].close()
    except BlockingIOError:
        pass
os.waitpid(pid, 0)
attempt("counts", lambda: json.dumps(counts))
"""


@pytest.fixture
def denied(workdir: Path) -> Iterator[tuple[CountingListener, str]]:
    denied_dir = workdir / "denied"
    denied_dir.mkdir()
    path = str(denied_dir / "s")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(4096)
    listener = CountingListener(unix)
    try:
        yield listener, path
    finally:
        listener.close()


@pytest.mark.parametrize("writer", ["thread", "shared"])
def test_turning_an_abstract_address_into_a_path_never_reaches_a_denied_socket(
    workdir: Path, denied: tuple[CountingListener, str], writer: str
) -> None:
    listener, path = denied
    writable = workdir / "ok"
    writable.mkdir()
    body = SETUP.format(path=path, seconds=SECONDS, name=f"stockade-race-{os.getpid()}-{writer}")
    res, v = run_probe(
        body + (THREADS if writer == "thread" else SHARED), write=[str(writable)], timeout=60
    )
    assert res.returncode == 0, res.stderr
    counts = json.loads(v["counts"]["value"])
    assert listener.accepted == 0, counts
    # The race really ran: both spellings reached the supervisor through
    # the flipped buffer (the path one refused as a path).
    assert counts.get("flipped:EACCES", 0) > 0, counts
    assert sum(n for k, n in counts.items() if k.startswith("flipped:")) > 10, counts
    if writer == "thread":
        assert counts.get("path:EACCES", 0) > 0 and counts.get("path:ok", 0) == 0, counts
    denials = [d for d in res.denials if d.syscall == "connect"]
    assert any(d.target == path for d in denials), denials


def test_a_one_thread_client_reaches_an_abstract_socket_of_the_sandbox(workdir: Path) -> None:
    writable = workdir / "ok"
    writable.mkdir()
    name = f"\0stockade-bus-{os.getpid()}"
    _, v = run_probe(
        f"""
import time
NAME = {name!r}
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(NAME)
server.listen(8)
dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dgram.bind(NAME + "-dgram")
pid = os.fork()
if pid == 0:
    # A client process with one thread, its address on its own stack.
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(NAME)
    c.sendall(b"hello")
    c.close()
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d.sendto(b"datagram", NAME + "-dgram")
    os._exit(0)
conn, _ = server.accept()
attempt("stream", lambda: conn.recv(16).decode())
attempt("datagram", lambda: dgram.recv(16).decode())
attempt("client", lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""",
        write=[str(writable)],
        timeout=60,
    )
    assert v["stream"] == {"name": "stream", "errno": 0, "value": "hello"}
    assert v["datagram"] == {"name": "datagram", "errno": 0, "value": "datagram"}
    assert v["client"]["value"] == 0


def test_memory_is_shared_with_another_process_only_by_vfork() -> None:
    # What lets the supervisor trust a one-thread caller's memory once its
    # parent is not sharing it (kcmp): CLONE_VM without CLONE_THREAD only
    # with CLONE_VFORK, and never with CLONE_PARENT (plan/filter.py).
    _, v = run_probe(
        """
SIGCHLD, CLONE_VM, CLONE_VFORK, CLONE_PARENT = 17, 0x100, 0x4000, 0x8000
def refused(flags):
    # Refused by the filter before any child exists (none could run here).
    return sys_call(56, flags, 0, 0, 0, 0)
attempt("shared memory", lambda: refused(SIGCHLD | CLONE_VM))
attempt("vfork as a sibling", lambda: refused(SIGCHLD | CLONE_VM | CLONE_VFORK | CLONE_PARENT))
# posix_spawn is glibc's clone(CLONE_VM | CLONE_VFORK): it still works.
def spawn():
    pid = os.posix_spawn("/usr/bin/true", ["true"], {})
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
attempt("posix_spawn", spawn)
""",
        exec=["/usr/bin"],
    )
    assert v["shared memory"]["errno"] == errno.EPERM
    assert v["vfork as a sibling"]["errno"] == errno.EPERM
    assert v["posix_spawn"] == {"name": "posix_spawn", "errno": 0, "value": 0}


def test_an_address_in_a_file_mapping_is_taken_once_copied(workdir: Path) -> None:
    # A private file mapping shows the file until a page is written: a
    # write(2) to the file by anyone would change the address under the
    # kernel's second read.  Once the page is copied, it is the caller's.
    writable = workdir / "ok"
    writable.mkdir()
    name = f"stockade-file-{os.getpid()}"
    _, v = run_probe(
        f"""
import mmap, struct
NAME = {name!r}
SIZE = 110
abstract = (struct.pack("=H", socket.AF_UNIX) + b"\\0" + NAME.encode()).ljust(SIZE, b"\\0")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(abstract[2:])
server.listen(8)
path = {str(writable / "addr")!r}
with open(path, "wb") as f:
    f.write(abstract.ljust(4096, b"\\0"))
fd = os.open(path, os.O_RDWR)
mem = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
buf = (ctypes.c_char * SIZE).from_buffer(mem)
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        return sys_call(42, s.fileno(), ctypes.addressof(buf), SIZE)
    finally:
        s.close()
attempt("file page", connect)
buf[:] = abstract  # copy on write: the page is the process's own now
attempt("copied page", connect)
""",
        write=[str(writable)],
        timeout=60,
    )
    assert v["file page"]["errno"] == errno.EACCES
    assert v["copied page"] == {"name": "copied page", "errno": 0, "value": 0}


def test_sendmmsg_never_carries_a_path_after_an_abstract_address(workdir: Path) -> None:
    # Continued for its first (abstract) entry, a sendmmsg would send every
    # entry: a path after it would reach a socket no write rule decided.
    writable = workdir / "ok"
    writable.mkdir()
    denied_dir = workdir / "denied"
    denied_dir.mkdir()
    path = str(denied_dir / "d")
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    host.bind(path)
    host.setblocking(False)
    name = f"stockade-mmsg-{os.getpid()}"
    try:
        _, v = run_probe(
            f"""
import struct
NAME, PATH = {name!r}, {path!r}
own = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
own.bind("\\0" + NAME)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def sockaddr(text):
    return ctypes.create_string_buffer(struct.pack("=H", socket.AF_UNIX) + text, 110)
names = [sockaddr(b"\\0" + NAME.encode()), sockaddr(PATH.encode())]
lengths = [3 + len(NAME), 2 + len(PATH) + 1]
data = ctypes.create_string_buffer(b"payload")
iov = (ctypes.c_uint64 * 2)(ctypes.addressof(data), 7)
vec = ctypes.create_string_buffer(64 * 2)
for i in range(2):
    struct.pack_into("=QI4xQQQQi4xI4x", vec, 64 * i, ctypes.addressof(names[i]), lengths[i],
                     ctypes.addressof(iov), 1, 0, 0, 0, 0)
attempt("sendmmsg", lambda: sys_call(307, s.fileno(), ctypes.addressof(vec), 2, 0))
# The abstract entry alone still goes (one entry, the caller's own memory).
attempt("one entry", lambda: sys_call(307, s.fileno(), ctypes.addressof(vec), 1, 0))
attempt("received", lambda: own.recv(16).decode())
""",
            write=[str(writable)],
            timeout=60,
        )
        with pytest.raises(BlockingIOError):
            host.recv(16)
        assert v["sendmmsg"]["errno"] == errno.EACCES, v["sendmmsg"]
        assert v["one entry"] == {"name": "one entry", "errno": 0, "value": 1}
        assert v["received"]["value"] == "payload"
    finally:
        host.close()


BIND_RACE = """
import threading, time, struct
PATH, SECONDS, NAME = {path!r}, {seconds}, {name!r}
SIZE = 110
unix = (struct.pack("=H", socket.AF_UNIX) + PATH.encode()).ljust(SIZE, b"\\0")
abstract = (struct.pack("=H", socket.AF_UNIX) + b"\\0" + NAME.encode()).ljust(SIZE, b"\\0")
buf = ctypes.create_string_buffer(abstract, SIZE)
stop = time.monotonic() + SECONDS
def flipper():
    while time.monotonic() < stop:
        ctypes.memmove(buf, unix, SIZE)
        ctypes.memmove(buf, abstract, SIZE)
threading.Thread(target=flipper, daemon=True).start()
counts = {{}}
while time.monotonic() < stop:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ret = libc.syscall(ctypes.c_long(49), ctypes.c_long(s.fileno()), buf, ctypes.c_long(SIZE))
    key = "ok" if ret == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    counts[key] = counts.get(key, 0) + 1
    s.close()
    try:
        os.unlink(PATH)
    except OSError:
        pass
attempt("counts", lambda: json.dumps(counts))
"""


def test_a_bind_flipped_from_abstract_to_a_path_never_makes_a_denied_socket_file(
    workdir: Path,
) -> None:
    # The write tree holds a directory that only the supervisor denies (a
    # glob), so Landlock alone would let a socket file be made there.
    tree = workdir / "tree"
    (tree / "denied").mkdir(parents=True)
    path = str(tree / "denied" / "s")
    body = BIND_RACE.format(path=path, seconds=SECONDS, name=f"stockade-bind-{os.getpid()}")
    res, v = run_probe(
        body,
        write=[str(tree)],
        rules=[f"deny/{c}+{tree}/denied/**" for c in ("create", "write")],
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    counts = json.loads(v["counts"]["value"])
    assert not os.path.exists(path), counts
    # Each bind was taken as the address the supervisor read: the abstract
    # one bound (each socket closed frees the name), the path refused.
    assert counts.get("ok", 0) > 0 and counts.get("EACCES", 0) > 0, counts
    assert set(counts) <= {"ok", "EACCES", "EADDRINUSE"}, counts
    assert sum(counts.values()) > 10, counts


def test_a_multithreaded_server_binds_an_abstract_address(workdir: Path) -> None:
    writable = workdir / "ok"
    writable.mkdir()
    name = f"\0stockade-mt-{os.getpid()}"
    _, v = run_probe(
        f"""
import threading, time
NAME = {name!r}
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
attempt("bind", lambda: server.bind(NAME))
server.listen(1)
pid = os.fork()
if pid == 0:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(NAME)
    c.sendall(b"hi")
    os._exit(0)
conn, _ = server.accept()
attempt("recv", lambda: conn.recv(4).decode())
attempt("name", lambda: server.getsockname())
""",
        write=[str(writable)],
        timeout=60,
    )
    assert v["bind"]["errno"] == 0, v
    assert v["recv"]["value"] == "hi", v
    assert v["name"]["value"] == repr(name.encode()), v
