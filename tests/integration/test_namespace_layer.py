"""User, network, UTS and IPC namespaces, observed from inside.

Every test runs as root and as uid 65534 (the unprivileged pass): without
privilege, stockade adds a user namespace to grant what the others need.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, verdicts

IPC_CREAT = 0o1000
IPC_RMID = 0


def test_hostname_is_private() -> None:
    before = os.uname().nodename
    res, v = run_probe('attempt("name", lambda: os.uname().nodename)', hostname="sbx-1")
    assert res.returncode == 0, res.stderr
    assert v["name"]["value"] == "sbx-1"
    assert os.uname().nodename == before


@pytest.fixture
def host_listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def test_no_net_has_its_own_loopback(host_listener: socket.socket) -> None:
    port = host_listener.getsockname()[1]
    res, v = run_probe(
        f"""
        def tcp(family, host):
            s = socket.socket(family)
            s.bind((host, 0))
            s.listen()
            c = socket.create_connection(s.getsockname()[:2])
            return c.getpeername()[0]
        attempt("tcp4", lambda: tcp(socket.AF_INET, "127.0.0.1"))
        attempt("tcp6", lambda: tcp(socket.AF_INET6, "::1"))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        attempt("udp", lambda: (u.sendto(b"x", u.getsockname()), u.recv(1).decode())[1])
        attempt("host", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5))
        """,
        no_net=True,
    )
    assert res.returncode == 0, res.stderr
    assert v["tcp4"] == {"name": "tcp4", "errno": 0, "value": "127.0.0.1"}
    assert v["tcp6"] == {"name": "tcp6", "errno": 0, "value": "::1"}
    assert v["udp"] == {"name": "udp", "errno": 0, "value": "x"}
    # The host's loopback is another interface in another namespace.
    assert v["host"]["errno"] == errno.ECONNREFUSED


def test_without_no_net_the_same_connect_is_refused_by_landlock(
    host_listener: socket.socket,
) -> None:
    port = host_listener.getsockname()[1]
    _, v = run_probe(f'attempt("host", lambda: socket.create_connection(("127.0.0.1", {port})))')
    assert v["host"]["errno"] == errno.EACCES


def test_a_listener_in_no_net_is_not_reachable_from_the_host() -> None:
    """listen() on an unbound socket binds an ephemeral port by itself
    (Landlock ABI 7 cannot stop that); in a network namespace of its own
    that port exists only inside."""
    sb = stockade.Sandbox(read=SYSTEM, no_net=True)
    code = probe_code(
        """
        s = socket.socket()
        s.listen()
        print(s.getsockname()[1], flush=True)
        sys.stdin.read()
        """
    )
    with sb.popen([PROBE_PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        assert port > 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_user_namespace_maps_our_own_ids() -> None:
    uid, gid = os.getuid(), os.getgid()
    res, v = run_probe(
        """
        attempt("ids", lambda: [os.getuid(), os.getgid()])
        attempt("uid_map", lambda: open("/proc/self/uid_map").read().split())
        attempt("setgroups", lambda: open("/proc/self/setgroups").read().strip())
        """,
        read=["/proc"],
        unshare=["user"],
    )
    assert res.returncode == 0, res.stderr
    assert v["ids"]["value"] == [uid, gid]
    assert v["uid_map"]["value"] == [str(uid), str(uid), "1"]
    assert v["setgroups"]["value"] == "deny"


def test_map_root_appears_as_root_and_gains_nothing(workdir: object) -> None:
    secret = f"{workdir}/secret"
    with open(secret, "w") as f:
        f.write("hidden\n")
    res, v = run_probe(
        f"""
        attempt("ids", lambda: [os.getuid(), os.geteuid(), os.getgid()])
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        attempt("caps", lambda: [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd")])
        attempt("secret", lambda: open({secret!r}).read())
        """,
        read=["/proc"],
        map_root=True,
    )
    assert res.returncode == 0, res.stderr
    assert v["ids"]["value"] == [0, 0, 0]
    assert v["caps"]["value"] == ["0000000000000000"] * 3
    assert v["secret"]["errno"] == errno.EACCES


@pytest.fixture
def host_queue() -> Iterator[int]:
    """A SysV message queue of the host, owned by us, mode 0600."""
    libc = ctypes.CDLL(None, use_errno=True)
    key = (1 << 20) + secrets.randbelow(1 << 29)
    qid = libc.msgget(key, IPC_CREAT | 0o600)
    if qid < 0:
        pytest.skip(f"msgget: {os.strerror(ctypes.get_errno())}")
    try:
        yield key
    finally:
        libc.msgctl(qid, IPC_RMID, None)


MSGGET = """
libc.msgget.restype = ctypes.c_int
def msgget(key, flags):
    ret = libc.msgget(key, flags)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return 0
"""


def test_host_ipc_objects_are_out_of_reach(host_queue: int) -> None:
    """SysV IPC is guarded by uid alone: without an IPC namespace of its
    own, the sandbox may not use it at all."""
    res, v = run_probe(MSGGET + f'attempt("host", lambda: msgget({host_queue}, 0))')
    assert res.returncode == 0, res.stderr
    assert v["host"]["errno"] == errno.EPERM


def test_ipc_namespace_is_private(host_queue: int) -> None:
    res, v = run_probe(
        MSGGET
        + f"""
attempt("host", lambda: msgget({host_queue}, 0))
attempt("own", lambda: msgget({host_queue}, {IPC_CREAT | 0o600}))
""",
        unshare=["ipc"],
    )
    assert res.returncode == 0, res.stderr
    assert v["host"]["errno"] == errno.ENOENT  # a different namespace: no such queue
    assert v["own"]["errno"] == 0


def test_namespaces_cannot_be_left_or_added_inside() -> None:
    _, v = run_probe(
        'attempt("unshare", lambda: sys_call(272, 0x40000000))',
        unshare=["user", "net"],
    )
    assert v["unshare"]["errno"] == errno.EPERM


@pytest.mark.skipif(os.geteuid() == 0, reason="RLIMIT_NPROC never binds uid 0")
def test_max_procs_counts_only_the_sandbox_in_its_user_namespace() -> None:
    """Outside a user namespace RLIMIT_NPROC counts every process of the
    user; in the sandbox's own, only the sandbox's."""
    res, v = run_probe(
        """
        started, failure = 0, 0
        kids = []
        for _ in range(40):
            try:
                pid = os.fork()
            except OSError as e:
                failure = e.errno
                break
            if pid == 0:
                import time
                time.sleep(5)
                os._exit(0)
            kids.append(pid)
            started += 1
        for pid in kids:
            os.kill(pid, 9)
        attempt("fork", lambda: [started, failure])
        """,
        unshare=["user"],
        max_procs=10,
    )
    assert res.returncode == 0, res.stderr
    started, failure = v["fork"]["value"]
    assert failure == errno.EAGAIN
    assert 5 <= started < 10


def test_cli_no_net_and_hostname() -> None:
    from conftest import stockade_cli

    access = [a for p in SYSTEM for a in ("-r", p)]
    proc = stockade_cli("run", *access, "--no-net", "--hostname", "cli-box", "--",
                        PROBE_PY, "-c", "import os; print(os.uname().nodename)")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "cli-box\n"
    assert verdicts(proc.stdout) == {}
