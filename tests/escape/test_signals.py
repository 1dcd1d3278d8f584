"""Signals and UNIX sockets do not reach outside the sandbox (SPEC sections 2, 8).

Landlock (ABI 6) scopes signals and abstract UNIX sockets to the sandbox's
domain: a process outside it answers EPERM, even one running as the same
uid (here every target does, so plain DAC would let the call through).
Pathname UNIX sockets follow the filesystem rules: a socket file outside
the allowed trees cannot be connected to.

Every test also signals or connects to something *inside* the sandbox, to
show that the probe ran and the call itself works.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stockade
from conftest import SYSTEM, run_probe


@pytest.fixture
def host() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this test, outside any sandbox, same uid; it leads its
    own process group, so that group signals aimed at it reach nothing else."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def probe(body: str, **sandbox: Any) -> dict[str, dict[str, Any]]:
    res, v = run_probe(textwrap.dedent(body), **sandbox)
    assert res.returncode == 0, res.stderr
    assert v["control"]["errno"] == 0, v["control"]
    return v


@pytest.mark.parametrize("spawner", ["server"])
def test_kill_outside_is_refused(host: subprocess.Popen[bytes], spawner: str) -> None:
    sibling = stockade.Sandbox(read=SYSTEM).popen(["sleep", "60"])
    try:
        v = probe(
            f"""
            import fcntl, signal, time
            HOST, SIBLING, HOST_PGRP = {host.pid}, {sibling.pid}, {os.getpgid(host.pid)}
            PPID = os.getppid()
            attempt("control", lambda: os.kill(os.getpid(), 0))
            child = os.fork()
            if child == 0:
                time.sleep(30)
                os._exit(0)
            attempt("own_child", lambda: os.kill(child, signal.SIGTERM))
            attempt("own_child_status", lambda: os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
            attempt("parent_0", lambda: os.kill(PPID, 0))
            attempt("parent_cont", lambda: os.kill(PPID, signal.SIGCONT))
            attempt("host_0", lambda: os.kill(HOST, 0))
            attempt("host_term", lambda: os.kill(HOST, signal.SIGTERM))
            attempt("host_kill", lambda: os.kill(HOST, signal.SIGKILL))
            attempt("host_group", lambda: os.kill(-HOST_PGRP, 0))
            attempt("sibling", lambda: os.kill(SIBLING, signal.SIGKILL))
            # tgkill, rt_sigqueueinfo, pidfd_send_signal: the other doors.
            attempt("tgkill", lambda: sys_call(234, HOST, HOST, signal.SIGTERM))
            info = ctypes.create_string_buffer(128)
            attempt("sigqueue", lambda: sys_call(129, HOST, signal.SIGTERM, ctypes.addressof(info)))
            pidfd = os.pidfd_open(HOST)
            attempt("pidfd_signal", lambda: signal.pidfd_send_signal(pidfd, signal.SIGTERM))
            # SIGIO, sent by the kernel on our behalf to an owner we chose.
            r, w = os.pipe()
            attempt("setown", lambda: fcntl.fcntl(r, fcntl.F_SETOWN, HOST))
            fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC)
            attempt("sigio", lambda: os.write(w, b"x"))
            attempt("setown_group", lambda: fcntl.fcntl(r, fcntl.F_SETOWN, -HOST_PGRP))
            attempt("sigio_group", lambda: os.write(w, b"x"))
            # pid 1 is the machine's init: a real signal only once signal 0
            # has been refused.
            attempt("init_0", lambda: os.kill(1, 0))
            try:
                os.kill(1, 0)
            except PermissionError:
                attempt("init_term", lambda: os.kill(1, signal.SIGTERM))
            """,
            spawner=spawner,
        )
        assert sibling.poll() is None
    finally:
        sibling.kill()
        sibling.wait()
    assert v["own_child"]["errno"] == 0
    assert v["own_child_status"]["value"] == -signal.SIGTERM
    names = ("parent_0", "parent_cont", "host_0", "host_term", "host_kill", "host_group",
             "sibling", "tgkill", "sigqueue", "pidfd_signal", "init_0", "init_term")  # fmt: skip
    assert {n: v.get(n) for n in names if v.get(n, {}).get("errno") != errno.EPERM} == {}
    # F_SETOWN itself is allowed; the SIGIO is dropped on the way.
    assert v["setown"]["errno"] == 0
    assert v["sigio"]["errno"] == 0
    assert v["sigio_group"]["errno"] == 0
    assert host.poll() is None, "the host process was killed from the sandbox"


def test_abstract_socket_outside_is_refused() -> None:
    name = f"\0stockade-test-{secrets.token_hex(8)}"
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        stream.bind(name)
        stream.listen()
        dgram.bind(name + "-dgram")
        v = probe(
            f"""
            NAME = {name!r}
            own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            own.bind(NAME + "-inside")
            own.listen()
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            attempt("control", lambda: c.connect(NAME + "-inside"))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            attempt("connect", lambda: s.connect(NAME))
            d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            attempt("sendto", lambda: d.sendto(b"x", NAME + "-dgram"))
            attempt("connect_dgram", lambda: d.connect(NAME + "-dgram"))
            """
        )
        assert v["connect"]["errno"] == errno.EPERM
        assert v["sendto"]["errno"] == errno.EPERM
        assert v["connect_dgram"]["errno"] == errno.EPERM
        dgram.setblocking(False)
        with pytest.raises(BlockingIOError):
            dgram.recv(16)
    finally:
        stream.close()
        dgram.close()


def test_pathname_socket_outside_the_allowed_trees(workdir: Path) -> None:
    """Reaching a UNIX socket by path is decided as ``write`` on the socket
    file (what making one needs, and what the kernel itself asks of the
    inode): the supervisor connects the sandbox's socket only inside the
    write trees."""
    allowed = workdir / "allowed"
    allowed.mkdir()
    outside = workdir / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(outside))
        server.listen()
        v = probe(
            f"""
            A, OUTSIDE = {str(allowed)!r}, {str(outside)!r}
            own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            own.bind(A + "/inside.sock")
            own.listen()
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            attempt("control", lambda: c.connect(A + "/inside.sock"))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            attempt("connect", lambda: s.connect(OUTSIDE))
            attempt("bind_outside", lambda: socket.socket(socket.AF_UNIX).bind(OUTSIDE + "2"))
            """,
            write=[str(allowed)],
        )
        assert v["control"]["errno"] == 0, v["control"]
        assert v["bind_outside"]["errno"] == errno.EACCES
        assert v["connect"]["errno"] == errno.EACCES, v["connect"]
    finally:
        server.close()
