"""Ways out of a pid namespace, each tried from inside.

The sandbox must not reach the init (pid 1) nor any host process: not by
signal, ptrace, /proc, a procfs of its own, or a namespace switch.
"""

from __future__ import annotations

import errno
import os

from conftest import run_probe

SYS_ptrace = 101
SYS_fsopen = 430
SYS_unshare = 272
SYS_setns = 308
PTRACE_ATTACH = 16
PTRACE_SEIZE = 0x4206
CLONE_NEWPID = 0x20000000


def test_the_init_and_the_host_are_out_of_reach() -> None:
    host = os.getpid()
    res, v = run_probe(
        f"""
        import signal
        for target in (1, {host}):
            for sig in (0, signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP):
                attempt(f"kill{{target}}.{{sig}}", lambda: os.kill(target, sig))
            for name, op in (("attach", {PTRACE_ATTACH}), ("seize", {PTRACE_SEIZE})):
                attempt(f"{{name}}{{target}}", lambda: sys_call({SYS_ptrace}, op, target, 0, 0))
            attempt(f"environ{{target}}", lambda: open(f"/proc/{{target}}/environ").read())
            attempt(f"ns{{target}}", lambda: os.open(f"/proc/{{target}}/ns/pid", os.O_RDONLY))
            attempt(f"pidfd{{target}}",
                    lambda: sys_call(424, sys_call(434, target, 0), signal.SIGTERM, 0, 0))
        attempt("everyone", lambda: os.kill(-1, signal.SIGTERM))
        """,
        unshare=["pid"],
        read=["/proc"],
    )
    assert res.returncode == 0, res.stderr
    for sig in (0, 15, 9, 19):
        # Landlock's signal scope: the init is outside the command's domain.
        assert v[f"kill1.{sig}"]["errno"] == errno.EPERM
        # The host's processes do not exist in here.
        assert v[f"kill{host}.{sig}"]["errno"] == errno.ESRCH
    for target in (1, host):
        assert v[f"attach{target}"]["errno"] == errno.EPERM  # seccomp
        assert v[f"seize{target}"]["errno"] == errno.EPERM
        # hidepid=4 and a non-dumpable init: pid 1 is not even listed.
        assert v[f"environ{target}"]["errno"] == errno.ENOENT
        assert v[f"ns{target}"]["errno"] == errno.ENOENT
    # A pidfd of the init can be had, but not used to signal it.
    assert v["pidfd1"]["errno"] == errno.EPERM
    assert v[f"pidfd{host}"]["errno"] == errno.ESRCH
    # kill(-1) reaches no one but the sandbox itself (and the probe survives
    # because it is excluded from its own broadcast).
    assert v["everyone"]["errno"] in (0, errno.ESRCH)


def test_no_procfs_of_its_own_and_no_way_back() -> None:
    res, v = run_probe(
        f"""
        name = ctypes.create_string_buffer(b"proc")
        attempt("fsopen", lambda: sys_call({SYS_fsopen}, ctypes.addressof(name), 0))
        attempt("unshare", lambda: sys_call({SYS_unshare}, {CLONE_NEWPID}))
        attempt("setns", lambda: sys_call({SYS_setns}, 0, {CLONE_NEWPID}))
        attempt("pid_for_children",
                lambda: os.readlink("/proc/self/ns/pid_for_children") ==
                        os.readlink("/proc/self/ns/pid"))
        """,
        unshare=["pid"],
        read=["/proc"],
    )
    assert res.returncode == 0, res.stderr
    assert v["fsopen"]["errno"] == errno.EPERM
    assert v["unshare"]["errno"] == errno.EPERM
    assert v["setns"]["errno"] == errno.EPERM
    assert v["pid_for_children"]["value"] is True
