"""Filesystem handlers: the supervisor performs the operation itself.

Every handler here reads the path from the caller's memory once, checks
``SECCOMP_IOCTL_NOTIF_ID_VALID``, opens or resolves the object inside the
sandbox's root (:mod:`stockade.supervisor.resolve`), decides on the path of
what it opened, and then does the operation on *that* object, returning
the result: a descriptor injected with ``SECCOMP_IOCTL_NOTIF_ADDFD``, a
``struct stat`` written with ``process_vm_writev``, or the return value.
Nothing is continued after a path was read, except:

- ``O_PATH`` opens: ``SECCOMP_IOCTL_NOTIF_ADDFD`` cannot inject an O_PATH
  file.  Such a descriptor reads and writes nothing, and whatever is
  opened, executed or looked up through it is decided on its own; a path
  swapped after our check could only reveal metadata (``stat``).

- ``execve``/``execveat``: only the kernel can replace the caller's
  image, so the call is continued, and the kernel reads the path again
  (a thread that swaps it in between, or a process sharing the memory,
  or a rename, could make it run another file).  So the supervisor traces
  the calling thread through the exec (PTRACE_SEIZE before the answer)
  and, stopped before the new program's first instruction, compares the
  image the kernel loaded with the file it decided on: the process is
  killed if they differ (see :func:`_exec_verified`).
- ``chdir``/``fchdir``: a working directory grants nothing; every access
  made from it is decided on its own object.
- ``ioctl``: the request's argument is the caller's memory, so only the
  kernel can run it; decided on the descriptor's path, bounded by
  Landlock's IOCTL_DEV.

Each handler's failure answer is the errno the operation gave us (the one
the kernel would have given the caller), EACCES for a denial, or EACCES
from the sentinel if it raises anything else.  All of them may block (an
open of a FIFO): they run in workers.  The one exception is
:func:`q_open`, the receiver's own answer to a read-only open that cannot
wait (its docstring says when and why).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import stat
import struct
from typing import TYPE_CHECKING

from stockade.kernel import _ffi, notify, procmem, ptrace, syscalls
from stockade.policy.model import Category
from stockade.supervisor import events
from stockade.supervisor.engine import Worker
from stockade.supervisor.resolve import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_NOFOLLOW,
    O_PATH,
    O_TMPFILE,
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    VALID_OPEN_FLAGS,
    Caller,
    OpenHow,
    absolute,
    check_proc,
    fd_path,
    normal,
    open_in_root,
    openat2,
    split_parent,
)
from stockade.supervisor.session import QUICK, Denied, SandboxSession, handles

if TYPE_CHECKING:
    from stockade.plan.notify import NotifyPlan, Verdict
    from stockade.supervisor.fastpath import DirCache

O_ACCMODE = 0o3
O_WRONLY = 0o1
O_RDWR = 0o2
O_TRUNC = 0o1000
O_NOCTTY = 0o400
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_ASYNC = 0o20000
O_DIRECT = 0o40000
O_NOATIME = 0o1000000
#: __O_TMPFILE: O_TMPFILE without its O_DIRECTORY bit.
O_TMPFILE_ONLY = 0o20000000
AT_SYMLINK_FOLLOW = 0x400
AT_REMOVEDIR = 0x200
AT_EACCESS = 0x200
AT_STATX_SYNC_TYPE = 0x6000
RENAME_EXCHANGE = 2
IN_DONT_FOLLOW = 0x02000000
STAT_SIZE = 144
STATX_SIZE = 256
STATFS_SIZE = 120
XATTR_SIZE_MAX = 65536

_nr = syscalls.nr
NR_OPEN, NR_OPENAT, NR_OPENAT2, NR_CREAT = _nr("open"), _nr("openat"), _nr("openat2"), _nr("creat")
_syscall = _ffi.syscall


def _int(value: int) -> int:
    """A 32-bit ``int`` argument (the kernel truncates), sign extended."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class _Scratch:
    """Per-worker buffers of this module (attached to the Worker lazily)."""

    def __init__(self) -> None:
        self.how = OpenHow()
        self.stat = ctypes.create_string_buffer(STATX_SIZE)


def _scratch(worker: Worker) -> _Scratch:
    s: _Scratch | None = getattr(worker, "fs", None)
    if s is None:
        s = _Scratch()
        worker.fs = s  # type: ignore[attr-defined]
    return s


def _path_arg(s: SandboxSession, w: Worker, n: notify.SeccompNotif, dirfd: int, addr: int,
              empty_ok: bool = False) -> bytes:  # fmt: skip
    """The absolute path a call names, read once (ID_VALID checked)."""
    path = w.mem.cstring(n.pid, addr)
    if not path:
        if empty_ok:
            s.valid(w, n)
            return b""
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    full = absolute(n.pid, dirfd, path)
    s.valid(w, n)
    return full


def _open_path(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, full: bytes,
               follow: bool, directory: bool = False) -> tuple[int, str]:  # fmt: skip
    """An O_PATH descriptor on *full* and its path in the sandbox's view."""
    flags = O_PATH | (0 if follow else O_NOFOLLOW) | (O_DIRECTORY if directory else 0)
    fd = open_in_root(s.root_fd(w, n), caller, full, flags, 0, _scratch(w).how)
    try:
        path = fd_path(fd)
        check_proc(path, caller)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


def _their_fd(s: SandboxSession, w: Worker, n: notify.SeccompNotif, fd: int) -> tuple[int, str]:
    """A duplicate of the caller's descriptor *fd* and its path."""
    # The notification names the calling thread, not its leader.
    pidfd = procmem.pidfd_open(n.pid, thread=True)
    try:
        # Still pending, so the pidfd is the caller's and not a recycled pid's.
        s.valid(w, n)
        ours = procmem.pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    try:
        return ours, fd_path(ours)
    except BaseException:
        os.close(ours)
        raise


def _object_fd(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, dirfd: int,
               addr: int, follow: bool, empty_path: bool) -> tuple[int, str]:  # fmt: skip
    """The object a ``*at`` call with AT_EMPTY_PATH support names."""
    full = _path_arg(s, w, n, dirfd, addr, empty_ok=empty_path)
    if not full:
        if dirfd == AT_FDCWD:
            return _open_path(s, w, n, caller, absolute(n.pid, AT_FDCWD, b"."), True)
        return _their_fd(s, w, n, dirfd)
    return _open_path(s, w, n, caller, full, follow)


def _done(s: SandboxSession, w: Worker, n: notify.SeccompNotif, val: int = 0) -> None:
    w.resp.send(s.listener, n.id, val=val)


def _anonymous(path: str) -> bool:
    """An object with no path (pipe, socket, anon inode): nothing a path
    rule can name; the caller holds it already."""
    return not path.startswith("/")


# -- open -----------------------------------------------------------------------


@handles("open", "openat", "openat2", "creat")
def h_open(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    resolve = 0
    if nr == NR_OPENAT2:
        dirfd, addr = _int(a[0]), a[1]
        size = a[3]
        if size < 24 or size > 4096:
            raise OSError(errno.EINVAL if size < 24 else errno.E2BIG, "bad open_how size")
        flags, mode, resolve = struct.unpack("=QQQ", w.mem.read(n.pid, a[2], 24))
        if size > 24 and any(w.mem.read(n.pid, a[2] + 24, size - 24)):
            raise OSError(errno.E2BIG, "unknown open_how fields")
        if flags >> 32 or mode >> 12:
            raise OSError(errno.EINVAL, "bad openat2 flags")
    elif nr == NR_OPENAT:
        dirfd, addr, flags, mode = _int(a[0]), a[1], a[2] & 0xFFFFFFFF, a[3] & 0o7777
    elif nr == NR_OPEN:
        dirfd, addr, flags, mode = AT_FDCWD, a[0], a[1] & 0xFFFFFFFF, a[2] & 0o7777
    else:  # creat
        dirfd, addr, flags, mode = AT_FDCWD, a[0], O_CREAT | O_WRONLY | O_TRUNC, a[1] & 0o7777
    full = _path_arg(s, w, n, dirfd, addr)
    cloexec = bool(flags & O_CLOEXEC)
    scratch = _scratch(w)
    root = s.root_fd(w, n)
    # RESOLVE_* the caller asked for narrow our lookup further.
    extra = resolve & (RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = -1
    if flags & O_PATH:
        # ADDFD refuses O_PATH files (fget skips them), so an O_PATH open
        # is decided and continued.  What a swapped path could get this
        # way is a descriptor that reads and writes nothing: every open,
        # exec or directory lookup made through it is decided on its own.
        fd = open_in_root(root, caller, full, flags & ~O_CLOEXEC, 0, scratch.how, extra)
        try:
            path = fd_path(fd)
            if not _anonymous(path):
                check_proc(path, caller)
                s.check(n, Category.STAT, path)
        finally:
            os.close(fd)
        w.resp.cont(s.listener, n.id)
        return
    try:
        if flags & O_CREAT and flags & O_TMPFILE != O_TMPFILE:
            fd = _open_create(s, w, n, caller, root, full, flags, mode, extra)
        else:
            fd = _open_existing(s, n, caller, root, full, flags, mode, extra, scratch)
        w.resp.addfd(s.listener, n.id, fd, cloexec)
    finally:
        if fd >= 0:
            os.close(fd)


#: Flags that keep an open off the receiver's fast path: anything that
#: writes, creates or truncates (undoable effects, umask, a parent to
#: decide on), O_PATH (continued, not injected), and the status flags
#: whose open-time and F_SETFL meanings differ (see q_open).
_NOT_QUICK = (O_ACCMODE | O_CREAT | O_TRUNC | O_PATH | O_TMPFILE_ONLY | O_APPEND | O_ASYNC
              | O_DIRECT | O_NOATIME)  # fmt: skip
#: Failures of our open that the caller's own open would give too.
_QUICK_ERRORS = frozenset((errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ENAMETOOLONG))
_QUICK_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_READ = Category.READ
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_S_IFLNK = stat.S_IFLNK
#: What the receiver opens: a regular file or a directory.
_QUICK_KINDS = frozenset((stat.S_IFREG, stat.S_IFDIR))
_F_SETFL = fcntl.F_SETFL
_fstat = os.fstat
_stat = os.stat
_close = os.close


def q_open(s: SandboxSession, w: Worker, n: notify.SeccompNotif) -> bool:
    """The receiver's answer to a read-only open of a regular file or a
    directory: decide, open, inject, with no hand-off to another thread.
    False (a worker runs :func:`h_open`) for anything else, or on any
    doubt.

    Why this never waits (the receiver must not: every sandbox's calls
    wait behind it):

    - Nothing is created, written or truncated (:data:`_NOT_QUICK`).
    - An open that is not ``O_DIRECTORY`` must name a regular file or a
      directory: an ``lstat`` sends anything else to a worker before it is
      opened at all (even a non-blocking open of a FIFO lets a writer
      through, who then writes to nobody).  The open is still made with
      ``O_NONBLOCK``, for an object swapped in after the ``lstat`` (a
      FIFO then opens at once) and for a file under a lease (EWOULDBLOCK
      instead of waiting for the lease to break); ``fstat`` checks what
      was opened, and ``O_NONBLOCK`` is cleared again (``F_SETFL`` 0: the
      other status flags are refused above) unless the caller asked for
      it.  Only a sandbox that swaps the file itself can make us open its
      FIFO, which it may open itself anyway.
    - ``O_DIRECTORY`` fails before any driver's open unless the object is
      a directory, and a directory's open does not wait.
    - What is left is the lookup itself, as in any open: on a network or
      FUSE filesystem whose server hangs, it would hold the receiver (and
      every sandbox's calls) where it held one worker before.  A sandbox
      cannot mount one (the filter refuses mount and the namespaces that
      would allow it).

    Why the decision holds, as in :func:`_open_existing`'s plain case: the
    path is read once and ``ID_VALID`` checked after every read of the
    caller (its memory, its dirfd's or cwd's link); it is opened beneath
    the sandbox's root with no symlink followed (``RESOLVE_NO_SYMLINKS``),
    so the object opened is the one the path names, in the sandbox's
    view, when it is opened, with its ``.`` and ``..`` applied as text
    (:func:`_lexical` says why that holds); a path so named under /proc
    goes to a worker.  Deciding that path before the open is deciding on
    what is opened, and a denied path is never opened at all: it is
    probed with ``O_PATH`` (which opens nothing), so that only an existing
    object named without a symlink is denied on its text.  A path with a
    symlink (ELOOP) is decided on what it leads to (:func:`_q_follow`).
    Denials are recorded with their rule as in the worker; an event that
    a callback or a log (which may block) must see sends the call to a
    worker.

    The commonest case, an allowed open by a normal path of a file or a
    directory, is also compiled (``_fastpath.c``, the same steps in the
    same order): once this function has decided a first open in a
    directory whose every child may be read, it teaches the compiled
    receiver so (:func:`_q_teach`), which answers the next ones there.
    """
    d = n.data
    nr = d.nr
    a = d.args
    if nr == NR_OPENAT:
        dirfd, addr, flags = _int(a[0]), a[1], a[2] & 0xFFFFFFFF
    elif nr == NR_OPEN:
        dirfd, addr, flags = AT_FDCWD, a[0], a[1] & 0xFFFFFFFF
    else:
        flags = _NOT_QUICK
    if flags & _NOT_QUICK:
        return False
    paths = _q_path(s, w, n, dirfd, addr)
    if paths is None:
        return False
    full, named = paths
    root = s._root_fd
    if root < 0:
        root = s.root_fd(w, n)
    target = named.decode("utf-8", "surrogateescape")
    verdict = s.plan.decide(_READ, target)
    if _q_event_wanted(s, verdict):
        return False
    if verdict.allow and s.fast is not None:
        _q_teach(s.fast, s.plan, target)
    how = _scratch(w).how
    how.mode = 0
    how.resolve = _QUICK_RESOLVE
    if not verdict.allow:
        return _q_deny(s, w, n, root, full, flags, how, target, verdict)
    return _q_inject(s, w, n, root, full, named, flags, how)


def _q_teach(fast: DirCache, plan: NotifyPlan, target: str) -> None:
    """Tell the compiled receiver (:mod:`~stockade.supervisor.fastpath`)
    that every child of *target*'s directory may be read, when *plan*
    found so: its next opens there are answered without Python."""
    found = plan.allowed_directory(_READ, target)
    if found is not None:
        fast.add(found[0].encode("utf-8", "surrogateescape"), found[1], found[2])


def _q_path(s: SandboxSession, w: Worker, n: notify.SeccompNotif, dirfd: int,
            addr: int) -> tuple[bytes, bytes] | None:  # fmt: skip
    """``(the path to open, the path it names)``, read once and ID_VALID
    checked; None for the worker."""
    pid = n.pid
    full = w.mem.cstring(pid, addr)
    if not full:
        return None
    if full[0] != 0x2F:  # relative: the dirfd's or cwd's path, read before ID_VALID
        full = absolute(pid, dirfd, full)
    named = full if normal(full) else _lexical(full)
    if named.startswith(b"/proc/") or named == b"/proc" or not w.resp.valid(s.listener, n.id):
        return None
    return full, named


def _q_deny(s: SandboxSession, w: Worker, n: notify.SeccompNotif, root: int, full: bytes,
            flags: int, how: OpenHow, target: str, verdict: Verdict) -> bool:  # fmt: skip
    """Deny an existing object named without a symlink, opening nothing."""
    how.flags = O_PATH | O_CLOEXEC | (flags & O_DIRECTORY)
    try:
        _close(openat2(root, full, how))
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symlink, which may lead somewhere allowed
            return _q_follow(s, w, n, root, full, flags, how)
        return _q_failed(s, w, n, err)
    return _q_refuse(s, w, n, target, verdict)


def _q_refuse(s: SandboxSession, w: Worker, n: notify.SeccompNotif, target: str,
              verdict: Verdict) -> bool:  # fmt: skip
    """Record the denial of *target* with its rule, and answer it."""
    try:
        s._decided(n, _READ, target, verdict, None)
    except Denied as denied:
        w.resp.send(s.listener, n.id, error=denied.errno)
        return True
    return False


def _q_failed(s: SandboxSession, w: Worker, n: notify.SeccompNotif, err: OSError) -> bool:
    """Answer a failure of our open that the caller's own open would give
    too; False (a worker tries) for any other."""
    if err.errno not in _QUICK_ERRORS:
        return False
    w.resp.send(s.listener, n.id, error=err.errno)
    return True


def _q_event_wanted(s: SandboxSession, verdict: Verdict) -> bool:
    """Whether deciding makes an event that a callback or a log (which may
    block) must see: a worker does it then."""
    return (not verdict.allow or s._all_allowed) and (s.on_event is not None or s.sink is not None)


def _q_inject(s: SandboxSession, w: Worker, n: notify.SeccompNotif, root: int, full: bytes,
              named: bytes, flags: int, how: OpenHow) -> bool:  # fmt: skip
    """Open an allowed file or directory without waiting, and inject it."""
    directory = flags & O_DIRECTORY
    if not directory:
        # Anything but a file or a directory is a worker's before we open
        # it at all: even a non-blocking open of a FIFO lets a writer
        # through, who then writes to nobody.
        try:
            kind = _stat(named[1:] or b".", dir_fd=root, follow_symlinks=False).st_mode & _S_IFMT
        except OSError:
            kind = _S_IFREG  # the open says why
        if kind == _S_IFLNK:
            return _q_follow(s, w, n, root, full, flags, how)
        if kind not in _QUICK_KINDS:
            return False
    how.flags = (flags & VALID_OPEN_FLAGS) | O_CLOEXEC | O_NOCTTY | (0 if directory else O_NONBLOCK)
    try:
        fd = openat2(root, full, how)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symlink
            return _q_follow(s, w, n, root, full, flags, how)
        return _q_failed(s, w, n, err)  # EWOULDBLOCK (a lease), EAGAIN (a .. raced), ...
    if not directory and _fstat(fd).st_mode & _S_IFMT not in _QUICK_KINDS:
        _close(fd)  # the stat above was a hint: this is what we opened
        return False
    # A directory is opened as asked: opening one never waits.
    return _q_hand_over(s, w, n, fd, flags, not directory and not flags & O_NONBLOCK)


def _q_hand_over(s: SandboxSession, w: Worker, n: notify.SeccompNotif, fd: int,
                 flags: int, blocking: bool) -> bool:  # fmt: skip
    """Inject *fd*, our descriptor on a regular file or a directory (closed
    here), as the caller asked for it: *blocking* when we opened it with
    an ``O_NONBLOCK`` the caller did not ask for."""
    try:
        if blocking:
            fcntl.fcntl(fd, _F_SETFL, 0)
        w.resp.addfd(s.listener, n.id, fd, bool(flags & O_CLOEXEC))
    finally:
        _close(fd)
    return True


def _q_follow(s: SandboxSession, w: Worker, n: notify.SeccompNotif, root: int, full: bytes,
              flags: int, how: OpenHow) -> bool:  # fmt: skip
    """A path through a symlink (``/lib`` on a merged-/usr system): look it
    up following symlinks, decide on the path of what was found, as the
    worker does, and open that very object again (no second lookup).
    The lookup is ``O_PATH``, which opens nothing: a FIFO, a device, a
    denied file are never opened here.  With ``O_NOFOLLOW``, or when it
    ends under /proc (where ``/proc/self`` would name us), a worker
    answers."""
    if flags & O_NOFOLLOW:
        return False
    how.flags = O_PATH | O_CLOEXEC | (flags & O_DIRECTORY)
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
    try:
        pfd = openat2(root, full, how)
    except OSError as err:
        return _q_failed(s, w, n, err)
    try:
        path = fd_path(pfd)
        proc = not path.startswith("/") or path.startswith("/proc/") or path == "/proc"
        verdict = None if proc else s.plan.decide(_READ, path)
        if (
            verdict is None
            or _q_event_wanted(s, verdict)
            or (verdict.allow and _fstat(pfd).st_mode & _S_IFMT not in _QUICK_KINDS)
        ):
            return False
        if not verdict.allow:
            return _q_refuse(s, w, n, path, verdict)
        reflags = (flags & VALID_OPEN_FLAGS) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK
        try:
            fd = os.open(f"/proc/self/fd/{pfd}", reflags)
        except OSError as err:
            return _q_failed(s, w, n, err)
    finally:
        _close(pfd)
    return _q_hand_over(s, w, n, fd, flags, not flags & O_NONBLOCK)


QUICK[NR_OPEN] = QUICK[NR_OPENAT] = q_open


def _lexical(path: bytes) -> bytes:
    """Absolute *path* with its empty, ``.`` and ``..`` components applied
    as text (``..`` of ``/`` is ``/``).

    Only for a path opened with ``RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS``:
    then every component before a ``..`` was a directory itself, not a
    symlink to one, and the kernel fails a scoped lookup whose ``..`` ran
    while anything was renamed or mounted (EAGAIN), so the ``..`` of
    ``/a/b`` was ``/a``: the object opened is the one this text names.
    A component that is missing or not a directory fails the open (ENOENT,
    ENOTDIR), as the caller's own open would."""
    out: list[bytes] = []
    for part in path.split(b"/"):
        if part == b"..":
            if out:
                out.pop()
        elif part and part != b".":
            out.append(part)
    return b"/" + b"/".join(out)


def _categories(flags: int) -> tuple[Category, ...]:
    if flags & O_PATH:
        return (Category.STAT,)
    acc = flags & O_ACCMODE
    out: list[Category] = []
    if acc != O_WRONLY:
        out.append(Category.READ)
    if acc in (O_WRONLY, O_RDWR) or flags & O_TRUNC:
        out.append(Category.WRITE)
    return tuple(out)


def _open_existing(s: SandboxSession, n: notify.SeccompNotif, caller: Caller, root: int,
                   full: bytes, flags: int, mode: int, extra: int,
                   scratch: _Scratch) -> int:  # fmt: skip
    tmpfile = flags & O_TMPFILE == O_TMPFILE
    plain = not tmpfile and flags & (O_TRUNC | O_ACCMODE) == 0
    if plain:
        # Read-only and no truncation: opening has no effect to undo, so
        # open at once and decide on what was opened.
        fd = _open_fast(root, full, flags, scratch.how, extra)
        if fd >= 0:
            # No symlink followed, no "..": the object is where the text says.
            try:
                for category in _categories(flags):
                    s.check(n, category, os.fsdecode(full))
            except BaseException:
                os.close(fd)
                raise
            return fd
        fd = open_in_root(root, caller, full, flags & ~O_CLOEXEC, mode, scratch.how, extra)
        try:
            path = fd_path(fd)
            if _anonymous(path):
                return fd
            check_proc(path, caller)
            for category in _categories(flags):
                s.check(n, category, path)
        except BaseException:
            os.close(fd)
            raise
        return fd
    # Writing, truncating or creating an unnamed file: decide on an O_PATH
    # descriptor first, then reopen that very object (no second lookup).
    follow = not flags & O_NOFOLLOW
    pfd = open_in_root(root, caller, full, O_PATH | (0 if follow else O_NOFOLLOW)
                       | (flags & O_DIRECTORY), 0, scratch.how, extra)  # fmt: skip
    try:
        path = fd_path(pfd)
        if not _anonymous(path):
            check_proc(path, caller)
            if tmpfile:
                s.check(n, Category.CREATE, path)
                s.check(n, Category.WRITE, path)
            else:
                for category in _categories(flags):
                    s.check(n, category, path)
        reflags = flags & ~(O_CLOEXEC | O_NOFOLLOW | O_CREAT | O_EXCL) | O_CLOEXEC
        umask = _umask(n.pid) if tmpfile else 0
        return os.open(f"/proc/self/fd/{pfd}", reflags, mode & ~umask)
    finally:
        os.close(pfd)


def _open_fast(root: int, full: bytes, flags: int, how: OpenHow, extra: int) -> int:
    """Open a normal path without following any symlink; -1 when the path
    is not normal, is under /proc, or has a symlink (ELOOP): the caller
    then resolves it fully and reads the opened object's path back."""
    if full.startswith(b"/proc/") or full == b"/proc" or not normal(full):
        return -1
    how.flags = (flags & VALID_OPEN_FLAGS & ~O_CLOEXEC) | O_CLOEXEC
    how.mode = 0
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | extra
    try:
        return openat2(root, full, how)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return -1
        raise


def _open_create(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, root: int,
                 full: bytes, flags: int, mode: int, extra: int) -> int:  # fmt: skip
    scratch = _scratch(w)
    if not flags & O_EXCL:
        try:
            return _open_existing(s, n, caller, root, full, flags & ~O_CREAT, mode, extra, scratch)
        except FileNotFoundError:
            pass
    parent, name = split_parent(full)
    dfd, dpath = _open_path(s, w, n, caller, parent, True, directory=True)
    try:
        target = dpath.rstrip("/") + "/" + os.fsdecode(name)
        s.check(n, Category.CREATE, target)
        for category in _categories(flags):
            s.check(n, category, target)
        how = scratch.how
        how.flags = (flags & ~O_CLOEXEC) | O_CLOEXEC
        how.mode = mode & ~_umask(n.pid)
        # The last component is created here, beneath the parent we decided
        # on; a symlink planted there meanwhile is not followed (ELOOP).
        how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
        return openat2(dfd, name, how)
    finally:
        os.close(dfd)


def _umask(pid: int) -> int:
    (umask,) = procmem.status(pid, b"Umask")
    return 0o022 if umask is None else int(umask, 8)


# -- stat, access, readlink ----------------------------------------------------


@handles("stat", "lstat", "newfstatat")
def h_stat(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("newfstatat"):
        dirfd, addr, buf, flags = _int(a[0]), a[1], a[2], a[3]
    else:
        dirfd, addr, buf = AT_FDCWD, a[0], a[1]
        flags = AT_SYMLINK_NOFOLLOW if nr == _nr("lstat") else 0
    fd, path = _object_fd(s, w, n, caller, dirfd, addr, not flags & AT_SYMLINK_NOFOLLOW,
                          bool(flags & AT_EMPTY_PATH))  # fmt: skip
    try:
        if not _anonymous(path):
            s.check(n, Category.STAT, path)
        out = _scratch(w).stat
        _syscall(_nr("newfstatat"), fd, b"", out, AT_EMPTY_PATH)
        w.mem.write(n.pid, buf, out.raw[:STAT_SIZE])
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("statx")
def h_statx(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    dirfd, addr, flags, mask, buf = _int(a[0]), a[1], a[2] & 0xFFFFFFFF, a[3] & 0xFFFFFFFF, a[4]
    fd, path = _object_fd(s, w, n, caller, dirfd, addr, not flags & AT_SYMLINK_NOFOLLOW,
                          bool(flags & AT_EMPTY_PATH))  # fmt: skip
    try:
        if not _anonymous(path):
            s.check(n, Category.STAT, path)
        out = _scratch(w).stat
        _syscall(_nr("statx"), fd, b"", AT_EMPTY_PATH | (flags & AT_STATX_SYNC_TYPE), mask, out)
        w.mem.write(n.pid, buf, out.raw[:STATX_SIZE])
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("statfs")
def h_statfs(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    fd, path = _open_path(s, w, n, caller, _path_arg(s, w, n, AT_FDCWD, a[0]), True)
    try:
        s.check(n, Category.STAT, path)
        out = _scratch(w).stat
        _syscall(_nr("fstatfs"), fd, out)
        w.mem.write(n.pid, a[1], out.raw[:STATFS_SIZE])
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("access", "faccessat", "faccessat2")
def h_access(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("access"):
        dirfd, addr, mode, flags = AT_FDCWD, a[0], a[1], 0
    else:
        dirfd, addr, mode = _int(a[0]), a[1], a[2]
        flags = a[3] & 0xFFFFFFFF if nr == _nr("faccessat2") else 0
    fd, path = _object_fd(s, w, n, caller, dirfd, addr, not flags & AT_SYMLINK_NOFOLLOW,
                          bool(flags & AT_EMPTY_PATH))  # fmt: skip
    try:
        if not _anonymous(path):
            s.check(n, Category.STAT, path)
        _syscall(_nr("faccessat2"), fd, b"", mode & 7, AT_EMPTY_PATH | (flags & AT_EACCESS))
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("readlink", "readlinkat")
def h_readlink(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("readlink"):
        dirfd, addr, buf, size = AT_FDCWD, a[0], a[1], _int(a[2])
    else:
        dirfd, addr, buf, size = _int(a[0]), a[1], a[2], _int(a[3])
    if size <= 0:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    full = _path_arg(s, w, n, dirfd, addr)
    if full.startswith(b"/proc/"):
        # Magic links (/proc/self/exe, /proc/self/fd/N, cwd, root) read as
        # the caller's, through its own /proc directory.
        target = _proc_readlink(caller, full)
        if target is None:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        text = target
    else:
        fd, path = _open_path(s, w, n, caller, full, False)
        try:
            s.check(n, Category.STAT, path)
            text = _readlinkat(fd)
        finally:
            os.close(fd)
    data = text[:size]
    w.mem.write(n.pid, buf, data)
    _done(s, w, n, len(data))


def _readlinkat(fd: int) -> bytes:
    buf = ctypes.create_string_buffer(procmem.PATH_MAX)
    length = _syscall(_nr("readlinkat"), fd, b"", buf, procmem.PATH_MAX)
    return buf.raw[:length]


def _proc_readlink(caller: Caller, full: bytes) -> bytes | None:
    from stockade.supervisor.resolve import rewrite_self

    text = os.fsdecode(rewrite_self(full, caller))
    parts = text.split("/")
    tgid, tid = caller.ids()
    if len(parts) >= 3 and parts[2].isdigit() and int(parts[2]) in (tgid, tid):
        host = "/".join(["", "proc", str(caller.tid), *parts[3:]])
        return os.fsencode(os.readlink(host))
    return None


# -- exec, chdir -------------------------------------------------------------------


@handles("execve", "execveat")
def h_exec(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("execve"):
        dirfd, addr, argv_addr, flags = AT_FDCWD, a[0], a[1], 0
    else:
        dirfd, addr, argv_addr, flags = _int(a[0]), a[1], a[2], a[4] & 0xFFFFFFFF
    argv = _argv(w, n, argv_addr) if s.verbose else None
    text = w.mem.cstring(n.pid, addr)
    if not text and flags & AT_EMPTY_PATH:
        s.valid(w, n)
        if dirfd == AT_FDCWD:
            fd, path = _open_path(s, w, n, caller, absolute(n.pid, AT_FDCWD, b"."), True)
        else:
            fd, path = _their_fd(s, w, n, dirfd)
    else:
        if not text:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        full = absolute(n.pid, dirfd, text)
        s.valid(w, n)
        fd, path = _open_path(s, w, n, caller, full, not flags & AT_SYMLINK_NOFOLLOW)
    try:
        s.check(n, Category.EXEC, path, argv)
        _exec_verified(s, w, n, caller, fd, path, _execfn(dirfd, text))
    finally:
        os.close(fd)


def _execfn(dirfd: int, text: bytes) -> bytes:
    """The file name the kernel gives an exec of *text* from *dirfd*: what
    it puts in the new image's ``AT_EXECFN`` (and a script's argv)."""
    if dirfd == AT_FDCWD or text.startswith(b"/"):
        return text
    if not text:
        return b"/dev/fd/%d" % dirfd
    return b"/dev/fd/%d/%s" % (dirfd, text)


# Why an exec is traced, and not simply continued:
#
# Only the kernel can replace the caller's image, so the call must be
# continued, and the kernel then reads the path from the caller's memory
# and looks it up again.  Another thread, a process sharing the memory
# (vfork, CLONE_VM, a MAP_SHARED mapping) or a rename in between can make
# that second lookup find another file than the one decided.  Nothing
# before the answer can rule that out (a single-threaded caller can still
# share its memory with another process, or have Linux AIO write into it),
# so the check comes after: the supervisor attaches to the calling thread
# (PTRACE_SEIZE, which neither stops nor signals it) before it answers,
# and the kernel stops the thread once the new image is in place and
# before its first instruction (PTRACE_EVENT_EXEC).  There the supervisor
# compares what the kernel loaded (/proc/PID/exe, which the caller cannot
# touch) with the file it decided on, by identity (device and inode, held
# open meanwhile so the inode cannot be reused).  The process is killed
# (SIGKILL) if they differ, and let go otherwise.  A failed exec returns to
# the caller: PTRACE_INTERRUPT makes it stop on its way back to user space,
# where the supervisor lets it go untouched.  Landlock's execute right still
# bounds both lookups, so this only matters for what the supervisor alone
# holds (a glob, a deny inside an exec tree).
#
# A script (``#!``) is run by its interpreter, which is then the image:
# there the image must be the interpreter the decided script names, and
# the file name the kernel used (AT_EXECFN, read from the new image, which
# no other thread or process shares yet) must be the one decided.
#
# Cost: one attach, one answer, one interrupt, one wait for the exec, one
# stat and one detach; the exec itself is far slower (bench/README.md).
_SEIZE_OPTIONS = ptrace.PTRACE_O_TRACEEXEC | ptrace.PTRACE_O_EXITKILL
AT_EXECFN = 31
#: The kernel follows at most this many nested interpreters (BINPRM_MAX_RECURSION).
MAX_INTERPRETERS = 5


def _exec_verified(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, fd: int,
                   path: str, execfn: bytes) -> None:  # fmt: skip
    """Continue the decided exec and check the image it loads."""
    tid = n.pid
    tgid = _tgid(tid)
    try:
        ptrace.seize(tid, _SEIZE_OPTIONS)
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise OSError(errno.ENOENT, "the call went away") from None
        # Not dumpable, or a tracer we cannot be: the exec could not be
        # checked, so it does not run (fail closed).
        _exec_event(s, n, path, f"exec not verifiable: ptrace: {os.strerror(err.errno or 0)}")
        raise Denied(errno.EACCES) from None
    try:
        # Still pending: the thread we attached to is the caller.
        if w.resp.valid(s.listener, n.id):
            w.resp.cont(s.listener, n.id)
            # Still busy after the answer: the engine must not count on
            # this thread to take the receiver role soon.
            w.resp.answered = False
        try:
            ptrace.interrupt(tid)
        except ProcessLookupError:
            pass  # gone already; the wait tells
        _follow_exec(s, w, n, caller, tid, tgid, fd, path, execfn)
    except BaseException:
        # Whatever went wrong, no unchecked image may run.
        _kill_tracee(tid, tgid)
        raise


def _tgid(tid: int) -> int:
    """The process (thread group) of thread *tid*, in our pid namespace."""
    (tgid,) = procmem.status(tid, b"Tgid")
    if tgid is None:
        raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))
    return int(tgid)


def _follow_exec(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, tid: int,
                 tgid: int, fd: int, path: str, execfn: bytes) -> None:  # fmt: skip
    stop = ptrace.next_stop(tid, tgid)
    if stop is None:
        return  # ended (killed): nothing of a new image ran
    pid, status = stop
    event = status >> 16
    if event == ptrace.PTRACE_EVENT_EXEC:
        problem = _image_problem(s, w, n, caller, pid, fd, execfn)
        if problem is None:
            ptrace.detach(pid)
            return
        _kill_tracee(pid, pid)
        _exec_event(s, n, path, problem)
        return
    # Our interrupt, a group stop, or a signal on the way out of a failed
    # exec: let it go as it was (the signal delivered).
    ptrace.detach(pid, 0 if event else os.WSTOPSIG(status))


def _kill_tracee(tid: int, tgid: int) -> None:
    """SIGKILL the process of our tracee, and see the tracee end."""
    try:
        os.kill(tgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while ptrace.next_stop(tid, tgid) is not None:
        pass  # a stop reported before the kill took


def _exec_event(s: SandboxSession, n: notify.SeccompNotif, path: str, reason: str) -> None:
    name = syscalls.NAME.get(n.data.nr, "execve")
    s._emit(events.make(n.pid, name, str(Category.EXEC), path, events.DENY, errno.EACCES,
                        reason))  # fmt: skip


def _image_problem(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, pid: int,
                   fd: int, execfn: bytes) -> str | None:  # fmt: skip
    """None if stopped tracee *pid* (just past exec) runs what was decided on
    *fd*; else why not."""
    want = os.fstat(fd)
    try:
        exe = os.stat(f"/proc/{pid}/exe")
    except OSError as err:
        return f"exec not verifiable: the new image: {os.strerror(err.errno or 0)}"
    if (exe.st_dev, exe.st_ino) == (want.st_dev, want.st_ino):
        return None
    interpreter = _interpreter(s, w, n, caller, pid, fd)
    if interpreter is None or interpreter != (exe.st_dev, exe.st_ino):
        return "exec raced: the kernel loaded another file than the one decided"
    if _new_execfn(w, pid) != execfn:
        return "exec raced: the kernel ran another script than the one decided"
    return None


def _interpreter(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, pid: int,
                 fd: int) -> tuple[int, int] | None:  # fmt: skip
    """``(device, inode)`` of the program that runs the script on *fd*
    (following nested interpreters as the kernel does), or None if it is
    no script or cannot be read."""
    found: tuple[int, int] | None = None
    try:
        name = _shebang(fd)
        for _ in range(MAX_INTERPRETERS):
            if name is None:
                break
            # Resolved as the kernel does for the new image: in the
            # sandbox's root, from its working directory.
            ours = open_in_root(s.root_fd(w, n), caller, absolute(pid, AT_FDCWD, name), O_PATH,
                                0, _scratch(w).how)  # fmt: skip
            try:
                st = os.fstat(ours)
                found = (st.st_dev, st.st_ino)
                name = _shebang(ours)  # nested: a script may run a script
            finally:
                os.close(ours)
    except OSError:
        return None
    return found


def _shebang(ours: int) -> bytes | None:
    """The interpreter a ``#!`` line of the file our O_PATH *ours* is on
    names, or None (no script, or unreadable to us)."""
    try:
        fd = os.open(f"/proc/self/fd/{ours}", os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return None
    try:
        head = os.pread(fd, 256, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].replace(b"\t", b" ").strip(b" ")
    return line.split(b" ", 1)[0] or None


def _new_execfn(w: Worker, pid: int) -> bytes | None:
    """The ``AT_EXECFN`` string of stopped tracee *pid*'s new image."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as f:
            auxv = f.read()
        for key, value in struct.iter_unpack("=QQ", auxv[: len(auxv) - len(auxv) % 16]):
            if key == AT_EXECFN:
                return w.mem.cstring(pid, value)
    except OSError:
        pass
    return None


def _argv(w: Worker, n: notify.SeccompNotif, addr: int, limit: int = 256) -> tuple[str, ...]:
    out: list[str] = []
    while addr and len(out) < limit:
        (ptr,) = struct.unpack("=Q", w.mem.read(n.pid, addr + 8 * len(out), 8))
        if not ptr:
            break
        out.append(os.fsdecode(w.mem.cstring(n.pid, ptr, 4096)))
    return tuple(out)


@handles("chdir")
def h_chdir(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    fd, path = _open_path(s, w, n, caller, _path_arg(s, w, n, AT_FDCWD, n.data.args[0]), True)
    try:
        # Decided before the type is told: ENOTDIR would reveal a hidden path.
        s.check(n, Category.STAT, path)
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    finally:
        os.close(fd)
    w.resp.cont(s.listener, n.id)


@handles("fchdir")
def h_fchdir(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    fd, path = _their_fd(s, w, n, _int(n.data.args[0]))
    os.close(fd)
    if not _anonymous(path):
        s.check(n, Category.STAT, path)
    w.resp.cont(s.listener, n.id)


# -- metadata: mode, owner, times, xattrs ---------------------------------------


@handles("chmod", "fchmodat", "fchmodat2")
def h_chmod(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("chmod"):
        dirfd, addr, mode, flags = AT_FDCWD, a[0], a[1], 0
    else:
        dirfd, addr, mode = _int(a[0]), a[1], a[2]
        flags = a[3] & 0xFFFFFFFF if nr == _nr("fchmodat2") else 0
    fd, path = _object_fd(s, w, n, caller, dirfd, addr, not flags & AT_SYMLINK_NOFOLLOW,
                          bool(flags & AT_EMPTY_PATH))  # fmt: skip
    try:
        s.check(n, Category.WRITE, path)
        _syscall(_nr("fchmodat2"), fd, b"", mode & 0o7777, AT_EMPTY_PATH)
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("chown", "lchown", "fchownat")
def h_chown(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("fchownat"):
        dirfd, addr, uid, gid, flags = _int(a[0]), a[1], a[2], a[3], a[4] & 0xFFFFFFFF
    else:
        dirfd, addr, uid, gid = AT_FDCWD, a[0], a[1], a[2]
        flags = AT_SYMLINK_NOFOLLOW if nr == _nr("lchown") else 0
    fd, path = _object_fd(s, w, n, caller, dirfd, addr, not flags & AT_SYMLINK_NOFOLLOW,
                          bool(flags & AT_EMPTY_PATH))  # fmt: skip
    try:
        s.check(n, Category.WRITE, path)
        _syscall(_nr("fchownat"), fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH)
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("fchmod", "fchown", "fsetxattr", "fremovexattr")
def h_fd_metadata(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    fd, path = _their_fd(s, w, n, _int(a[0]))
    try:
        if not _anonymous(path):
            s.check(n, Category.WRITE, path)
        if nr == _nr("fchmod"):
            _syscall(_nr("fchmod"), fd, a[1] & 0o7777)
        elif nr == _nr("fchown"):
            _syscall(_nr("fchown"), fd, a[1] & 0xFFFFFFFF, a[2] & 0xFFFFFFFF)
        elif nr == _nr("fsetxattr"):
            name, value = _xattr_args(w, n, a[1], a[2], a[3])
            s.valid(w, n)
            os.setxattr(fd, name, value, _int(a[4]))
        else:
            name = os.fsdecode(w.mem.cstring(n.pid, a[1], 256))
            s.valid(w, n)
            os.removexattr(fd, name)
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("utime", "utimes", "futimesat", "utimensat")
def h_utimes(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    flags = 0
    if nr == _nr("utimensat"):
        dirfd, addr, times_addr, flags = _int(a[0]), a[1], a[2], a[3] & 0xFFFFFFFF
    elif nr == _nr("futimesat"):
        dirfd, addr, times_addr = _int(a[0]), a[1], a[2]
    else:
        dirfd, addr, times_addr = AT_FDCWD, a[0], a[1]
    times = b""
    if times_addr:
        if nr == _nr("utimensat"):
            times = w.mem.read(n.pid, times_addr, 32)
        elif nr == _nr("utime"):
            actime, modtime = struct.unpack("=qq", w.mem.read(n.pid, times_addr, 16))
            times = struct.pack("=qqqq", actime, 0, modtime, 0)
        else:
            s0, u0, s1, u1 = struct.unpack("=qqqq", w.mem.read(n.pid, times_addr, 32))
            if not (0 <= u0 < 1000000 and 0 <= u1 < 1000000):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            times = struct.pack("=qqqq", s0, u0 * 1000, s1, u1 * 1000)
    if nr == _nr("utimensat") and addr == 0:
        # utimensat(fd, NULL, ...): the descriptor itself.
        s.valid(w, n)
        fd, path = _their_fd(s, w, n, dirfd)
    else:
        fd, path = _object_fd(s, w, n, caller, dirfd, addr, not flags & AT_SYMLINK_NOFOLLOW,
                              bool(flags & AT_EMPTY_PATH))  # fmt: skip
    try:
        if not _anonymous(path):
            s.check(n, Category.WRITE, path)
        tbuf = ctypes.create_string_buffer(times, 32) if times else None
        _syscall(_nr("utimensat"), fd, b"", tbuf, AT_EMPTY_PATH)
    finally:
        os.close(fd)
    _done(s, w, n)


def _xattr_args(w: Worker, n: notify.SeccompNotif, name_addr: int, value_addr: int,
                size: int) -> tuple[str, bytes]:  # fmt: skip
    name = os.fsdecode(w.mem.cstring(n.pid, name_addr, 256))
    if size > XATTR_SIZE_MAX:
        raise OSError(errno.E2BIG, os.strerror(errno.E2BIG))
    value = _read_large(w, n, value_addr, size) if size else b""
    return name, value


def _read_large(w: Worker, n: notify.SeccompNotif, addr: int, size: int) -> bytes:
    if size <= 4096:
        return w.mem.read(n.pid, addr, size)
    return procmem.MemReader(size).read(n.pid, addr, size)


@handles("setxattr", "lsetxattr", "removexattr", "lremovexattr")
def h_xattr_set(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    follow = nr in (_nr("setxattr"), _nr("removexattr"))
    setting = nr in (_nr("setxattr"), _nr("lsetxattr"))
    full = w.mem.cstring(n.pid, a[0])
    if setting:
        name, value = _xattr_args(w, n, a[1], a[2], a[3])
    else:
        name, value = os.fsdecode(w.mem.cstring(n.pid, a[1], 256)), b""
    if not full:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    full = absolute(n.pid, AT_FDCWD, full)
    s.valid(w, n)
    fd, path = _open_path(s, w, n, caller, full, follow)
    try:
        s.check(n, Category.WRITE, path)
        target = f"/proc/self/fd/{fd}"
        if setting:
            os.setxattr(target, name, value, _int(a[4]))
        else:
            os.removexattr(target, name)
    finally:
        os.close(fd)
    _done(s, w, n)


@handles("getxattr", "lgetxattr", "listxattr", "llistxattr", "fgetxattr", "flistxattr")
def h_xattr_get(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    getting = nr in (_nr("getxattr"), _nr("lgetxattr"), _nr("fgetxattr"))
    if nr in (_nr("fgetxattr"), _nr("flistxattr")):
        fd, path = _their_fd(s, w, n, _int(a[0]))
    else:
        follow = nr in (_nr("getxattr"), _nr("listxattr"))
        fd, path = _open_path(s, w, n, caller, _path_arg(s, w, n, AT_FDCWD, a[0]), follow)
    try:
        if not _anonymous(path):
            s.check(n, Category.STAT, path)
        target = f"/proc/self/fd/{fd}"
        if getting:
            name = os.fsdecode(w.mem.cstring(n.pid, a[1], 256))
            s.valid(w, n)
            data = os.getxattr(target, name)
            buf, size = a[2], a[3]
        else:
            names = os.listxattr(target)
            data = b"".join(os.fsencode(x) + b"\0" for x in names)
            buf, size = a[1], a[2]
    finally:
        os.close(fd)
    if size == 0:
        _done(s, w, n, len(data))
        return
    if len(data) > size:
        raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
    if data:
        w.mem.write(n.pid, buf, data)
    _done(s, w, n, len(data))


@handles("truncate")
def h_truncate(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    fd, path = _open_path(s, w, n, caller, _path_arg(s, w, n, AT_FDCWD, a[0]), True)
    try:
        s.check(n, Category.WRITE, path)
        os.truncate(f"/proc/self/fd/{fd}", a[1] if a[1] < (1 << 63) else a[1] - (1 << 64))
    finally:
        os.close(fd)
    _done(s, w, n)


# -- names: create, delete, rename, link -----------------------------------------


def _parent(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller,
            full: bytes) -> tuple[int, bytes, str]:  # fmt: skip
    """``(parent fd, last component, path of the entry)`` for *full*."""
    parent, name = split_parent(full)
    dfd, dpath = _open_path(s, w, n, caller, parent, True, directory=True)
    return dfd, name, dpath.rstrip("/") + "/" + os.fsdecode(name)


@handles("mkdir", "mkdirat", "mknod", "mknodat")
def h_mknod(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr in (_nr("mkdir"), _nr("mknod")):
        dirfd, addr, mode, dev = AT_FDCWD, a[0], a[1] & 0xFFFFFFFF, a[2]
    else:
        dirfd, addr, mode, dev = _int(a[0]), a[1], a[2] & 0xFFFFFFFF, a[3]
    full = _path_arg(s, w, n, dirfd, addr)
    dfd, name, target = _parent(s, w, n, caller, full)
    try:
        s.check(n, Category.CREATE, target)
        umask = _umask(n.pid)
        if nr in (_nr("mkdir"), _nr("mkdirat")):
            os.mkdir(name, (mode & 0o7777) & ~umask, dir_fd=dfd)
        else:
            _syscall(_nr("mknodat"), dfd, name, (mode & ~0o7777) | ((mode & 0o7777) & ~umask),
                     dev & 0xFFFFFFFF)  # fmt: skip
    finally:
        os.close(dfd)
    _done(s, w, n)


@handles("unlink", "unlinkat", "rmdir")
def h_unlink(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("unlinkat"):
        dirfd, addr, flags = _int(a[0]), a[1], a[2] & 0xFFFFFFFF
    else:
        dirfd, addr = AT_FDCWD, a[0]
        flags = AT_REMOVEDIR if nr == _nr("rmdir") else 0
    full = _path_arg(s, w, n, dirfd, addr)
    dfd, name, target = _parent(s, w, n, caller, full)
    try:
        s.check(n, Category.DELETE, target)
        _syscall(_nr("unlinkat"), dfd, name, flags & AT_REMOVEDIR)
    finally:
        os.close(dfd)
    _done(s, w, n)


@handles("rename", "renameat", "renameat2")
def h_rename(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("rename"):
        od, oa, nd, na, flags = AT_FDCWD, a[0], AT_FDCWD, a[1], 0
    else:
        od, oa, nd, na = _int(a[0]), a[1], _int(a[2]), a[3]
        flags = a[4] & 0xFFFFFFFF if nr == _nr("renameat2") else 0
    old = absolute(n.pid, od, _nonempty(w.mem.cstring(n.pid, oa)))
    new = absolute(n.pid, nd, _nonempty(w.mem.cstring(n.pid, na)))
    s.valid(w, n)
    ofd, oname, otarget = _parent(s, w, n, caller, old)
    try:
        nfd, nname, ntarget = _parent(s, w, n, caller, new)
        try:
            s.check(n, Category.DELETE, otarget)
            s.check(n, Category.CREATE, ntarget)
            s.check_move(n, otarget, ntarget, _is_dir(ofd, oname))
            if flags & RENAME_EXCHANGE:
                s.check(n, Category.DELETE, ntarget)
                s.check(n, Category.CREATE, otarget)
                s.check_move(n, ntarget, otarget, _is_dir(nfd, nname))
            elif _exists(nfd, nname):
                s.check(n, Category.WRITE, ntarget)
                s.check(n, Category.DELETE, ntarget)
            _syscall(_nr("renameat2"), ofd, oname, nfd, nname, flags)
        finally:
            os.close(nfd)
    finally:
        os.close(ofd)
    _done(s, w, n)


def _nonempty(path: bytes) -> bytes:
    if not path:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    return path


def _is_dir(dfd: int, name: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _exists(dfd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


@handles("link", "linkat")
def h_link(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("link"):
        od, oa, nd, na, flags = AT_FDCWD, a[0], AT_FDCWD, a[1], 0
    else:
        od, oa, nd, na, flags = _int(a[0]), a[1], _int(a[2]), a[3], a[4] & 0xFFFFFFFF
    opath = w.mem.cstring(n.pid, oa)
    new = absolute(n.pid, nd, _nonempty(w.mem.cstring(n.pid, na)))
    s.valid(w, n)
    if not opath and flags & AT_EMPTY_PATH:
        sfd, spath = _their_fd(s, w, n, od)
    else:
        old = absolute(n.pid, od, _nonempty(opath))
        sfd, spath = _open_path(s, w, n, caller, old, bool(flags & AT_SYMLINK_FOLLOW))
    try:
        dfd, name, target = _parent(s, w, n, caller, new)
        try:
            s.check(n, Category.CREATE, target)
            # A new name must not grant what the old one did not.
            s.check_move(n, spath, target, False)
            _syscall(_nr("linkat"), AT_FDCWD, f"/proc/self/fd/{sfd}".encode(), dfd, name,
                     AT_SYMLINK_FOLLOW)  # fmt: skip
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    _done(s, w, n)


@handles("symlink", "symlinkat")
def h_symlink(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    nr, a = n.data.nr, n.data.args
    if nr == _nr("symlink"):
        ta, nd, na = a[0], AT_FDCWD, a[1]
    else:
        ta, nd, na = a[0], _int(a[1]), a[2]
    text = _nonempty(w.mem.cstring(n.pid, ta))
    new = absolute(n.pid, nd, _nonempty(w.mem.cstring(n.pid, na)))
    s.valid(w, n)
    dfd, name, target = _parent(s, w, n, caller, new)
    try:
        s.check(n, Category.CREATE, target)
        os.symlink(text, name, dir_fd=dfd)
    finally:
        os.close(dfd)
    _done(s, w, n)


# -- watches, ioctl, calls too new to broker ----------------------------------------


@handles("inotify_add_watch")
def h_inotify(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    mask = a[2] & 0xFFFFFFFF
    full = _path_arg(s, w, n, AT_FDCWD, a[1])
    fd, path = _open_path(s, w, n, caller, full, not mask & IN_DONT_FOLLOW)
    try:
        s.check(n, Category.STAT, path)
        ino, _ = _their_fd(s, w, n, _int(a[0]))
        try:
            wd = _syscall(_nr("inotify_add_watch"), ino, f"/proc/self/fd/{fd}".encode(),
                          mask & ~IN_DONT_FOLLOW)  # fmt: skip
        finally:
            os.close(ino)
    finally:
        os.close(fd)
    _done(s, w, n, wd)


@handles("ioctl")
def h_ioctl(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    fd, path = _their_fd(s, w, n, _int(n.data.args[0]))
    os.close(fd)
    if path.startswith("/dev/"):
        s.check(n, Category.IOCTL, path)
    w.resp.cont(s.listener, n.id)


@handles("setxattrat", "getxattrat", "listxattrat", "removexattrat", "file_getattr",
         "file_setattr")  # fmt: skip
def h_too_new(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    # The C library falls back to the older calls, which are brokered.
    raise Denied(errno.ENOSYS)
