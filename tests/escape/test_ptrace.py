"""No sandboxed process can trace, read or rewire another process (SPEC section 8).

Targets, all running as the sandbox's own uid so that plain DAC would let
the call through and only the sandbox can stop it:

- the sandbox's parent (the fork server, or this process with
  ``spawner="fork"``);
- ``host``: a ``sleep`` this test started outside any sandbox;
- ``sibling``: another sandboxed ``sleep`` (its own Landlock domain);
- the probe itself or its own child, where the kernel alone would say yes,
  which shows the answer comes from the seccomp filter.

The seccomp filter answers EPERM for ptrace, process_vm_readv/writev,
pidfd_getfd and kcmp outright; Landlock refuses ptrace-mode access across
domains for everything else that asks for it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import stockade
from conftest import SYSTEM, run_probe

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl), written out
# here rather than taken from stockade's own table.
SYS_ptrace = 101
SYS_process_vm_readv = 310
SYS_process_vm_writev = 311
SYS_kcmp = 312
SYS_prlimit64 = 302
SYS_pidfd_getfd = 438
PTRACE_TRACEME = 0
PTRACE_ATTACH = 16
PTRACE_SEIZE = 0x4206
KCMP_FILE = 0
RLIMIT_NOFILE = 7

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")


@pytest.fixture
def host() -> Iterator[int]:
    """A process of this test, outside any sandbox."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def sibling() -> Iterator[int]:
    """Another sandbox's process."""
    proc = stockade.Sandbox(read=SYSTEM).popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def probe(body: str, **sandbox: Any) -> dict[str, dict[str, Any]]:
    head = """
    _keep = []
    def buf(size):
        b = ctypes.create_string_buffer(size)
        _keep.append(b)
        return ctypes.addressof(b)
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    def iov(size):
        v = iovec(buf(size), size)
        _keep.append(v)
        return ctypes.addressof(v)
    PPID = os.getppid()
    """
    res, v = run_probe(textwrap.dedent(head) + textwrap.dedent(body), **sandbox)
    assert res.returncode == 0, res.stderr
    assert v["control"]["errno"] == 0, v["control"]
    return v


@pytest.mark.parametrize("spawner", ["server"])
def test_ptrace_is_refused(host: int, sibling: int, spawner: str) -> None:
    v = probe(
        f"""
        attempt("control", lambda: os.getpid())
        for who, pid in (("parent", PPID), ("host", {host}), ("sibling", {sibling})):
            attempt("attach_" + who, lambda: sys_call({SYS_ptrace}, {PTRACE_ATTACH}, pid, 0, 0))
            attempt("seize_" + who, lambda: sys_call({SYS_ptrace}, {PTRACE_SEIZE}, pid, 0, 0))
        attempt("traceme", lambda: sys_call({SYS_ptrace}, {PTRACE_TRACEME}, 0, 0, 0))
        # Its own child: the kernel alone would allow this one.
        child = os.fork()
        if child == 0:
            import time
            time.sleep(30)
            os._exit(0)
        attempt("attach_child", lambda: sys_call({SYS_ptrace}, {PTRACE_ATTACH}, child, 0, 0))
        os.kill(child, 9)
        attempt("reaped", lambda: os.waitpid(child, 0)[1])
        """,
        spawner=spawner,
    )
    for name in ("attach_parent", "seize_parent", "attach_host", "seize_host",
                 "attach_sibling", "seize_sibling", "traceme", "attach_child"):  # fmt: skip
        assert v[name]["errno"] == errno.EPERM, (name, v[name])
    assert v["reaped"]["value"] == 9  # the child was not stopped by a tracer


def test_cross_process_memory_and_descriptors(host: int) -> None:
    v = probe(
        f"""
        attempt("control", lambda: os.getpid())
        me = os.getpid()
        for who, pid in (("self", me), ("parent", PPID), ("host", {host})):
            attempt("vm_read_" + who, lambda: sys_call({SYS_process_vm_readv}, pid, iov(8), 1,
                                                       iov(8), 1, 0))
            attempt("vm_write_" + who, lambda: sys_call({SYS_process_vm_writev}, pid, iov(8), 1,
                                                        iov(8), 1, 0))
            attempt("kcmp_" + who, lambda: sys_call({SYS_kcmp}, me, pid, {KCMP_FILE}, 0, 0))
            pidfd = os.pidfd_open(pid)
            attempt("pidfd_getfd_" + who, lambda: sys_call({SYS_pidfd_getfd}, pidfd, 0, 0))
            os.close(pidfd)
        """
    )
    # "self" is what the kernel would allow: EPERM there is the filter's.
    for who in ("self", "parent", "host"):
        for what in ("vm_read", "vm_write", "kcmp", "pidfd_getfd"):
            name = f"{what}_{who}"
            assert v[name]["errno"] == errno.EPERM, (name, v[name])


def soft_nofile(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    return line.split()[3]


@pytest.mark.parametrize("spawner", ["server"])
def test_limits_of_host_processes_cannot_be_changed(host: int, spawner: str) -> None:
    """prlimit(2) on another process needs only a matching uid in the
    kernel, and Landlock has no hook for it: only the sandbox can refuse.
    Lowering a host process's RLIMIT_NOFILE (the fork server's, say) is a
    denial of service on everything it serves."""
    before = soft_nofile(host)
    v = probe(
        f"""
        class rlimit64(ctypes.Structure):
            _fields_ = [("cur", ctypes.c_uint64), ("max", ctypes.c_uint64)]
        low = rlimit64(3, 3)
        attempt("control", lambda: sys_call({SYS_prlimit64}, 0, {RLIMIT_NOFILE}, 0,
                                            ctypes.addressof(rlimit64())))
        attempt("set_host", lambda: sys_call({SYS_prlimit64}, {host}, {RLIMIT_NOFILE},
                                             ctypes.addressof(low), 0))
        attempt("set_host_high", lambda: sys_call({SYS_prlimit64}, (1 << 32) | {host},
                                                  {RLIMIT_NOFILE}, ctypes.addressof(low), 0))
        # The parent is the fork server or this test: "change" its limit to
        # what it is now, so that a failing test does not break the suite.
        same = rlimit64()
        attempt("get_parent", lambda: sys_call({SYS_prlimit64}, PPID, {RLIMIT_NOFILE}, 0,
                                               ctypes.addressof(same)))
        attempt("set_parent", lambda: sys_call({SYS_prlimit64}, PPID, {RLIMIT_NOFILE},
                                               ctypes.addressof(same), 0))
        """,
        spawner=spawner,
    )
    assert v["set_host"]["errno"] == errno.EPERM, v["set_host"]
    assert v["set_host_high"]["errno"] == errno.EPERM, v["set_host_high"]
    assert v["set_parent"]["errno"] == errno.EPERM, v["set_parent"]
    assert soft_nofile(host) == before


def test_scheduling_of_host_processes_cannot_be_changed(host: int) -> None:
    before = (os.sched_getaffinity(host), os.sched_getscheduler(host),
              os.getpriority(os.PRIO_PROCESS, host))  # fmt: skip
    v = probe(
        f"""
        attempt("control", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
        attempt("affinity", lambda: os.sched_setaffinity({host}, {{min(os.sched_getaffinity(0))}}))
        attempt("idle", lambda: os.sched_setscheduler({host}, os.SCHED_IDLE, os.sched_param(0)))
        attempt("nice", lambda: os.setpriority(os.PRIO_PROCESS, {host}, 19))
        attempt("nice_group", lambda: os.setpriority(os.PRIO_PGRP, os.getpgid({host}), 19))
        attempt("param", lambda: os.sched_setparam({host}, os.sched_param(0)))
        # sched_setattr(pid, struct sched_attr {{size=48, policy=SCHED_IDLE}}, 0)
        attr = (ctypes.c_uint32 * 12)(48, 5)
        attempt("setattr", lambda: sys_call(314, {host}, ctypes.addressof(attr), 0))
        # pid_t is an int: high bits must not turn the pid into "self".
        attempt("affinity_high", lambda: sys_call(203, (1 << 32) | {host}, 8,
                                                  ctypes.addressof(ctypes.c_uint64(1))))
        # ioprio_set(IOPRIO_WHO_PROCESS, pid, IOPRIO_CLASS_IDLE << 13)
        attempt("ioprio", lambda: sys_call(251, 1, {host}, 3 << 13))
        # move_pages and migrate_pages need ptrace-mode access.
        attempt("move_pages", lambda: sys_call(279, {host}, 0, 0, 0, 0, 0))
        attempt("migrate_pages", lambda: sys_call(256, {host}, 8, 0, 0))
        """
    )
    names = ("affinity", "idle", "nice", "nice_group", "param", "setattr", "affinity_high",
             "ioprio", "move_pages", "migrate_pages")  # fmt: skip
    assert {n: v[n] for n in names if v[n]["errno"] != errno.EPERM} == {}
    after = (os.sched_getaffinity(host), os.sched_getscheduler(host),
             os.getpriority(os.PRIO_PROCESS, host))  # fmt: skip
    assert after == before
