"""No new namespace, by any of the three doors (SPEC section 8).

unshare(2) and setns(2) are refused outright (EPERM); clone(2) is refused
when its flags hold any CLONE_NEW* bit (EPERM); clone3(2), whose flags sit
in memory the filter cannot read, answers ENOSYS so that libc falls back to
clone(2).  A user namespace is the door that matters most: inside one, the
process holds every capability over what it creates.

Controls: fork, threads and subprocesses (which use clone or clone3 with
no namespace flag) keep working; ``unshare(0)`` and ``setns(-1, 0)`` would
succeed and fail with EBADF in the kernel, so EPERM there is the filter's.
"""

from __future__ import annotations

import errno
import os

import pytest

from conftest import run_probe

SYS_clone = 56
SYS_unshare = 272
SYS_setns = 308
SYS_clone3 = 435
SIGCHLD = 17

CLONE_NEW = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")

PROBE = f"""
NEW = {CLONE_NEW!r}
def clone(flags):
    # A raw clone that succeeds returns 0 in a child running this same
    # Python: it must leave at once, without printing or flushing anything.
    pid = sys_call({SYS_clone}, flags, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid
for name, flag in NEW.items():
    attempt("unshare_" + name, lambda: sys_call({SYS_unshare}, flag))
    attempt("clone_" + name, lambda: clone(flag | {SIGCHLD}))
    # clone(2) takes an unsigned long, but the kernel uses the low 32 bits.
    attempt("clone_high_" + name, lambda: clone(flag | {SIGCHLD} | (1 << 32)))
USER_MOUNT = NEW["CLONE_NEWUSER"] | NEW["CLONE_NEWNS"]
attempt("unshare_user_mount", lambda: sys_call({SYS_unshare}, USER_MOUNT))
attempt("unshare_0", lambda: sys_call({SYS_unshare}, 0))
attempt("setns_bad_fd", lambda: sys_call({SYS_setns}, -1, 0))
ns = os.open("/proc/self/ns/user", os.O_RDONLY)
attempt("setns_own_user", lambda: sys_call({SYS_setns}, ns, NEW["CLONE_NEWUSER"]))
# struct clone_args {{ flags, pidfd, child_tid, parent_tid, exit_signal, ... }}
args = (ctypes.c_uint64 * 11)(NEW["CLONE_NEWUSER"], 0, 0, 0, {SIGCHLD})
attempt("clone3_user", lambda: sys_call({SYS_clone3}, ctypes.addressof(args), 88))
plain = (ctypes.c_uint64 * 11)(0, 0, 0, 0, {SIGCHLD})
attempt("clone3_plain", lambda: sys_call({SYS_clone3}, ctypes.addressof(plain), 88))

# Controls.
def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
attempt("fork", fork)
attempt("raw_clone", lambda: clone({SIGCHLD}) > 0)
import threading
box = []
t = threading.Thread(target=lambda: box.append(1))
t.start(); t.join()
attempt("thread", lambda: len(box))
import subprocess
attempt("subprocess", lambda: subprocess.run(["/bin/true"]).returncode)
attempt("own_ns", lambda: os.readlink("/proc/self/ns/user"))
"""


def test_no_new_namespaces() -> None:
    res, v = run_probe(PROBE, read=["/proc"])
    assert res.returncode == 0, res.stderr
    for name in CLONE_NEW:
        for door in ("unshare_", "clone_", "clone_high_"):
            assert v[door + name]["errno"] == errno.EPERM, (door + name, v[door + name])
    for name in ("unshare_user_mount", "unshare_0", "setns_bad_fd", "setns_own_user"):
        assert v[name]["errno"] == errno.EPERM, (name, v[name])
    assert v["clone3_user"]["errno"] == errno.ENOSYS
    assert v["clone3_plain"]["errno"] == errno.ENOSYS
    assert v["fork"] == {"name": "fork", "errno": 0, "value": 7}
    assert v["raw_clone"]["value"] is True
    assert v["thread"]["value"] == 1
    assert v["subprocess"]["value"] == 0
    # Still in the namespace this test runs in.
    assert v["own_ns"]["value"] == os.readlink("/proc/self/ns/user")
