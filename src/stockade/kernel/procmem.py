"""Another process's memory and descriptors (process_vm_readv(2),
pidfd_open(2), pidfd_getfd(2)).

Some facts about reaching into a sandboxed process:

- ``process_vm_readv``/``process_vm_writev`` need ptrace access
  (PTRACE_MODE_ATTACH_REALCREDS): same user and a dumpable target, or
  CAP_SYS_PTRACE.  They stop at the first unmapped page and return what
  was transferred so far, so a read of a C string is clipped to the end of
  its page first and continued page by page.
- Memory we read can change the moment after: a decision must rest on a
  copy, and the caller must check ``SECCOMP_IOCTL_NOTIF_ID_VALID``
  afterwards (the pid could have been recycled).
- ``pidfd_getfd`` duplicates one of the target's descriptors into us (the
  same open file description), under the same ptrace check.
"""

from __future__ import annotations

import ctypes
import errno
import os

from stockade.kernel import _ffi

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: PATH_MAX: a longer path is ENAMETOOLONG for the kernel too.
PATH_MAX = 4096
#: What :meth:`MemReader.cstring` reads first.
FIRST_READ = 256

_readv = _ffi.process_vm_readv
_get_errno = ctypes.get_errno
_string_at = ctypes.string_at


class Iovec(ctypes.Structure):
    """struct iovec { void *iov_base; size_t iov_len; };"""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MemReader:
    """Reads and writes one process's memory through preallocated buffers.
    Not thread-safe: one per worker thread."""

    def __init__(self, size: int = PATH_MAX + PAGE_SIZE) -> None:
        self.buf = ctypes.create_string_buffer(size)
        self._buf_addr = ctypes.addressof(self.buf)
        self._size = size
        # The local and the remote iovec, side by side, seen as four
        # words: setting a word costs less than setting a struct field.
        self._iov = (Iovec * 2)(Iovec(self._buf_addr, 0), Iovec(0, 0))
        self._local_addr = ctypes.addressof(self._iov)
        self._remote_addr = self._local_addr + ctypes.sizeof(Iovec)
        self._words = (ctypes.c_uint64 * 4).from_buffer(self._iov)

    def _readv(self, pid: int, addr: int, offset: int, length: int) -> int:
        words = self._words
        words[0] = self._buf_addr + offset
        words[1] = words[3] = length
        words[2] = addr
        while True:
            n: int = _readv(pid, self._local_addr, 1, self._remote_addr, 1, 0)
            if n >= 0:
                return n
            err = _get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))

    def read(self, pid: int, addr: int, length: int) -> bytes:
        """Exactly *length* bytes at *addr*; EFAULT if not all are mapped."""
        if length > self._size:
            raise OSError(errno.E2BIG, "read too large")
        if length == 0:
            return b""
        n = self._readv(pid, addr, 0, length)
        if n != length:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        return _string_at(self._buf_addr, length)

    def cstring(self, pid: int, addr: int, limit: int = PATH_MAX) -> bytes:
        """The NUL-terminated string at *addr* (without its NUL).

        Raises OSError: EFAULT for a NULL or unmapped pointer, ENAMETOOLONG
        when no NUL comes within *limit* bytes (as the kernel would).
        """
        if addr == 0:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        # The first read is short, and clipped to the page end (a string
        # that ends just before an unmapped page must still be readable):
        # most paths are short, and copying a whole page from another
        # process costs more than a second read.
        chunk = min(PAGE_SIZE - (addr & (PAGE_SIZE - 1)), FIRST_READ, limit)
        words = self._words
        words[0] = self._buf_addr
        words[1] = words[3] = chunk
        words[2] = addr
        n: int = _readv(pid, self._local_addr, 1, self._remote_addr, 1, 0)
        if n < 0:
            n = self._readv(pid, addr, 0, chunk)  # EINTR is retried there
        if n == 0:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        data = _string_at(self._buf_addr, n)
        end = data.find(b"\0")
        if end >= 0:
            return data[:end]
        got = n
        while got < limit:
            chunk = min(PAGE_SIZE - ((addr + got) % PAGE_SIZE), limit - got)
            n = self._readv(pid, addr + got, got, chunk)
            if n == 0:
                raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
            end = _string_at(self._buf_addr + got, n).find(b"\0")
            if end >= 0:
                return _string_at(self._buf_addr, got + end)
            got += n
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))

    def write(self, pid: int, addr: int, data: bytes) -> None:
        """Write *data* at *addr* in *pid*; EFAULT if not all of it landed."""
        length = len(data)
        if length > self._size:
            raise OSError(errno.E2BIG, "write too large")
        ctypes.memmove(self._buf_addr, data, length)
        words = self._words
        words[0] = self._buf_addr
        words[1] = words[3] = length
        words[2] = addr
        while True:
            n: int = _ffi.process_vm_writev(pid, self._local_addr, 1, self._remote_addr, 1, 0)
            if n >= 0:
                break
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))
        if n != length:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))


#: pidfd_open(2) flag (6.9): *pid* may be any thread, not only a leader.
PIDFD_THREAD = 0o200


def pidfd_open(pid: int, thread: bool = False) -> int:
    """A pidfd for *pid* (close it); with *thread*, *pid* may name any
    thread (a seccomp notification names the calling thread).  Raises
    OSError."""
    return _ffi.syscall(_ffi.SYS_pidfd_open, pid, PIDFD_THREAD if thread else 0)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A duplicate of *targetfd* of the process behind *pidfd* (CLOEXEC;
    close it); raises OSError (EBADF: no such descriptor there)."""
    return _ffi.syscall(_ffi.SYS_pidfd_getfd, pidfd, targetfd, 0)


# -- small /proc files ---------------------------------------------------------------


def read_proc(path: str) -> bytes:
    """A small /proc file at once (os calls: a file object costs more)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def status(pid: int, *keys: bytes) -> list[bytes | None]:
    """The values of *keys* (``b"Tgid"``, ...) in /proc/PID/status, as
    written there (None for a key it does not have); raises OSError
    (ENOENT, ESRCH: no such process)."""
    data = b"\n" + read_proc(f"/proc/{pid}/status")
    out: list[bytes | None] = []
    for key in keys:
        at = data.find(b"\n" + key + b":")
        if at < 0:
            out.append(None)
            continue
        start = at + len(key) + 2
        end = data.find(b"\n", start)
        out.append(data[start : end if end >= 0 else len(data)].strip())
    return out


# -- what backs another process's memory -------------------------------------------

#: ioctl(2) on a /proc/PID/maps descriptor (6.11): the mapping at an address.
PROCMAP_QUERY = 0xC0686611
PROCMAP_QUERY_VMA_WRITABLE = 0x02
PROCMAP_QUERY_VMA_SHARED = 0x08
#: /proc/PID/pagemap entry bits: present, swapped, file page or shared anonymous.
PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_FILE = 1 << 61


class ProcmapQuery(ctypes.Structure):
    """struct procmap_query (include/uapi/linux/fs.h)."""

    _fields_ = [
        ("size", ctypes.c_uint64),
        ("query_flags", ctypes.c_uint64),
        ("query_addr", ctypes.c_uint64),
        ("vma_start", ctypes.c_uint64),
        ("vma_end", ctypes.c_uint64),
        ("vma_flags", ctypes.c_uint64),
        ("vma_page_size", ctypes.c_uint64),
        ("vma_offset", ctypes.c_uint64),
        ("inode", ctypes.c_uint64),
        ("dev_major", ctypes.c_uint32),
        ("dev_minor", ctypes.c_uint32),
        ("vma_name_size", ctypes.c_uint32),
        ("build_id_size", ctypes.c_uint32),
        ("vma_name_addr", ctypes.c_uint64),
        ("build_id_addr", ctypes.c_uint64),
    ]


def mapping(maps_fd: int, addr: int, query: ProcmapQuery) -> None:
    """Fill *query* with the mapping that covers *addr*, asked on a
    /proc/PID/maps descriptor; raises OSError (ENOENT: none covers it;
    ENOTTY: a kernel older than 6.11)."""
    query.size = ctypes.sizeof(ProcmapQuery)
    query.query_flags = 0
    query.query_addr = addr
    query.vma_name_size = 0
    query.build_id_size = 0
    while _ffi.ioctl(maps_fd, PROCMAP_QUERY, ctypes.addressof(query)) != 0:
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


def page_flags(pagemap_fd: int, addr: int) -> int:
    """The /proc/PID/pagemap entry of the page at *addr* (flags only are
    meaningful without CAP_SYS_ADMIN)."""
    data = os.pread(pagemap_fd, 8, (addr // PAGE_SIZE) * 8)
    if len(data) != 8:
        raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
    return int.from_bytes(data, "little")
