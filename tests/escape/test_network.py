"""No network access the policy does not grant (SPEC sections 2, 8).

With no network option, TCP connect and bind are refused by Landlock
(EACCES) and the seccomp filter refuses to create UDP, raw and other inet
sockets (EACCES), packet sockets and unknown families (EAFNOSUPPORT), and
the one netlink protocol that lists the host's sockets (NETLINK_SOCK_DIAG,
EACCES).  The filter reads the low 32 bits of each argument, exactly what
the kernel uses (``int domain``, ``int type``), so high bits change nothing.

Every refused connection is checked on the host side too: the listener
must not have a connection waiting.
"""

from __future__ import annotations

import errno
import os
import socket
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import run_probe

SYS_socket = 41
AF_PACKET = 17
AF_NETLINK = 16
NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4
IPPROTO_MPTCP = 262
IPPROTO_SCTP = 132
MSG_FASTOPEN = 0x20000000
TCP_FASTOPEN_CONNECT = 30

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener of this test on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def nothing_arrived(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def refused(v: dict[str, dict[str, Any]], err: int, *names: str) -> dict[str, Any]:
    """The attempts among *names* that did not fail with *err* (all of
    them at once, so that one failure does not hide another)."""
    return {name: v[name] for name in names if v[name]["errno"] != err}


def probe(body: str, **sandbox: Any) -> dict[str, dict[str, Any]]:
    res, v = run_probe(textwrap.dedent(body), **sandbox)
    assert res.returncode == 0, res.stderr
    assert v["control"]["errno"] == 0, v["control"]
    return v


def test_tcp_connect_is_refused(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    v = probe(
        f"""
        PORT = {port}
        def tcp(family=socket.AF_INET, proto=0):
            return socket.socket(family, socket.SOCK_STREAM, proto)
        attempt("control", lambda: tcp().fileno() > 0)
        attempt("connect", lambda: tcp().connect(("127.0.0.1", PORT)))
        attempt("connect_v6", lambda: tcp(socket.AF_INET6).connect(("::ffff:127.0.0.1", PORT)))
        attempt("connect_ex", lambda: tcp().connect_ex(("127.0.0.1", PORT)))
        # TCP Fast Open connects from sendto(), without connect(2).
        attempt("fastopen", lambda: tcp().sendto(b"x", {MSG_FASTOPEN}, ("127.0.0.1", PORT)))
        attempt("fastopen_msg", lambda: tcp().sendmsg([b"x"], [], {MSG_FASTOPEN},
                                                      ("127.0.0.1", PORT)))
        def fastopen_connect():
            s = tcp()
            s.setsockopt(socket.IPPROTO_TCP, {TCP_FASTOPEN_CONNECT}, 1)
            s.connect(("127.0.0.1", PORT))
        attempt("fastopen_connect", fastopen_connect)
        # MPTCP is a SOCK_STREAM protocol whose subflows are TCP.
        attempt("mptcp", lambda: tcp(proto={IPPROTO_MPTCP}).connect(("127.0.0.1", PORT)))
        attempt("mptcp6", lambda: tcp(socket.AF_INET6, {IPPROTO_MPTCP}).connect(
            ("::ffff:127.0.0.1", PORT)))
        # SCTP is another stream protocol Landlock's TCP rules do not cover.
        attempt("sctp", lambda: tcp(proto={IPPROTO_SCTP}))
        """
    )
    assert v["connect_ex"]["value"] == errno.EACCES
    # A kernel without SCTP refuses it itself (EPROTONOSUPPORT); one with it
    # must not hand the sandbox an SCTP socket.
    assert v["sctp"]["errno"] in (errno.EACCES, errno.EPROTONOSUPPORT), v["sctp"]
    assert refused(v, errno.EACCES, "connect", "connect_v6", "fastopen", "fastopen_msg",
                   "fastopen_connect", "mptcp", "mptcp6") == {}  # fmt: skip
    assert nothing_arrived(listener)


def test_other_sockets_are_refused() -> None:
    v = probe(
        f"""
        def sock(domain, kind, proto=0):
            return socket.socket(domain, kind, proto).fileno() > 0
        def raw_sock(domain, kind, proto=0):
            return sys_call({SYS_socket}, domain, kind, proto) > 0
        attempt("control", lambda: sock(socket.AF_UNIX, socket.SOCK_STREAM))
        attempt("netlink_route", lambda: raw_sock({AF_NETLINK}, socket.SOCK_RAW, {NETLINK_ROUTE}))
        attempt("udp", lambda: sock(socket.AF_INET, socket.SOCK_DGRAM))
        attempt("udp6", lambda: sock(socket.AF_INET6, socket.SOCK_DGRAM))
        attempt("udp_flags", lambda: sock(socket.AF_INET,
                socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK))
        attempt("ping", lambda: sock(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
        attempt("raw", lambda: sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        attempt("raw6", lambda: sock(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
        attempt("seqpacket", lambda: sock(socket.AF_INET, socket.SOCK_SEQPACKET, 132))
        attempt("packet", lambda: raw_sock({AF_PACKET}, socket.SOCK_RAW, 0))
        attempt("packet_dgram", lambda: raw_sock({AF_PACKET}, socket.SOCK_DGRAM, 0))
        attempt("sock_diag", lambda: raw_sock({AF_NETLINK}, socket.SOCK_RAW, {NETLINK_SOCK_DIAG}))
        attempt("sock_diag_dgram", lambda: raw_sock({AF_NETLINK}, socket.SOCK_DGRAM,
                                                    {NETLINK_SOCK_DIAG}))
        # The kernel reads int domain and int type: the high bits vanish.
        attempt("udp_high_domain", lambda: raw_sock((1 << 32) | 2, socket.SOCK_DGRAM))
        attempt("udp_high_type", lambda: raw_sock(2, (1 << 32) | socket.SOCK_DGRAM))
        attempt("packet_high", lambda: raw_sock((1 << 32) | {AF_PACKET}, socket.SOCK_RAW))
        attempt("diag_high", lambda: raw_sock({AF_NETLINK}, socket.SOCK_RAW,
                                              (1 << 32) | {NETLINK_SOCK_DIAG}))
        attempt("bluetooth", lambda: raw_sock(31, socket.SOCK_STREAM, 0))
        attempt("vsock", lambda: raw_sock(40, socket.SOCK_STREAM, 0))
        attempt("socketpair_inet", lambda: socket.socketpair(socket.AF_INET))
        attempt("socketpair_unix", lambda: len(socket.socketpair(socket.AF_UNIX)))
        """
    )
    assert v["netlink_route"] == {"name": "netlink_route", "errno": 0, "value": True}
    assert v["socketpair_unix"]["value"] == 2
    for name in ("udp", "udp6", "udp_flags", "ping", "raw", "raw6", "seqpacket", "sock_diag",
                 "sock_diag_dgram", "udp_high_domain", "udp_high_type", "diag_high",
                 "socketpair_inet"):  # fmt: skip
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    for name in ("packet", "packet_dgram", "packet_high", "bluetooth", "vsock"):
        assert v[name]["errno"] == errno.EAFNOSUPPORT, (name, v[name])


def test_high_domain_bits_do_not_bypass_connect(listener: socket.socket) -> None:
    """socket(0x100000002, SOCK_STREAM) is an AF_INET socket to the kernel,
    and stays under the TCP rules."""
    port = listener.getsockname()[1]
    v = probe(
        f"""
        fd = sys_call({SYS_socket}, (1 << 32) | 2, socket.SOCK_STREAM, 0)
        s = socket.socket(fileno=fd)
        attempt("control", lambda: s.family == socket.AF_INET)
        attempt("connect", lambda: s.connect(("127.0.0.1", {port})))
        """
    )
    assert v["control"]["value"] is True
    assert v["connect"]["errno"] == errno.EACCES
    assert nothing_arrived(listener)


def test_bind_and_listen_are_refused() -> None:
    v = probe(
        """
        def tcp(family=socket.AF_INET):
            return socket.socket(family, socket.SOCK_STREAM)
        attempt("control", lambda: tcp().fileno() > 0)
        attempt("bind", lambda: tcp().bind(("127.0.0.1", 0)))
        attempt("bind_port", lambda: tcp().bind(("127.0.0.1", 18080)))
        attempt("bind_v6", lambda: tcp(socket.AF_INET6).bind(("::1", 0)))
        """
    )
    assert v["control"]["value"] is True
    assert refused(v, errno.EACCES, "bind", "bind_port", "bind_v6") == {}


def test_listen_without_bind_is_refused() -> None:
    v = probe(
        """
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        attempt("control", lambda: s.fileno() > 0)
        # listen() on an unbound socket binds it to an ephemeral port itself.
        attempt("listen_unbound", lambda: s.listen())
        """
    )
    assert v["control"]["value"] is True
    assert v["listen_unbound"]["errno"] == errno.EACCES, v["listen_unbound"]


def test_allowed_port_only(listener: socket.socket) -> None:
    """The control: with ``net_allow=["*:PORT"]`` that port connects and
    the host sees the connection; any other port is still EACCES."""
    port = listener.getsockname()[1]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    other.setblocking(False)
    try:
        v = probe(
            f"""
            attempt("control", lambda: socket.create_connection(("127.0.0.1", {port})).send(b"hi"))
            OTHER = {other.getsockname()[1]}
            attempt("other", lambda: socket.create_connection(("127.0.0.1", OTHER)))
            attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            """,
            net_allow=[f"*:{port}"],
        )
        assert v["other"]["errno"] == errno.EACCES
        assert v["udp"]["errno"] == errno.EACCES
        listener.setblocking(True)
        listener.settimeout(5)
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(2) == b"hi"
        assert nothing_arrived(other)
    finally:
        other.close()


def test_an_address_rule_is_not_bypassed_by_fast_open(listener: socket.socket) -> None:
    """``--net-allow 127.0.0.2`` (every port of one address) leaves TCP
    unrestricted in Landlock and the address to the supervisor, which
    watches connect(); TCP Fast Open would connect from sendto() and
    sendmsg() instead.  The listener is on 127.0.0.1: nothing may reach it."""
    port = listener.getsockname()[1]
    v = probe(
        f"""
        PORT = {port}
        def tcp():
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        attempt("control", lambda: tcp().fileno() > 0)
        attempt("connect", lambda: tcp().connect(("127.0.0.1", PORT)))
        attempt("fastopen", lambda: tcp().sendto(b"x", {MSG_FASTOPEN}, ("127.0.0.1", PORT)))
        attempt("fastopen_msg", lambda: tcp().sendmsg([b"x"], [], {MSG_FASTOPEN},
                                                      ("127.0.0.1", PORT)))
        """,
        net_allow=["127.0.0.2"],
        # Nothing else restricted: TCP is then unhandled by Landlock, and
        # no UNIX-socket reason traps sendto.
        rules=["sandbox/write:off", "sandbox/net/bind:off"],
    )
    assert refused(v, errno.EACCES, "connect", "fastopen", "fastopen_msg") == {}
    assert nothing_arrived(listener)
