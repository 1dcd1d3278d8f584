"""Paths as the sandboxed process sees them, opened by the supervisor.

How a path named by a trapped call is resolved, and why it cannot escape
its rule:

- Every lookup starts at the sandbox's root (``/proc/PID/root``, opened
  once per sandbox: chroot and pivot_root are denied by the main filter,
  so it never changes), with ``openat2(RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS)``: ``..`` and absolute symlinks stay inside that
  root and cross the sandbox's own mounts (its masks), exactly as the
  kernel resolves them for the process.  A relative path is joined to the
  process's working directory (``/proc/PID/cwd``) or its dirfd
  (``/proc/PID/fd/N``) read as a path in the sandbox's view.
- The decision is made on the path of the object *we opened* (read back
  from ``/proc/self/fd/N``), never on the text the process passed: a
  rename or a symlink swapped between our reading and our opening changes
  what we open, and then what we decide on, never the pairing of the two.
- ``/proc/self`` and ``/proc/thread-self`` name the supervisor in its own
  lookups: the text is rewritten to the caller's pid first, and an opened
  object under a ``/proc/PID`` directory is refused unless PID is the
  caller (its thread group), so neither a symlink to ``/proc/self`` nor a
  path naming another process reaches what the supervisor (which has no
  Landlock domain) could open.  The ``/proc/PID/fd/N`` magic links of the
  caller are reopened the way the kernel does: by following the link.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re

from stockade.kernel import _ffi, procmem

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
SYS_openat2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
O_PATH = 0o10000000
O_NOFOLLOW = 0o400000
O_DIRECTORY = 0o200000
O_CLOEXEC = 0o2000000
O_CREAT = 0o100
O_EXCL = 0o200
O_TMPFILE = 0o20200000
#: Flags openat2 accepts (VALID_OPEN_FLAGS); others are EINVAL, as for the
#: process.  O_CLOEXEC is the new descriptor's, not ours (ours always has it).
VALID_OPEN_FLAGS = 0o37777777 & ~0o40000000

_MAGIC = re.compile(r"/proc/(\d+)(?:/task/(\d+))?/(fd/\d+|exe)")
_ROOT_CWD = re.compile(r"/proc/(\d+)(?:/task/(\d+))?/(root|cwd)(/.*)?", re.DOTALL)
_PROC_PID = re.compile(r"/proc/(\d+)(?:/|$)")


class OpenHow(ctypes.Structure):
    """struct open_how { __u64 flags; __u64 mode; __u64 resolve; };"""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_HOW_SIZE = ctypes.sizeof(OpenHow)
_syscall = _ffi._syscall
_c_long = ctypes.c_long


#: Scoped lookups retried after EAGAIN before it is given back.
SCOPED_RETRIES = 16


def openat2(dirfd: int, path: bytes, how: OpenHow) -> int:
    """``openat2(2)``; raises OSError (EINTR retried, and EAGAIN a few
    times for a scoped lookup)."""
    ref = ctypes.byref(how)
    # A RESOLVE_IN_ROOT or RESOLVE_BENEATH lookup that walks ".." fails
    # with EAGAIN when a rename or mount ran meanwhile (the kernel cannot
    # tell the walk stayed inside); openat(2), which the sandbox called,
    # never fails that way, so the lookup is tried again.  (An O_NONBLOCK
    # open of a leased file also gives EAGAIN: that one stays EAGAIN.)
    retries = SCOPED_RETRIES if how.resolve & (RESOLVE_IN_ROOT | RESOLVE_BENEATH) else 0
    while True:
        ret: int = _syscall(_c_long(SYS_openat2), _c_long(dirfd), path, ref, _c_long(_HOW_SIZE))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err == errno.EAGAIN and retries > 0:
            retries -= 1
            continue
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


class Caller:
    """The process behind one notification, as the sandbox names it."""

    __slots__ = ("_ids", "tid")

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self._ids: tuple[int, int] | None = None

    def ids(self) -> tuple[int, int]:
        """``(tgid, tid)`` in the sandbox's pid namespace (the last
        ``NStgid``/``NSpid`` values of /proc/TID/status)."""
        if self._ids is None:
            tgid, tid = procmem.status(self.tid, b"NStgid", b"NSpid")
            if tgid is None or tid is None:
                raise OSError(errno.ESRCH, "no such process")
            self._ids = (int(tgid.split()[-1]), int(tid.split()[-1]))
        return self._ids


def rewrite_self(path: bytes, caller: Caller) -> bytes:
    """``/proc/self`` and ``/proc/thread-self`` as the caller's own."""
    if not path.startswith(b"/proc/") and not path.startswith(b"/dev/std") \
            and not path.startswith(b"/dev/fd"):  # fmt: skip
        return path
    tgid, tid = caller.ids()
    for prefix, repl in (
        (b"/proc/self", b"/proc/%d" % tgid),
        (b"/proc/thread-self", b"/proc/%d/task/%d" % (tgid, tid)),
        (b"/dev/fd", b"/proc/%d/fd" % tgid),
    ):
        if path == prefix or path.startswith(prefix + b"/"):
            return repl + path[len(prefix) :]
    for n, name in enumerate((b"/dev/stdin", b"/dev/stdout", b"/dev/stderr")):
        if path == name:
            return b"/proc/%d/fd/%d" % (tgid, n)
    return path


def base_path(pid: int, dirfd: int) -> bytes:
    """The directory a relative path starts from, in the sandbox's view:
    the working directory, or what *dirfd* names.  ENOTDIR when dirfd is
    not a path (a pipe, a socket); ENOENT when it was deleted."""
    link = b"/proc/%d/cwd" % pid if dirfd == AT_FDCWD else b"/proc/%d/fd/%d" % (pid, dirfd)
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        raise OSError(errno.EBADF if dirfd != AT_FDCWD else errno.ENOENT, "bad dirfd") from None
    if not target.startswith(b"/"):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    if target.endswith(b" (deleted)"):
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    return target


def absolute(pid: int, dirfd: int, path: bytes) -> bytes:
    """*path* made absolute for *pid* (dirfd and cwd applied)."""
    if path.startswith(b"/"):
        return path
    base = base_path(pid, dirfd)
    return base + path if base.endswith(b"/") else base + b"/" + path


def normal(path: bytes) -> bool:
    """Whether absolute *path* is already in normal form: no empty, ``.``
    or ``..`` component, no trailing slash.  Opened without following any
    symlink, such a path names the object we get, as the sandbox sees it."""
    return (
        b"//" not in path
        and b"/./" not in path
        and b"/../" not in path
        and not path.endswith((b"/.", b"/..", b"/"))
    )


def fd_path(fd: int) -> str:
    """The path of our descriptor *fd*, in the sandbox's view."""
    return os.readlink(f"/proc/self/fd/{fd}")


def check_proc(path: str, caller: Caller) -> None:
    """Refuse (EACCES) an object under another process's /proc directory."""
    m = _PROC_PID.match(path)
    if m is not None:
        tgid, tid = caller.ids()
        if int(m.group(1)) not in (tgid, tid):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))


def open_in_root(
    root_fd: int,
    caller: Caller,
    full: bytes,
    flags: int,
    mode: int,
    how: OpenHow,
    extra_resolve: int = 0,
) -> int:
    """Open absolute *full* in the sandbox's root; returns our fd (CLOEXEC).

    The caller's own ``/proc/PID/fd/N``, ``exe``, ``root`` and ``cwd``
    magic links are followed the way the kernel follows them; every other
    magic link is ELOOP.
    """
    full = rewrite_self(full, caller)
    if full.startswith(b"/proc/"):
        full = _root_and_cwd(full, caller)
    if full.startswith(b"/proc/"):
        m = _MAGIC.fullmatch(os.fsdecode(full))
        if m is not None:
            tgid, tid = caller.ids()
            if int(m.group(1)) == tgid and (m.group(2) is None or int(m.group(2)) in (tgid, tid)):
                return _reopen(caller.tid, m.group(3), flags, mode)
    how.flags = (flags & VALID_OPEN_FLAGS) | O_CLOEXEC
    how.mode = mode if flags & (O_CREAT | O_TMPFILE) == O_CREAT or flags & O_TMPFILE == O_TMPFILE \
        else 0  # fmt: skip
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | extra_resolve
    return openat2(root_fd, full, how)


def _root_and_cwd(full: bytes, caller: Caller) -> bytes:
    """The caller's own ``/proc/PID/root`` and ``/proc/PID/cwd`` magic links,
    followed the way the kernel would: to its root, to its cwd."""
    m = _ROOT_CWD.match(os.fsdecode(full))
    if m is None:
        return full
    tgid, tid = caller.ids()
    if int(m.group(1)) != tgid or (m.group(2) is not None and int(m.group(2)) not in (tgid, tid)):
        return full
    rest = os.fsencode(m.group(4) or "")
    if m.group(3) == "root":
        return rest or b"/"
    base = base_path(caller.tid, AT_FDCWD)
    return base.rstrip(b"/") + rest if rest else base


def _reopen(host_tid: int, link: str, flags: int, mode: int) -> int:
    # /proc/TID/fd/N (or exe) in our namespace is the same file as the
    # caller's; opening it follows the link as the kernel would for it.
    return os.open(f"/proc/{host_tid}/{link}", (flags & VALID_OPEN_FLAGS) | O_CLOEXEC, mode)


def split_parent(full: bytes) -> tuple[bytes, bytes]:
    """``(parent, last component)`` of an absolute path; trailing slashes
    stay with the component's meaning (a directory)."""
    stripped = full.rstrip(b"/")
    if not stripped:
        return b"/", b"."
    parent, _, name = stripped.rpartition(b"/")
    return parent or b"/", name
