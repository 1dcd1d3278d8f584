"""seccomp user notification (seccomp_unotify(2)).

Some facts about the notification fd:

- A filter loaded with ``SECCOMP_FILTER_FLAG_NEW_LISTENER`` returns a
  listener fd.  A system call the filter answers with
  ``SECCOMP_RET_USER_NOTIF`` blocks in the kernel until someone holding
  the listener answers it; with no listener left it fails with ENOSYS, so
  a supervisor that dies allows nothing that was pending.
- ``SECCOMP_IOCTL_NOTIF_RECV`` fills a ``struct seccomp_notif`` (it must
  be zeroed first: the kernel refuses a dirty buffer with EINVAL).  It
  fails with ENOENT when the caller died or was interrupted by a signal
  between the wake-up and the copy.
- ``SECCOMP_IOCTL_NOTIF_SEND`` answers one notification by id: a return
  value and an errno, or ``SECCOMP_USER_NOTIF_FLAG_CONTINUE`` to let the
  kernel run the call as if nothing had happened (which re-reads the
  call's arguments from the process's memory: never for a checked path).
  ENOENT means the call is gone (the process was killed or a signal
  interrupted the call).
- ``SECCOMP_IOCTL_NOTIF_ID_VALID`` says whether a notification is still
  pending: after reading the process's memory, it proves that the pid we
  read from was still the caller (not a recycled pid).
- ``SECCOMP_IOCTL_NOTIF_ADDFD`` installs one of our descriptors in the
  caller; with ``SECCOMP_ADDFD_FLAG_SEND`` (5.14) it also answers the
  notification with the new fd number, atomically.
- ``SECCOMP_IOCTL_NOTIF_SET_FLAGS`` with
  ``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`` (6.6) asks the kernel to wake the
  supervisor and the caller as a pair on the same CPU.  It covers the
  wake-up of a supervisor that waits on the listener itself (RECV, or
  ``poll``; not through ``epoll``, whose own wake-up of its waiter is a
  plain one) and SEND's wake-up of the caller, not ADDFD's: ADDFD wakes
  the caller with a plain wake-up to install the descriptor (on another
  CPU when ours is busy: ours), and
  the caller wakes the supervisor back the same way.  Where waking an
  idle CPU is slow (a virtual machine), an ADDFD answer costs those two
  wake-ups, and a SEND answer none (the supervisor's idle poller,
  :mod:`stockade.supervisor.idlepoll`, keeps one CPU from halting).
- The listener polls readable while a notification waits, and reports
  POLLHUP once no task uses the filter any more.

Structs and request numbers are x86_64 (include/uapi/linux/seccomp.h).
"""

from __future__ import annotations

import ctypes
import errno
import os

from stockade.kernel import _ffi

SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104


class SeccompData(ctypes.Structure):
    """struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer;
    __u64 args[6]; };"""

    _fields_ = [
        ("nr", ctypes.c_int),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class SeccompNotif(ctypes.Structure):
    """struct seccomp_notif { __u64 id; __u32 pid; __u32 flags;
    struct seccomp_data data; };"""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", SeccompData),
    ]


class SeccompNotifResp(ctypes.Structure):
    """struct seccomp_notif_resp { __u64 id; __s64 val; __s32 error; __u32 flags; };"""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class SeccompNotifAddfd(ctypes.Structure):
    """struct seccomp_notif_addfd { __u64 id; __u32 flags; __u32 srcfd;
    __u32 newfd; __u32 newfd_flags; };"""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


assert ctypes.sizeof(SeccompNotif) == 80
assert ctypes.sizeof(SeccompNotifResp) == 24
assert ctypes.sizeof(SeccompNotifAddfd) == 24

_ioctl = _ffi.ioctl
_get_errno = ctypes.get_errno
_NOTIF_SIZE = ctypes.sizeof(SeccompNotif)


def recv(fd: int, notif: SeccompNotif) -> None:
    """Receive one notification into *notif* (zeroed here); raises OSError
    (ENOENT: the caller went away before we could read it)."""
    addr = ctypes.addressof(notif)
    while True:
        ctypes.memset(addr, 0, _NOTIF_SIZE)
        if _ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, addr) == 0:
            return
        err = _get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


class Responder:
    """Preallocated answer structs for one thread: answering allocates
    nothing.  Not thread-safe: one per worker."""

    def __init__(self) -> None:
        self._resp = SeccompNotifResp()
        self._resp_addr = ctypes.addressof(self._resp)
        self._addfd = SeccompNotifAddfd()
        self._addfd_addr = ctypes.addressof(self._addfd)
        self._id = ctypes.c_uint64()
        self._id_addr = ctypes.addressof(self._id)
        #: Set by every successful answer; the owner clears it.
        self.answered = False

    def send(self, fd: int, notif_id: int, val: int = 0, error: int = 0, flags: int = 0) -> int:
        """Answer *notif_id*: ``val`` on success, ``-error`` if *error*.
        Returns 0, or the errno of a failed answer (ENOENT: the call is
        gone), which the caller can do nothing about."""
        r = self._resp
        r.id = notif_id
        r.val = val
        r.error = -error if error else 0
        r.flags = flags
        # Set first: the answer never blocks, and the owner only uses the
        # flag to know that this thread will be free again at once.
        self.answered = True
        while _ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, self._resp_addr) != 0:
            err = _get_errno()
            if err != errno.EINTR:
                return err
        return 0

    def cont(self, fd: int, notif_id: int) -> int:
        """Let the kernel run the call (only for calls whose arguments we
        did not read to decide)."""
        return self.send(fd, notif_id, flags=SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def valid(self, fd: int, notif_id: int) -> bool:
        """Whether *notif_id* is still pending (SECCOMP_IOCTL_NOTIF_ID_VALID)."""
        self._id.value = notif_id
        return bool(_ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, self._id_addr) == 0)

    def addfd(self, fd: int, notif_id: int, srcfd: int, cloexec: bool, send: bool = True) -> int:
        """Install *srcfd* in the caller; with *send*, also answer the call
        with the new descriptor number.  Returns the number; raises OSError
        (ENOENT: the call is gone; EMFILE: the caller's table is full)."""
        a = self._addfd
        a.id = notif_id
        a.flags = SECCOMP_ADDFD_FLAG_SEND if send else 0
        a.srcfd = srcfd
        a.newfd = 0
        a.newfd_flags = os.O_CLOEXEC if cloexec else 0
        # With SEND the caller is answered inside this ioctl, which then
        # waits only for the caller to install the descriptor.
        self.answered = self.answered or send
        while True:
            ret: int = _ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, self._addfd_addr)
            if ret >= 0:
                return ret
            err = _get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))


def set_sync_wakeup(fd: int) -> bool:
    """Ask for synchronous wake-ups on *fd*; False on a kernel without
    them (EINVAL before 6.6)."""
    # The request takes the flags by value, not by address.
    return bool(_ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0)
