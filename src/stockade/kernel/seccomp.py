"""seccomp-bpf filters (seccomp(2)).

Some facts about seccomp filters:

- A filter is loaded with ``seccomp(SECCOMP_SET_MODE_FILTER, flags, &fprog)``
  and needs ``PR_SET_NO_NEW_PRIVS`` (or CAP_SYS_ADMIN).  Without
  ``SECCOMP_FILTER_FLAG_TSYNC`` it applies to the calling thread only, and
  it is inherited by every child and kept across execve.
- When several filters are stacked, the most restrictive action wins, in
  the order KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > USER_NOTIF > TRACE
  > LOG > ALLOW.
- ``SECCOMP_RET_ERRNO | e`` makes the call return ``-e`` without running it.
- ``SECCOMP_FILTER_FLAG_NEW_LISTENER`` makes the load return a notification
  fd (seccomp_unotify(2)); a process with no listener left gets ENOSYS for
  calls the filter sends to user space.
"""

from __future__ import annotations

import ctypes

from stockade.kernel import _ffi

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_GET_NOTIF_SIZES = 3

SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF


def ret_errno(err: int) -> int:
    """The filter return value that fails a call with *err*."""
    return SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)


class SockFprog(ctypes.Structure):
    """struct sock_fprog { unsigned short len; struct sock_filter *filter; };"""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class PreparedFilter:
    """A filter whose bytes and ``sock_fprog`` are allocated up front, so that
    loading it between fork and exec allocates nothing."""

    def __init__(self, program: bytes, flags: int = 0) -> None:
        if len(program) % 8 or not 0 < len(program) // 8 <= 4096:
            raise ValueError(f"bad BPF program length {len(program)}")
        self.program = program
        self.flags = flags
        self._buf = ctypes.create_string_buffer(program, len(program))
        self.fprog = SockFprog(len(program) // 8, ctypes.addressof(self._buf))
        self.fprog_ref = ctypes.byref(self.fprog)

    def load(self) -> int:
        """Load the filter on the calling thread; returns the listener fd
        when ``SECCOMP_FILTER_FLAG_NEW_LISTENER`` is set, else 0."""
        return _ffi.syscall(_ffi.SYS_seccomp, SECCOMP_SET_MODE_FILTER, self.flags, self.fprog_ref)


def action_available(action: int) -> bool:
    """Whether the kernel knows filter return *action* (SECCOMP_GET_ACTION_AVAIL)."""
    value = ctypes.c_uint32(action)
    try:
        _ffi.syscall(_ffi.SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(value))
    except OSError:
        return False
    return True
