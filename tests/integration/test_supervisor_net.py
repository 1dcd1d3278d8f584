"""Network rules only the supervisor can hold (addresses, not just ports),
and the socket calls it brokers: connect on the caller's own socket,
listen, UNIX sockets by path."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_probe


@pytest.fixture
def server() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.settimeout(10)
    try:
        yield s
    finally:
        s.close()


def test_address_rule_allows_that_address_only(server: socket.socket) -> None:
    port = server.getsockname()[1]
    res, v = run_probe(
        f"""
PORT = {port}
def go(addr):
    s = socket.socket()
    s.connect((addr, PORT))
    s.sendall(b"hi")
    return s.getpeername()[1]
attempt("allowed", lambda: go("127.0.0.1"))
attempt("other address", lambda: go("127.0.0.2"))
nb = socket.socket()
nb.setblocking(False)
attempt("nonblocking", lambda: nb.connect_ex(("127.0.0.1", PORT)))
""",
        net_allow=[f"127.0.0.1:{port}"],
    )
    assert v["allowed"] == {"name": "allowed", "errno": 0, "value": port}
    assert v["other address"]["errno"] == errno.EACCES
    assert v["nonblocking"]["value"] in (0, errno.EINPROGRESS)
    conn, _ = server.accept()
    with conn:
        assert conn.recv(2) == b"hi"
    denied = [d for d in res.denials if d.category == "net/connect"]
    assert denied and denied[0].target == f"127.0.0.2!{port}"
    assert denied[0].syscall == "connect" and denied[0].rule is None


def test_listen_on_a_bound_socket_is_brokered() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    _, v = run_probe(
        f"""
s = socket.socket()
s.bind(("127.0.0.1", {port}))
attempt("listen bound", lambda: s.listen(4))
attempt("accepting", lambda: s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
attempt("listen unbound", lambda: socket.socket().listen())
""",
        net_bind=[str(port)],
    )
    assert v["listen bound"]["errno"] == 0
    assert v["accepting"]["value"] == 1
    assert v["listen unbound"]["errno"] == errno.EACCES


def test_unix_socket_inside_the_write_tree(workdir: Path) -> None:
    """Binding, listening and connecting by path inside the allowed tree,
    through relative paths and symlinks; the socket file takes the
    caller's umask."""
    (workdir / "link").symlink_to(workdir / "s.sock")
    _, v = run_probe(
        f"""
os.chdir({str(workdir)!r})
os.umask(0o077)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
attempt("bind", lambda: srv.bind("s.sock"))
attempt("mode", lambda: oct(os.stat("s.sock").st_mode & 0o777))
attempt("listen", lambda: srv.listen())
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
attempt("connect via link", lambda: c.connect("link"))
attempt("send", lambda: c.send(b"x"))
attempt("recv", lambda: srv.accept()[0].recv(1).decode())
""",
        write=[workdir],
    )
    assert v["bind"]["errno"] == 0, v["bind"]
    assert v["mode"]["value"] == oct(0o700)
    assert v["listen"]["errno"] == 0
    assert v["connect via link"]["errno"] == 0
    assert v["recv"]["value"] == "x"


def test_brokered_send_to_a_closed_peer_raises_sigpipe_as_the_kernel_would() -> None:
    _, v = run_probe(
        """
import signal
got = []
signal.signal(signal.SIGPIPE, lambda *a: got.append("SIGPIPE"))
a, b = socket.socketpair()
b.close()
attempt("send", lambda: a.sendmsg([b"x"]))
attempt("nosignal", lambda: a.sendmsg([b"x"], [], socket.MSG_NOSIGNAL))
attempt("got", lambda: got)
"""
    )
    assert v["send"]["errno"] == errno.EPIPE
    assert v["nosignal"]["errno"] == errno.EPIPE
    assert v["got"]["value"] == ["SIGPIPE"]
