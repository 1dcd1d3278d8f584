"""No io_uring (SPEC section 8).

io_uring performs opens, connects and reads in kernel workers that never
pass through the seccomp filter, so all three of its system calls are
refused (EPERM).  The kernel alone answers EBADF to ``io_uring_enter`` and
``io_uring_register`` on descriptor -1; the same probe is asked outside the
sandbox first, so EPERM inside is the filter's answer and not a kernel that
lacks io_uring.  (``io_uring_register(-1, ...)`` is a "blind" registration
since Linux 6.14: opcode 0 there is EINVAL.)
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from conftest import PROBE_PY, probe_code, run_probe, verdicts

SYS_io_uring_setup = 425
SYS_io_uring_enter = 426
SYS_io_uring_register = 427

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")

PROBE = f"""
params = ctypes.create_string_buffer(120)  # struct io_uring_params
attempt("setup", lambda: sys_call({SYS_io_uring_setup}, 4, ctypes.addressof(params)))
attempt("enter", lambda: sys_call({SYS_io_uring_enter}, -1, 1, 0, 0, 0, 0))
attempt("register", lambda: sys_call({SYS_io_uring_register}, -1, 0, 0, 0))
attempt("control", lambda: os.getpid())
"""


def io_uring_disabled() -> int:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read())
    except FileNotFoundError:
        return 0


def test_kernel_alone_answers_otherwise() -> None:
    proc = subprocess.run(
        [PROBE_PY, "-c", probe_code(PROBE)], capture_output=True, timeout=30, check=False
    )
    v = verdicts(proc.stdout)
    if io_uring_disabled() == 0:
        assert v["setup"]["errno"] == 0
    assert v["enter"]["errno"] == errno.EBADF
    assert v["register"]["errno"] in (errno.EINVAL, errno.EBADF)


def test_io_uring_is_refused() -> None:
    res, v = run_probe(PROBE)
    assert res.returncode == 0, res.stderr
    assert v["control"]["errno"] == 0
    for name in ("setup", "enter", "register"):
        assert v[name]["errno"] == errno.EPERM, (name, v[name])


SYS_io_setup = 206
SYS_io_destroy = 207

AIO_PROBE = f"""
ctx = ctypes.c_ulong(0)
def setup():
    sys_call({SYS_io_setup}, 1, ctypes.addressof(ctx))
    sys_call({SYS_io_destroy}, ctx.value)
attempt("io_setup", setup)
"""


def test_linux_aio_is_refused_beside_a_supervisor(workdir: str) -> None:
    # A direct read submitted with io_submit completes into memory after
    # the call returned, so it could rewrite an address the supervisor
    # decided on while a later call waits: with a supervisor, no AIO
    # context can be made (ENOSYS, as a kernel without AIO answers, so
    # programs fall back to threads).
    outside = subprocess.run(
        [PROBE_PY, "-c", probe_code(AIO_PROBE)], capture_output=True, timeout=30, check=False
    )
    assert verdicts(outside.stdout)["io_setup"]["errno"] == 0
    res, v = run_probe(AIO_PROBE, write=[str(workdir)])
    assert res.returncode == 0, res.stderr
    assert v["io_setup"]["errno"] == errno.ENOSYS
