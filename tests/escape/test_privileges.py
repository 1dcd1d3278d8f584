"""No privilege is gained or kept inside the sandbox (SPEC section 8).

Witnessed from inside through ``/proc/self/status`` (NoNewPrivs, Seccomp,
the capability sets) and through a setuid-root program started inside: it
must run with the caller's uid and no capability.  The filter refuses the
process-image tricks (PR_SET_MM, PR_SET_PTRACER, PR_SET_SECUREBITS, making
itself dumpable again, personality flags that weaken memory protection),
and rlimits the sandbox was given cannot be raised back.
"""

from __future__ import annotations

import errno
import os
import shutil
import textwrap
from typing import Any

import pytest

from conftest import is_root, run_probe

PR_SET_DUMPABLE = 4
PR_SET_SECUREBITS = 28
PR_SET_MM = 35
PR_SET_MM_START_CODE = 1
PR_SET_PTRACER = 0x59616D61
PR_SET_PTRACER_ANY = -1
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
READ_IMPLIES_EXEC = 0x0400000
ADDR_NO_RANDOMIZE = 0x0040000
MMAP_PAGE_ZERO = 0x0100000
SYS_personality = 135
SYS_prctl = 157


def status_fields(text: str) -> dict[str, str]:
    return {k: val.strip() for k, _, val in (line.partition(":") for line in text.splitlines())}


def probe(body: str, **sandbox: Any) -> dict[str, dict[str, Any]]:
    res, v = run_probe(textwrap.dedent(body), **sandbox)
    assert res.returncode == 0, res.stderr
    return v


def test_status_shows_no_privilege() -> None:
    v = probe(
        """
        attempt("status", lambda: open("/proc/self/status").read())
        attempt("nnp", lambda: sys_call(157, 39, 0, 0, 0, 0))  # PR_GET_NO_NEW_PRIVS
        """,
        read=["/proc"],
    )
    st = status_fields(v["status"]["value"])
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    assert int(st["Seccomp_filters"]) >= 1
    assert v["nnp"]["value"] == 1
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if is_root() or cap != "CapBnd":
            assert int(st[cap], 16) == 0, (cap, st[cap])


def setuid_root_program() -> str | None:
    """A setuid-root program that waits on stdin after its prompt."""
    for name in ("passwd", "chfn", "chsh"):
        path = shutil.which(name, path="/usr/bin:/bin")
        if path and os.stat(path).st_uid == 0 and os.stat(path).st_mode & 0o4000:
            return path
    return None


def test_setuid_program_gains_nothing() -> None:
    """The setuid-root program is caught after its prompt (so after exec
    has fixed its credentials) and its /proc status read from inside."""
    program = setuid_root_program()
    if program is None:
        pytest.skip("no setuid-root passwd/chfn/chsh here")
    v = probe(
        f"""
        import subprocess, select
        p = subprocess.Popen([{program!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        ready, _, _ = select.select([p.stdout], [], [], 10)
        attempt("prompt", lambda: os.read(p.stdout.fileno(), 200).decode())
        attempt("status", lambda: open(f"/proc/{{p.pid}}/status").read())
        p.kill()
        p.wait()
        """,
        read=["/proc"],
    )
    assert v["status"]["errno"] == 0, v
    st = status_fields(v["status"]["value"])
    assert st["Name"] == os.path.basename(program), (st["Name"], v["prompt"])
    uid = os.getuid()
    assert st["Uid"].split() == [str(uid)] * 4
    assert int(st["CapEff"], 16) == 0
    assert int(st["CapPrm"], 16) == 0
    assert st["NoNewPrivs"] == "1"


def test_process_image_tricks_are_refused() -> None:
    v = probe(
        f"""
        def prctl(*args):
            return sys_call({SYS_prctl}, *args)
        attempt("control", lambda: prctl({PR_GET_NO_NEW_PRIVS}, 0, 0, 0, 0))
        attempt("set_mm", lambda: prctl({PR_SET_MM}, {PR_SET_MM_START_CODE}, 0x400000, 0, 0))
        attempt("set_ptracer", lambda: prctl({PR_SET_PTRACER}, os.getppid(), 0, 0, 0))
        attempt("set_ptracer_any", lambda: prctl({PR_SET_PTRACER}, {PR_SET_PTRACER_ANY}, 0, 0, 0))
        attempt("securebits", lambda: prctl({PR_SET_SECUREBITS}, 0, 0, 0, 0))
        attempt("dumpable_off", lambda: prctl({PR_SET_DUMPABLE}, 0, 0, 0, 0))
        attempt("dumpable_on", lambda: prctl({PR_SET_DUMPABLE}, 1, 0, 0, 0))
        attempt("nnp_off", lambda: prctl({PR_SET_NO_NEW_PRIVS}, 0, 0, 0, 0))
        attempt("persona_query", lambda: sys_call({SYS_personality}, 0xFFFFFFFF))
        attempt("persona_rie", lambda: sys_call({SYS_personality}, {READ_IMPLIES_EXEC}))
        attempt("persona_zero", lambda: sys_call({SYS_personality}, {MMAP_PAGE_ZERO}))
        attempt("persona_rie_high", lambda: sys_call({SYS_personality},
                                                     (1 << 32) | {READ_IMPLIES_EXEC}))
        attempt("persona_norandom", lambda: sys_call({SYS_personality}, {ADDR_NO_RANDOMIZE}))
        attempt("persona_after", lambda: sys_call({SYS_personality}, 0xFFFFFFFF))
        """
    )
    assert v["control"] == {"name": "control", "errno": 0, "value": 1}
    for name in ("set_mm", "set_ptracer", "set_ptracer_any", "securebits", "dumpable_on",
                 "persona_rie", "persona_zero", "persona_rie_high"):  # fmt: skip
        assert v[name]["errno"] == errno.EPERM, (name, v[name])
    assert v["dumpable_off"]["errno"] == 0
    # NO_NEW_PRIVS cannot be unset: the kernel's own EINVAL.
    assert v["nnp_off"]["errno"] == errno.EINVAL
    assert v["persona_query"]["errno"] == 0
    assert v["persona_norandom"]["errno"] == 0
    # personality() returns the previous value: ADDR_NO_RANDOMIZE only.
    assert v["persona_after"]["value"] == ADDR_NO_RANDOMIZE


def test_rlimit_cannot_be_raised() -> None:
    # Raw prlimit64: Python's resource module turns EPERM into ValueError.
    v = probe(
        """
        class rlimit64(ctypes.Structure):
            _fields_ = [("cur", ctypes.c_uint64), ("max", ctypes.c_uint64)]
        def setlimit(soft, hard, pid=0):
            new = rlimit64(soft, hard)
            return sys_call(302, pid, 7, ctypes.addressof(new), 0)  # RLIMIT_NOFILE
        def getlimit():
            old = rlimit64()
            sys_call(302, 0, 7, 0, ctypes.addressof(old))
            return [old.cur, old.max]
        attempt("control", getlimit)
        attempt("lower_soft", lambda: setlimit(32, 64))
        attempt("raise_hard", lambda: setlimit(32, 128))
        attempt("raise_both", lambda: setlimit(4096, 4096))
        attempt("raise_own_pid", lambda: setlimit(32, 128, os.getpid()))
        attempt("raise_soft_past_hard", lambda: setlimit(128, 64))
        attempt("after", getlimit)
        """,
        rlimits={"nofile": 64},
    )
    assert v["control"]["value"] == [64, 64]
    assert v["lower_soft"]["errno"] == 0
    # Raising a hard limit needs CAP_SYS_RESOURCE, which even root's
    # sandbox does not have.
    for name in ("raise_hard", "raise_both", "raise_own_pid"):
        assert v[name]["errno"] == errno.EPERM, (name, v[name])
    # soft > hard is the kernel's EINVAL, whoever asks.
    assert v["raise_soft_past_hard"]["errno"] == errno.EINVAL
    assert v["after"]["value"] == [32, 64]


@pytest.mark.skipif(not is_root(), reason="compares against what root has outside")
def test_root_loses_capabilities_it_had() -> None:
    with open("/proc/self/status") as f:
        outside = status_fields(f.read())
    assert int(outside["CapEff"], 16) != 0
    v = probe('attempt("status", lambda: open("/proc/self/status").read())', read=["/proc"])
    inside = status_fields(v["status"]["value"])
    assert inside["Uid"].split()[0] == "0"
    assert int(inside["CapBnd"], 16) == 0
    assert int(inside["CapEff"], 16) == 0
