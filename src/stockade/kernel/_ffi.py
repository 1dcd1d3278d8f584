"""The one gate for foreign calls.

Some facts about calling the kernel from Python:

- libc is loaded once with ``use_errno=True`` so that ``ctypes.get_errno()``
  reads the errno of the last foreign call made by *this thread*.
- ``syscall(2)`` returns ``long``; every argument is passed as ``c_long`` or
  a pointer so that nothing is truncated to 32 bits on x86_64.
- A ``-1`` result becomes ``OSError(errno, strerror, path)``.  ``EINTR`` is
  retried here and nowhere else; ``close(2)`` is never retried because the
  descriptor is gone even when it reports EINTR.

No other module calls ``ctypes.CDLL``.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long

#: ``ioctl(fd, request, void *arg)``: the seccomp notification ioctls take
#: preallocated structs by address (no per-call argument conversion).
ioctl = libc.ioctl
ioctl.restype = ctypes.c_int
ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

#: ``process_vm_readv/writev(pid, local_iov, liovcnt, remote_iov, riovcnt, flags)``.
process_vm_readv = libc.process_vm_readv
process_vm_readv.restype = ctypes.c_ssize_t
process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                             ctypes.c_ulong, ctypes.c_ulong]  # fmt: skip
process_vm_writev = libc.process_vm_writev
process_vm_writev.restype = ctypes.c_ssize_t
process_vm_writev.argtypes = process_vm_readv.argtypes

_prctl = libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

# Syscall numbers used outside the standard library, x86_64 (the kernel's
# arch/x86/entry/syscalls/syscall_64.tbl).  One table so another arch can follow.
SYS_prctl = 157
SYS_seccomp = 317
SYS_pidfd_open = 434
SYS_pidfd_getfd = 438
SYS_pidfd_send_signal = 424
SYS_close_range = 436
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
SYS_personality = 135
SYS_unshare = 272
SYS_fsopen = 430
SYS_sched_setaffinity = 203


def _raise(path: str | None = None) -> None:
    err = ctypes.get_errno()
    if path is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), path)


def syscall(nr: int, *args: Any, path: str | None = None) -> int:
    """Call system call *nr*; return its result or raise ``OSError``.

    Integer arguments are passed as ``long``; ctypes objects and ``None`` as
    they are.  EINTR is retried.
    """
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    while True:
        ret: int = _syscall(ctypes.c_long(nr), *cargs)
        if ret != -1:
            return ret
        if ctypes.get_errno() != errno.EINTR:
            _raise(path)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``; raises ``OSError`` on failure."""
    while True:
        ret: int = _prctl(option, arg2, arg3, arg4, arg5)
        if ret != -1:
            return ret
        if ctypes.get_errno() != errno.EINTR:
            _raise()


def check(ret: int, path: str | None = None) -> int:
    """Turn a ``-1`` from a libc call already made into ``OSError``."""
    if ret == -1:
        _raise(path)
    return ret


def retry(fn: Callable[[], int], path: str | None = None) -> int:
    """Call *fn* (a libc call returning -1 on error) until it is not EINTR."""
    while True:
        ret = fn()
        if ret != -1:
            return ret
        if ctypes.get_errno() != errno.EINTR:
            _raise(path)
