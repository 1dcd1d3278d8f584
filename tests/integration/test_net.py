"""Network access from inside real sandboxes (SPEC section 2, "Network access").

The host side holds real listeners on every port a probe tries, so a
refused attempt is the sandbox's EACCES and never ECONNREFUSED; a connect
that should work is witnessed by the host accepting it and reading what
the probe sent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe

LOOPBACK = "127.0.0.1"


def _quiet_ports() -> range:
    """Ports below the ephemeral range: no outgoing connection (nor its
    TIME_WAIT, which blocks a bind even with SO_REUSEADDR) ever holds them."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    return range(min(10000, low // 2), low - 16)


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, port))
        s.listen(8)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


@contextlib.contextmanager
def listeners(count: int) -> Iterator[tuple[int, list[socket.socket]]]:
    """*count* TCP listeners on consecutive loopback ports; yields the first port."""
    ports = _quiet_ports()
    for _ in range(200):
        base = random.randrange(ports.start, ports.stop - count)  # noqa: S311 - a port, not a secret
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                socks.append(_listen(port))
        except OSError:
            for s in socks:
                s.close()
            continue
        try:
            yield base, socks
        finally:
            for s in socks:
                s.close()
        return
    pytest.fail(f"could not find {count} consecutive free ports")


def free_port() -> int:
    """A port nothing listens on now (checked by binding it)."""
    ports = _quiet_ports()
    for _ in range(200):
        port = random.randrange(ports.start, ports.stop)  # noqa: S311 - a port, not a secret
        try:
            _listen(port).close()
        except OSError:
            continue
        return port
    pytest.fail("could not find a free port")


def accepted(listener: socket.socket) -> bytes | None:
    """What the connection waiting on *listener* sent, or None if there is none."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return None
    with conn:
        conn.settimeout(5)
        return conn.recv(100)


CONNECT = """
def connect(port, family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.sendall(b"hello %d" % port)
        return 0
    finally:
        s.close()
def bind(port, host="127.0.0.1"):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)
        return s.getsockname()[1]
    finally:
        s.close()
"""


def test_no_net_option_refuses_tcp_and_udp() -> None:
    with listeners(1) as (port, socks):
        other = free_port()
        res, v = run_probe(
            CONNECT
            + f"""
attempt("unix socketpair", lambda: len(socket.socketpair()))
attempt("tcp socket", lambda: socket.socket().close())
attempt("connect", lambda: connect({port}))
attempt("bind", lambda: bind({other}))
attempt("bind any port", lambda: bind(0))
attempt("udp socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
attempt("udp6 socket", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
attempt("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close())
"""
        )
        assert res.returncode == 0, res.stderr
        assert v["unix socketpair"] == {"name": "unix socketpair", "errno": 0, "value": 2}
        assert v["tcp socket"]["errno"] == 0
        assert v["connect"]["errno"] == errno.EACCES
        assert v["bind"]["errno"] == errno.EACCES
        assert v["bind any port"]["errno"] == errno.EACCES
        assert v["udp socket"]["errno"] == errno.EACCES
        assert v["udp6 socket"]["errno"] == errno.EACCES
        assert v["raw socket"]["errno"] == errno.EACCES
        assert accepted(socks[0]) is None


def test_ipv6_connect_is_refused_too() -> None:
    try:
        host = socket.socket(socket.AF_INET6)
        host.bind(("::1", 0))
    except OSError as err:
        pytest.skip(f"no IPv6 loopback here: {err}")
    with host:
        host.listen(1)
        host.setblocking(False)
        port = host.getsockname()[1]
        res, v = run_probe(
            CONNECT + f'attempt("connect6", lambda: connect({port}, socket.AF_INET6, "::1"))\n'
        )
        assert res.returncode == 0, res.stderr
        assert v["connect6"]["errno"] == errno.EACCES
        assert accepted(host) is None


def test_net_allow_one_port() -> None:
    with listeners(2) as (port, socks):
        res, v = run_probe(
            CONNECT
            + f"""
attempt("allowed", lambda: connect({port}))
attempt("next port", lambda: connect({port + 1}))
attempt("bind", lambda: bind({port}))
attempt("udp socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
""",
            net_allow=[f"*:{port}"],
        )
        assert res.returncode == 0, res.stderr
        assert v["allowed"] == {"name": "allowed", "errno": 0, "value": 0}
        assert v["next port"]["errno"] == errno.EACCES
        assert v["bind"]["errno"] == errno.EACCES
        assert v["udp socket"]["errno"] == errno.EACCES
        assert accepted(socks[0]) == f"hello {port}".encode()
        assert accepted(socks[1]) is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{p}-{p1}", (0, 0, errno.EACCES, errno.EACCES)),
        ("{p},{p2}", (0, errno.EACCES, 0, errno.EACCES)),
        ("{p1}-{p3}", (errno.EACCES, 0, 0, 0)),
    ],
)
def test_net_allow_port_ranges_and_lists(spec: str, expected: tuple[int, ...]) -> None:
    with listeners(4) as (p, socks):
        text = spec.format(p=p, p1=p + 1, p2=p + 2, p3=p + 3)
        body = CONNECT + "".join(
            f'attempt("port {i}", lambda: connect({p + i}))\n' for i in range(4)
        )
        res, v = run_probe(body, net_allow=[f"*:{text}"])
        assert res.returncode == 0, res.stderr
        got = tuple(v[f"port {i}"]["errno"] for i in range(4))
        assert got == expected, text
        for i, want in enumerate(expected):
            assert (accepted(socks[i]) is not None) == (want == 0)


def test_net_allow_two_options_accumulate() -> None:
    with listeners(3) as (p, socks):
        body = CONNECT + "".join(
            f'attempt("port {i}", lambda: connect({p + i}))\n' for i in range(3)
        )
        res, v = run_probe(body, net_allow=[f"*:{p}", f"*:{p + 2}"])
        assert res.returncode == 0, res.stderr
        assert [v[f"port {i}"]["errno"] for i in range(3)] == [0, errno.EACCES, 0]
        assert accepted(socks[1]) is None


def test_net_bind_allows_listening_on_that_port_only() -> None:
    port = free_port()
    other = next(p for p in iter(free_port, None) if p != port)
    with listeners(1) as (outbound, socks):
        body = (
            CONNECT
            + f"""
attempt("bind other", lambda: bind({other}))
attempt("connect", lambda: connect({outbound}))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
attempt("bind", lambda: srv.bind(("127.0.0.1", {port})))
attempt("listen", lambda: srv.listen(1))
srv.settimeout(20)
def serve():
    conn, _ = srv.accept()
    conn.sendall(b"from inside")
    conn.close()
attempt("accept", serve)
"""
        )
        sb = stockade.Sandbox(read=SYSTEM, net_bind=[str(port)])
        with sb.popen([PROBE_PY, "-c", probe_code(body)], stdout=stockade.PIPE) as proc:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(4)]
            got = b""
            if b'"listen", "errno": 0' in lines[-1]:
                with socket.create_connection((LOOPBACK, port), timeout=10) as c:
                    got = c.recv(100)
            rest = proc.stdout.read()
        assert proc.returncode == 0
        v = {json.loads(x)["name"]: json.loads(x) for x in [*lines, *rest.splitlines()]}
        assert v["bind other"]["errno"] == errno.EACCES
        assert v["connect"]["errno"] == errno.EACCES
        assert v["bind"]["errno"] == 0
        assert v["listen"]["errno"] == 0
        assert v["accept"]["errno"] == 0
        assert got == b"from inside"
        assert accepted(socks[0]) is None


def test_net_allow_everything_allows_udp_and_any_tcp() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((LOOPBACK, 0))
    udp.settimeout(10)
    udp_port = udp.getsockname()[1]
    with udp, listeners(1) as (p1, socks1), listeners(1) as (p2, socks2):
        res, v = run_probe(
            CONNECT
            + f"""
def send_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        return s.sendto(b"datagram", ("127.0.0.1", {udp_port}))
attempt("udp", send_udp)
attempt("tcp 1", lambda: connect({p1}))
attempt("tcp 2", lambda: connect({p2}))
attempt("bind", lambda: bind({free_port()}))
""",
            net_allow=["*"],
        )
        assert res.returncode == 0, res.stderr
        assert v["udp"] == {"name": "udp", "errno": 0, "value": 8}
        assert v["tcp 1"]["errno"] == 0
        assert v["tcp 2"]["errno"] == 0
        # Connecting anywhere does not include listening.
        assert v["bind"]["errno"] == errno.EACCES
        assert udp.recvfrom(100)[0] == b"datagram"
        assert accepted(socks1[0]) == f"hello {p1}".encode()
        assert accepted(socks2[0]) == f"hello {p2}".encode()


def test_unix_sockets_follow_the_filesystem_rules(workdir: Path) -> None:
    rw, ro = workdir / "rw", workdir / "ro"
    rw.mkdir()
    ro.mkdir()
    res, v = run_probe(
        f"""
def roundtrip(path):
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    cli = socket.socket(socket.AF_UNIX)
    cli.connect(path)
    conn, _ = srv.accept()
    cli.sendall(b"over unix")
    data = conn.recv(100).decode()
    for s in (conn, cli, srv):
        s.close()
    return data
attempt("writable tree", lambda: roundtrip({str(rw / "sock")!r}))
attempt("read-only tree", lambda: roundtrip({str(ro / "sock")!r}))
attempt("abstract", lambda: roundtrip("\\0stockade-test-%d" % os.getpid()))
""",
        read=[ro],
        write=[rw],
    )
    assert res.returncode == 0, res.stderr
    assert v["writable tree"] == {"name": "writable tree", "errno": 0, "value": "over unix"}
    assert v["read-only tree"]["errno"] == errno.EACCES
    # An abstract socket inside the sandbox is reachable from the sandbox.
    assert v["abstract"]["value"] == "over unix"
    assert (rw / "sock").is_socket()
    assert not (ro / "sock").exists()
