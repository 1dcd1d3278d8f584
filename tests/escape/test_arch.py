"""No system call through another ABI (SPEC section 8).

A 64-bit process can still enter the kernel through the i386 ABI
(``int 0x80``) and, on kernels built with it, the x32 ABI (numbers with bit
30 set).  Both reuse kernel handlers under numbers a 64-bit deny list does
not name, so the filter kills the process (SIGSYS, with no chance to run
another instruction) on a foreign ``arch`` or an x32 number.

Each probe prints "before", makes the call, prints "after": a killed probe
shows "before" only and ends with signal 31.  The controls run the same
machine code without the ``int 0x80``, and show that the kernel alone
answers the i386 call (it returns our pid).
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import subprocess

import pytest

from conftest import PROBE_PY, probe_code, run_probe, verdicts

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 ABIs")

#: mov eax, 20 (i386 getpid); int 0x80; ret
INT80_GETPID = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
#: mov eax, 20; ret - the same code without the system call.
NO_SYSCALL = b"\xb8\x14\x00\x00\x00\xc3"

SHELLCODE = """
import mmap
def run_code(code):
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
print("before", flush=True)
attempt("call", lambda: run_code(CODE))
print("after", flush=True)
"""


def shellcode(code: bytes) -> str:
    return f"CODE = {code!r}\n" + SHELLCODE


@functools.cache
def int80_outside() -> subprocess.CompletedProcess[bytes]:
    code = shellcode(INT80_GETPID) + 'attempt("pid", lambda: os.getpid())\n'
    return subprocess.run(
        [PROBE_PY, "-c", probe_code(code)], capture_output=True, timeout=30, check=False
    )


@pytest.fixture
def ia32() -> None:
    """Skip when the kernel has no i386 emulation: ``int 0x80`` is then a
    general protection fault (SIGSEGV) that never reaches seccomp."""
    if int80_outside().returncode == -signal.SIGSEGV:
        pytest.skip("this kernel has no i386 emulation (ia32_emulation=0)")


@pytest.mark.usefixtures("ia32")
def test_int80_outside_reaches_the_kernel() -> None:
    """The witness: without the sandbox, ``int 0x80`` getpid returns the pid."""
    proc = int80_outside()
    v = verdicts(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert v["call"]["value"] == v["pid"]["value"]


@pytest.mark.usefixtures("ia32")
def test_int80_kills_the_process() -> None:
    res, v = run_probe(shellcode(INT80_GETPID))
    assert res.signal == signal.SIGSYS, (res.returncode, res.stderr)
    assert res.returncode == -31
    assert res.stdout == b"before\n"
    assert "call" not in v


def test_same_code_without_the_call_runs() -> None:
    res, v = run_probe(shellcode(NO_SYSCALL))
    assert res.returncode == 0, res.stderr
    assert v["call"] == {"name": "call", "errno": 0, "value": 20}
    assert res.stdout.endswith(b"after\n")


def test_x32_system_call_kills_the_process() -> None:
    # x32 getpid: 39 | __X32_SYSCALL_BIT.
    res, v = run_probe(
        """
        print("before", flush=True)
        attempt("x32_getpid", lambda: sys_call(39 | 0x40000000))
        print("after", flush=True)
        """
    )
    assert res.signal == signal.SIGSYS, (res.returncode, res.stderr)
    assert res.stdout == b"before\n"
    assert "x32_getpid" not in v


def test_high_numbers() -> None:
    """What a number the filter does not name gets.

    Observed: a number past the table (1000) is allowed by the filter and
    the kernel answers ENOSYS, as it would to any process.  A number whose
    upper 32 bits are set is truncated by the kernel to ``int`` before the
    filter sees it, so ``(1 << 32) | 165`` is mount(2) to both, and EPERM.
    """
    res, v = run_probe(
        """
        attempt("nr_1000", lambda: sys_call(1000))
        attempt("nr_high_mount", lambda: sys_call((1 << 32) | 165, 0, 0, 0, 0, 0))
        attempt("nr_high_getpid", lambda: sys_call((1 << 32) | 39) == os.getpid())
        attempt("after", lambda: os.getpid())
        """
    )
    assert res.returncode == 0, res.stderr
    assert v["nr_1000"]["errno"] == errno.ENOSYS
    assert v["nr_high_mount"]["errno"] == errno.EPERM
    assert v["nr_high_getpid"]["value"] is True
    assert v["after"]["errno"] == 0
