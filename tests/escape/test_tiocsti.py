"""No typing into a terminal (SPEC section 8).

TIOCSTI pushes bytes into a terminal's input queue, as if typed: from a
sandbox sharing its caller's terminal, that is a command typed into the
caller's shell.  TIOCLINUX can do the same on a virtual console.  The
filter refuses both (EPERM) on every descriptor, and compares only the low
32 bits of the request, as the kernel does (``cmd`` is an ``unsigned int``),
so setting the high bits changes nothing.

The sandbox gets a pseudo-terminal of its own, with ioctl rights on it, so
only the filter stands between the probe and the call; TIOCGWINSZ on the
same terminal is the control.
"""

from __future__ import annotations

import errno
import os

import pytest

from conftest import run_probe

TIOCSTI = 0x5412
TIOCGWINSZ = 0x5413
TIOCLINUX = 0x541C
SYS_ioctl = 16

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")

PROBE = f"""
import fcntl, termios, tty
master, slave = os.openpty()
tty.setraw(slave)
byte = ctypes.create_string_buffer(b"x")
attempt("winsz", lambda: len(fcntl.ioctl(slave, {TIOCGWINSZ}, bytes(8))))
attempt("winsz_master", lambda: len(fcntl.ioctl(master, {TIOCGWINSZ}, bytes(8))))
for name, fd in (("slave", slave), ("master", master)):
    attempt("sti_" + name, lambda: fcntl.ioctl(fd, {TIOCSTI}, b"x"))
    attempt("sti_raw_" + name, lambda: sys_call({SYS_ioctl}, fd, {TIOCSTI},
                                                ctypes.addressof(byte)))
    attempt("sti_high_" + name, lambda: sys_call({SYS_ioctl}, fd, (1 << 32) | {TIOCSTI},
                                                 ctypes.addressof(byte)))
    attempt("sti_high2_" + name, lambda: sys_call({SYS_ioctl}, fd, (0xFFFFFFFF << 32) | {TIOCSTI},
                                                  ctypes.addressof(byte)))
    attempt("linux_" + name, lambda: fcntl.ioctl(fd, {TIOCLINUX}, b"\\x06\\x00"))
    attempt("linux_high_" + name, lambda: sys_call({SYS_ioctl}, fd, (1 << 32) | {TIOCLINUX},
                                                   ctypes.addressof(byte)))
# Independent witness: nothing reached the input queue.
os.set_blocking(slave, False)
attempt("queue", lambda: os.read(slave, 16))
# The high bits really are ignored by the kernel: TIOCGWINSZ with them works.
ws = ctypes.create_string_buffer(8)
attempt("winsz_high", lambda: sys_call({SYS_ioctl}, slave, (1 << 32) | {TIOCGWINSZ},
                                       ctypes.addressof(ws)))
"""


def test_tiocsti_and_tioclinux_are_refused() -> None:
    res, v = run_probe(PROBE, write=["/dev/ptmx", "/dev/pts"])
    assert res.returncode == 0, res.stderr
    assert v["winsz"] == {"name": "winsz", "errno": 0, "value": 8}
    assert v["winsz_master"]["errno"] == 0
    assert v["winsz_high"]["errno"] == 0
    for side in ("slave", "master"):
        for what in ("sti_", "sti_raw_", "sti_high_", "sti_high2_", "linux_", "linux_high_"):
            name = what + side
            assert v[name]["errno"] == errno.EPERM, (name, v[name])
    assert v["queue"]["errno"] == errno.EAGAIN
