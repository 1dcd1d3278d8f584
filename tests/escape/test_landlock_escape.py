"""The sandbox cannot loosen its own confinement (SPEC section 8).

Both kernel layers stack: a process may add a Landlock domain or a seccomp
filter of its own, and both calls succeed (NO_NEW_PRIVS is set), but the
result is always the intersection with what it already had.  Each attempt
is shown to have taken effect (the call returns 0, and the new layer
refuses something of its own) before the old refusal is checked again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import run_probe

SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
SYS_seccomp = 317
SYS_getppid = 110
SYS_mount = 165
SYS_unshare = 272

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")


def test_a_wider_landlock_domain_changes_nothing(workdir: Path) -> None:
    allowed = workdir / "allowed"
    allowed.mkdir()
    (allowed / "ok.txt").write_text("ok\n")
    (allowed / "hidden.txt").write_text("hidden\n")
    (workdir / "secret.txt").write_text("top secret\n")
    res, v = run_probe(
        f"""
        A, D = {str(allowed)!r}, {str(workdir)!r}
        class ruleset_attr(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64)]
        class path_beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]
        EVERYTHING = (1 << 13) - 1          # every ABI 1 filesystem right
        attr = ruleset_attr(EVERYTHING)
        rs = sys_call({SYS_landlock_create_ruleset}, ctypes.addressof(attr), 8, 0)
        attempt("ruleset", lambda: rs > 0)
        root = os.open("/", os.O_PATH)
        rule = path_beneath(EVERYTHING, root)
        attempt("add_root", lambda: sys_call({SYS_landlock_add_rule}, rs, 1,
                                             ctypes.addressof(rule), 0))
        # The new domain allows everything under /; the old one still holds.
        attempt("restrict", lambda: sys_call({SYS_landlock_restrict_self}, rs, 0))
        attempt("control", lambda: open(A + "/ok.txt").read())
        attempt("secret", lambda: open(D + "/secret.txt").read())
        attempt("secret_write", lambda: open(D + "/new.txt", "w"))
        # Now a domain that allows only ok.txt: it does narrow.
        rs2 = sys_call({SYS_landlock_create_ruleset}, ctypes.addressof(attr), 8, 0)
        for path in ("/usr", "/lib", "/lib64", "/bin", "/etc", A + "/ok.txt"):
            if os.path.exists(path):
                fd = os.open(path, os.O_PATH)
                rights = EVERYTHING if os.path.isdir(path) else 0b111
                r = path_beneath(rights, fd)
                sys_call({SYS_landlock_add_rule}, rs2, 1, ctypes.addressof(r), 0)
        attempt("restrict2", lambda: sys_call({SYS_landlock_restrict_self}, rs2, 0))
        attempt("narrowed", lambda: open(A + "/hidden.txt").read())
        attempt("still_ok", lambda: open(A + "/ok.txt").read())
        """,
        write=[str(allowed)],
    )
    assert res.returncode == 0, res.stderr
    assert v["ruleset"]["value"] is True
    assert v["add_root"]["errno"] == 0
    assert v["restrict"]["errno"] == 0
    assert v["control"]["value"] == "ok\n"
    assert v["secret"]["errno"] == errno.EACCES
    assert v["secret_write"]["errno"] == errno.EACCES
    assert v["restrict2"]["errno"] == 0
    assert v["narrowed"]["errno"] == errno.EACCES
    assert v["still_ok"]["value"] == "ok\n"


def test_an_allow_all_seccomp_filter_changes_nothing() -> None:
    res, v = run_probe(
        f"""
        class sock_filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                        ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]
        class sock_fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.c_void_p)]
        def load(*insns):
            prog = (sock_filter * len(insns))(*insns)
            fprog = sock_fprog(len(insns), ctypes.addressof(prog))
            return sys_call({SYS_seccomp}, 1, 0, ctypes.addressof(fprog))  # SET_MODE_FILTER
        LD_NR = sock_filter(0x20, 0, 0, 0)             # ld [0]  (seccomp_data.nr)
        RET_ALLOW = sock_filter(0x06, 0, 0, 0x7FFF0000)
        attempt("allow_all", lambda: load(RET_ALLOW))
        # A filter of ours that does refuse something: getppid -> errno 99.
        attempt("ours", lambda: load(LD_NR, sock_filter(0x15, 0, 1, {SYS_getppid}),
                                     sock_filter(0x06, 0, 0, 0x00050000 | 99), RET_ALLOW))
        attempt("getppid", lambda: sys_call({SYS_getppid}))
        attempt("control", lambda: os.getpid())
        attempt("mount", lambda: sys_call({SYS_mount}, 0, 0, 0, 0, 0))
        attempt("unshare", lambda: sys_call({SYS_unshare}, 0x10000000))
        attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        attempt("status", lambda: [l.split()[1] for l in open("/proc/self/status")
                                   if l.startswith("Seccomp_filters")])
        """,
        read=["/proc"],
    )
    assert res.returncode == 0, res.stderr
    assert v["allow_all"]["errno"] == 0
    assert v["ours"]["errno"] == 0
    assert v["getppid"]["errno"] == 99  # our own filter is in force
    assert v["control"]["errno"] == 0
    assert v["mount"]["errno"] == errno.EPERM
    assert v["unshare"]["errno"] == errno.EPERM
    assert v["udp"]["errno"] == errno.EACCES
    assert int(v["status"]["value"][0]) >= 3
