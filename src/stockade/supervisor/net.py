"""Socket handlers: connect, bind, listen and addressed sends, brokered.

The supervisor takes the caller's socket with ``pidfd_getfd`` (the same
open file description, so the caller's socket is the one connected,
bound or sent on) and performs the call itself with the address it read
and decided on: the kernel never reads the caller's sockaddr again.

- A UNIX socket by path is decided as ``write`` on the socket file
  resolved in the sandbox's view, and reached through our O_PATH
  descriptor on it (``/proc/self/fd/N``), so no rename or symlink swap
  redirects it.  The peer sees the supervisor's pid in SO_PEERCRED (same
  user).
- inet addresses are decided by the plan's network rules: ``net/connect``
  for stream sockets, ``net/send`` for datagrams, ``net/bind`` for bind,
  and for ``listen`` on a socket with no port yet (it would bind an
  ephemeral port that Landlock never sees).
- One connect is continued for speed: a TCP connect of a one-thread
  caller when ``net/connect`` is held by Landlock alone (:func:`q_connect`
  says why that is safe).  The receiver answers it, with no hand-off.
- An abstract or unnamed UNIX address is bound by the supervisor, like
  any address (Landlock scopes the socket by its file's credentials,
  which stay the sandbox's).  A connect or send to one is continued:
  Landlock scopes abstract sockets to the sandbox, and the supervisor,
  which has no Landlock domain, must not connect them itself.  The kernel then reads
  the address again, so the call is continued only when nobody but the
  caller can rewrite it meanwhile (one thread, no vfork parent sharing
  its memory, the bytes in memory only it can write); otherwise it is
  refused (EACCES, with an event).  :func:`_unshared` says why that is
  enough.
"""

from __future__ import annotations

# _socket, not socket (and ipaddress only when an address is read): the
# default profile imports this module on every run.
import _socket
import array
import ctypes
import errno
import os
import struct
from typing import Any

from stockade.kernel import notify, procmem, ptrace, syscalls
from stockade.policy.model import Category
from stockade.supervisor import events, fs
from stockade.supervisor.engine import Worker
from stockade.supervisor.resolve import AT_FDCWD, Caller, absolute
from stockade.supervisor.session import QUICK, Denied, SandboxSession, handles

AF_UNIX = _socket.AF_UNIX
AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
SOCK_STREAM = _socket.SOCK_STREAM
SOL_SOCKET = _socket.SOL_SOCKET
SCM_RIGHTS = _socket.SCM_RIGHTS
SOCKADDR_MAX = 128
MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
MMSGHDR_SIZE = 64
MAX_SEND = 1 << 24

_nr = syscalls.nr
_syscall = fs._syscall
_NR_CONNECT = _nr("connect")
_NR_GETSOCKOPT = _nr("getsockopt")
SO_DOMAIN = 39
SO_PROTOCOL = 38


def _sockaddr(w: Worker, n: notify.SeccompNotif, addr: int, length: int) -> bytes:
    if length < 2 or length > SOCKADDR_MAX:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return w.mem.read(n.pid, addr, length)


class _Target:
    """A decided destination: what to pass to the kernel instead of the
    caller's sockaddr, and the descriptor that pins a UNIX socket file."""

    def __init__(self, raw: bytes, pin: int = -1, passthrough: bool = False) -> None:
        self.raw = raw
        self.pin = pin
        #: An abstract or unnamed UNIX address: continue the call.
        self.passthrough = passthrough

    def close(self) -> None:
        if self.pin >= 0:
            os.close(self.pin)
            self.pin = -1


def _decide(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, raw: bytes,
            sock_type: int, category: Category | None,
            validated: bool = False) -> _Target:  # fmt: skip
    """Decide the address *raw*; *category* overrides the inet category.
    *validated*: ID_VALID was checked after *raw* was read."""
    family = struct.unpack_from("=H", raw)[0]
    if family == AF_UNIX:
        path = raw[2:].split(b"\0", 1)[0]
        if len(raw) <= 2 or raw[2] == 0:
            return _Target(raw, passthrough=True)
        full = absolute(n.pid, AT_FDCWD, path)
        s.valid(w, n)
        pin, resolved = fs._open_path(s, w, n, caller, full, True)
        try:
            s.check(n, Category.WRITE, resolved)
        except BaseException:
            os.close(pin)
            raise
        via = f"/proc/self/fd/{pin}".encode()
        return _Target(struct.pack("=H", AF_UNIX) + via + b"\0", pin)
    if not validated:
        s.valid(w, n)
    if family in (AF_INET, AF_INET6):
        if family == AF_INET:
            if len(raw) < 16:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            packed = raw[4:8]
        else:
            if len(raw) < 24:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            packed = raw[8:24]
        port = (raw[2] << 8) | raw[3]
        if category is None:
            category = Category.NET_CONNECT if sock_type == SOCK_STREAM else Category.NET_SEND
        # The common case, an allowed address with nobody to tell: decided
        # on the packed bytes, no address object made.  Anything else (a
        # denial, an event to make) goes the long way, which records it.
        if s.quiet_net and s.plan.decide_net_packed(category, packed, port).allow:
            return _Target(raw)
        s.check_net(n, category, family, _ip_text(packed), port)
    return _Target(raw)


def _ip_text(packed: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(packed))


def _sockopt(fd: int, option: int) -> int:
    """An int socket option of SOL_SOCKET."""
    val = ctypes.c_int()
    size = ctypes.c_uint32(4)
    _syscall(_NR_GETSOCKOPT, fd, SOL_SOCKET, option, ctypes.byref(val), ctypes.byref(size))
    return val.value


def _getsockopt_type(fd: int) -> int:
    return _sockopt(fd, _socket.SO_TYPE)


MSG_NOSIGNAL = 0x4000
SIGPIPE = 13


def _sigpipe(n: notify.SeccompNotif, err: OSError, flags: int) -> None:
    """A send that fails with EPIPE raises SIGPIPE in the sender, unless
    MSG_NOSIGNAL: we sent it, so the calling thread gets the signal, to be
    delivered when its call returns EPIPE (as the kernel would)."""
    if err.errno != errno.EPIPE or flags & MSG_NOSIGNAL:
        return
    pidfd = procmem.pidfd_open(n.pid, thread=True)
    try:
        _syscall(_nr("pidfd_send_signal"), pidfd, SIGPIPE, None, 0)
    finally:
        os.close(pidfd)


@handles("connect")
def h_connect(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    sock, sock_type, raw = _their_socket(s, w, n, fs._int(a[0]), a[1], a[2] & 0xFFFFFFFF)
    try:
        target = _decide(s, w, n, caller, raw, sock_type, None, validated=True)
        try:
            if target.passthrough and _sockopt(sock, SO_DOMAIN) == AF_UNIX:
                _unshared(s, w, n, raw, [(a[1], len(raw))])
                w.resp.cont(s.listener, n.id)
                return
            # Not a UNIX socket: the kernel refuses the address, on our copy.
            _connect(sock, target.raw)
        finally:
            target.close()
    finally:
        os.close(sock)
    fs._done(s, w, n)


IPPROTO_TCP = 6


def q_connect(s: SandboxSession, w: Worker, n: notify.SeccompNotif) -> bool:
    """The receiver's answer to a TCP connect that Landlock decides alone:
    continue it, reading nothing of the caller's memory.  False (the
    broker decides) for anything else.

    Why the kernel may run this call, when a connect to a UNIX socket by
    path must never run unchecked:

    - The socket: we look at the caller's own open file description
      (pidfd_getfd).  A socket's family, type and protocol never change,
      and an AF_INET/AF_INET6 socket cannot be connected to a UNIX address,
      whatever the sockaddr buffer holds when the kernel reads it again.
    - The descriptor *number*, which the kernel looks up again when the
      call continues: another thread could make it name a UNIX socket in
      between (dup2), and then the kernel would connect that to whatever
      path the buffer then holds (tests/escape/test_connect_race.py does
      exactly this, and reaches a denied socket when this check is left
      out).  So the caller must have no other thread: its one thread is
      stopped in this call from the trap until our answer (a signal ends
      the call, and then our answer is refused as stale), so no thread can
      appear, and no other process shares its table: exec gives each
      process its own, and the sandbox's filter refuses CLONE_FILES
      without CLONE_THREAD (plan/filter.py).  Nothing else writes another
      process's descriptor table (io_uring is refused too).
    - The address: ``net/connect`` is not routed, so Landlock holds its
      rules exactly, and Landlock checks the port of a TCP connect in the
      kernel (IPPROTO_TCP only: an MPTCP socket, say, is not TCP to
      Landlock, and goes to the broker).  ``net/connect`` being neither
      routed nor observed also means no event is wanted.

    The pidfd and the thread count are read from ``n.pid`` before we
    answer, and the answer is accepted only while the call is pending, so
    they were the caller's.  Every step is a non-blocking system call.
    """
    if Category.NET_CONNECT in s.plan.categories:
        return False
    # os.pidfd_open: procmem's goes through ctypes, which costs more here.
    pidfd = os.pidfd_open(n.pid, procmem.PIDFD_THREAD)
    try:
        # Still pending: the pidfd is the caller's, not a recycled pid's.
        if not w.resp.valid(s.listener, n.id):
            return False
        fd = procmem.pidfd_getfd(pidfd, fs._int(n.data.args[0]))
    finally:
        os.close(pidfd)
    try:
        # getsockopt, not getsockname (which takes the socket's lock).  Not
        # a socket: OSError, and the broker answers as the kernel would.
        tcp = _sockopt(fd, SO_DOMAIN) in (AF_INET, AF_INET6)
        tcp = tcp and _sockopt(fd, _socket.SO_TYPE) == SOCK_STREAM
        tcp = tcp and _sockopt(fd, SO_PROTOCOL) == IPPROTO_TCP
    finally:
        os.close(fd)
    if not tcp or not _one_thread(n.pid):
        return False
    w.resp.cont(s.listener, n.id)
    return True


def _one_thread(tid: int) -> bool:
    """Whether the thread group of *tid* has one live thread: procfs gives
    ``/proc/TID/task`` two links plus one per live thread (none once the
    group is gone, which answers False)."""
    return os.stat(f"/proc/{tid}/task").st_nlink == 3


QUICK[_NR_CONNECT] = q_connect


# Why an abstract address may be read again by the kernel, and when not:
#
# The supervisor must not connect (or send to) an abstract UNIX
# address itself: it has no Landlock domain, and Landlock's scoping of
# abstract sockets (they reach only the sandbox's own) applies to the
# process that connects.  So such a call is continued, and the kernel
# copies the sockaddr again: if someone rewrote it into a path meanwhile,
# the kernel would reach a path socket that no write rule decided.  Nor
# can the address be checked after the call: by then the listener has the
# connection, or the datagram.  So the call is continued only when nobody
# but the caller can write those bytes while it waits for our answer:
#
# - the caller has one thread (it is stopped in this call, so no thread
#   can appear), as q_connect relies on for its descriptor table;
# - no other process shares its address space: the sandbox's filter
#   allows CLONE_VM without CLONE_THREAD only as vfork does it (no
#   CLONE_PARENT), so the only other process that can is the caller's
#   parent, while the caller is its vfork child: compared with kcmp;
# - the bytes lie in memory only the caller can write: private anonymous
#   memory (stack, heap, an anonymous MAP_PRIVATE mapping), or a written
#   (copied) page of a private file mapping, a global in .data say; not a
#   MAP_SHARED mapping another process could write, nor a file's page that
#   a write(2) to the file would change (PROCMAP_QUERY, /proc/PID/pagemap);
# - no Linux AIO context is mapped (a direct read completes into memory
#   after io_submit returned; the filter refuses io_setup beside a
#   supervisor, so this only backs that up), and process_vm_writev,
#   ptrace and io_uring are refused by the filter.
#
# Otherwise the call is refused (EACCES) with an event that says why: a
# multithreaded program cannot reach an abstract socket while the write
# rules are routed, but a one-thread client (D-Bus style) can.
def _unshared(s: SandboxSession, w: Worker, n: notify.SeccompNotif, raw: bytes,
              ranges: list[tuple[int, int]]) -> None:  # fmt: skip
    """Return if the caller's bytes at *ranges* (holding the abstract
    address *raw*) cannot change before the kernel reads them; raise
    :class:`Denied` (with an event) otherwise."""
    if len(ranges) == 1 and ranges[0][1] <= 2:
        # No name at all, and a length the caller cannot change (a call's
        # argument): only the family is read again, and no path fits.
        return
    try:
        problem = _writers(n.pid, ranges)
    except OSError as err:
        # Cannot tell (a kernel without PROCMAP_QUERY, say): refused.
        problem = f"cannot tell: {os.strerror(err.errno or 0)}"
    s.valid(w, n)
    if problem is None:
        return
    name = raw[3:].split(b"\0", 1)[0].decode(errors="replace")
    syscall = syscalls.NAME.get(n.data.nr, str(n.data.nr))
    s._emit(events.make(n.pid, syscall, str(Category.WRITE), "@" + name, events.DENY,
                        errno.EACCES, f"abstract address not private: {problem}"))  # fmt: skip
    raise Denied(errno.EACCES)


def _writers(tid: int, ranges: list[tuple[int, int]]) -> str | None:
    """None when nobody but thread *tid* can write *ranges*; else who can."""
    if not _one_thread(tid):
        return "another thread"
    if _vfork_parent(tid):
        return "a vfork parent"
    maps = os.open(f"/proc/{tid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, length in ranges:
            problem = _private(tid, maps, start, start + length)
            if problem is not None:
                return problem
    finally:
        os.close(maps)
    if _aio_in_use(tid):
        return "Linux AIO"
    return None


def _aio_in_use(tid: int) -> bool:
    """Whether *tid*'s process may have an AIO context: none exists on the
    whole system, or it has no ring mapped (see the caveat in the guide:
    a ring can be unmapped while its context lives)."""
    if int(procmem.read_proc("/proc/sys/fs/aio-nr")) == 0:
        return False
    with open(f"/proc/{tid}/maps", "rb") as f:
        return b"[aio]" in f.read()


def _vfork_parent(tid: int) -> bool:
    """Whether the parent of *tid* may share its address space."""
    ppid = _stat_fields(tid)[1]
    if ppid <= 0:
        return False
    try:
        if ptrace.same_vm(tid, ppid):
            return True
    except PermissionError:
        # A parent we may not trace while we may trace the caller (we
        # read its memory): other credentials or capabilities (the fork
        # server above the sandbox's first process), or not dumpable.  A
        # vfork parent has the caller's address space, so its
        # dumpability, and the caller's credentials: in the sandbox no
        # process can gain privileges, nor shed uids or capabilities below
        # what we have over it.
        pass
    # A leader that exited leaves no memory to compare, while its threads
    # (one of them the vforking one) share it still.
    return _stat_fields(ppid)[0] == b"Z"


def _stat_fields(pid: int) -> tuple[bytes, int]:
    """``(state, ppid)`` from /proc/PID/stat."""
    fields = procmem.read_proc(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split(None, 3)
    return fields[0], int(fields[1])


def _private(tid: int, maps: int, pos: int, end: int) -> str | None:
    """None when [pos, end) of *tid* is memory only it can write; else what
    it is.  Private anonymous memory (stack, heap, anonymous MAP_PRIVATE)
    is; so is a page of a private file mapping once written (copied on
    write: the file no longer shows through).  Shared memory is not, nor a
    file's page that a write(2) to the file would change."""
    query = procmem.ProcmapQuery()
    pagemap = -1
    try:
        while pos < end:
            try:
                procmem.mapping(maps, pos, query)
            except FileNotFoundError:
                return "unmapped memory"
            if query.vma_flags & procmem.PROCMAP_QUERY_VMA_SHARED:
                return "shared memory"
            if query.inode == 0 and query.dev_major == 0 and query.dev_minor == 0:
                # Anonymous; the kernel's own special mappings (vvar, which
                # the kernel rewrites) are not writable.
                if not query.vma_flags & procmem.PROCMAP_QUERY_VMA_WRITABLE:
                    return "a special mapping"
                pos = query.vma_end
                continue
            if pagemap < 0:
                pagemap = os.open(f"/proc/{tid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            stop = min(end, query.vma_end)
            page = pos - pos % procmem.PAGE_SIZE
            while page < stop:
                entry = procmem.page_flags(pagemap, page)
                if entry & procmem.PM_FILE or not entry & (procmem.PM_PRESENT | procmem.PM_SWAP):
                    return "file-backed memory"
                page += procmem.PAGE_SIZE
            pos = stop
        return None
    finally:
        if pagemap >= 0:
            os.close(pagemap)


def _abstract_only(s: SandboxSession, w: Worker, n: notify.SeccompNotif, base: int,
                   vlen: int) -> None:  # fmt: skip
    """sendmmsg continued: every entry must carry no address or an
    abstract one, all of it private (:func:`_unshared`); raise otherwise."""
    ranges = [(base, MMSGHDR_SIZE * vlen)]
    first = b""
    for i in range(vlen):
        name, namelen = MSGHDR.unpack(w.mem.read(n.pid, base + MMSGHDR_SIZE * i, MSGHDR.size))[:2]
        if not name or not namelen:
            continue
        raw = _sockaddr(w, n, name, namelen)
        family = struct.unpack_from("=H", raw)[0]
        if family != AF_UNIX or (len(raw) > 2 and raw[2] != 0):
            # Another kind of address after an abstract one: the kernel
            # would send it undecided.  The caller sends it on its own.
            raise Denied(errno.EACCES)
        first = first or raw
        ranges.append((name, len(raw)))
    _unshared(s, w, n, first, ranges)


def _their_socket(s: SandboxSession, w: Worker, n: notify.SeccompNotif, fd: int, addr: int,
                  length: int) -> tuple[int, int, bytes]:  # fmt: skip
    """``(our duplicate of the caller's socket fd, its SO_TYPE, the
    caller's sockaddr at addr)``.

    One ID_VALID check covers both: it comes after the pidfd was opened
    and the memory read, and a pending call's thread cannot have exited,
    so its pid named the caller throughout.  No ``readlink`` of the
    socket: nothing here decides on its path.
    """
    if length < 2 or length > SOCKADDR_MAX:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    pidfd = procmem.pidfd_open(n.pid, thread=True)
    try:
        raw = w.mem.read(n.pid, addr, length)
        s.valid(w, n)
        sock = procmem.pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    try:
        return sock, _getsockopt_type(sock), raw
    except BaseException:
        os.close(sock)
        raise


def _connect(sock: int, raw: bytes) -> None:
    buf = ctypes.create_string_buffer(raw, len(raw))
    _syscall(_NR_CONNECT, sock, buf, len(raw))


@handles("bind")
def h_bind(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    raw = _sockaddr(w, n, a[1], a[2] & 0xFFFFFFFF)
    sock, _path = fs._their_fd(s, w, n, fs._int(a[0]))
    try:
        family = struct.unpack_from("=H", raw)[0]
        if family == AF_UNIX and len(raw) > 2 and raw[2] != 0:
            _bind_path(s, w, n, caller, sock, raw)
        else:
            target = _decide(s, w, n, caller, raw, 0, Category.NET_BIND)
            if target.passthrough:
                # An abstract or unnamed address is bound here, on our copy,
                # and not continued: read again by the kernel, it could have
                # become a path, a socket file no create rule decided.  Unlike
                # a connect, a bind may be ours: Landlock scopes an abstract
                # socket by the credentials of the file that holds it (the
                # sandbox's, pidfd_getfd shares the file), not by who bound
                # it, and the name lands in the socket's own network
                # namespace.  So a multithreaded server binds as before.
                s.valid(w, n)
            buf = ctypes.create_string_buffer(target.raw, len(target.raw))
            _syscall(_nr("bind"), sock, buf, len(target.raw))
    finally:
        os.close(sock)
    fs._done(s, w, n)


def _bind_path(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller, sock: int,
               raw: bytes) -> None:  # fmt: skip
    full = absolute(n.pid, AT_FDCWD, raw[2:].split(b"\0", 1)[0])
    s.valid(w, n)
    dfd, name, target = fs._parent(s, w, n, caller, full)
    try:
        s.check(n, Category.CREATE, target)
        s.check(n, Category.WRITE, target)
        via = f"/proc/self/fd/{dfd}/".encode() + name
        if len(via) > 107:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        addr = struct.pack("=H", AF_UNIX) + via + b"\0"
        # The socket file takes the caller's umask, set on this worker only.
        old = os.umask(fs._umask(n.pid))
        try:
            buf = ctypes.create_string_buffer(addr, len(addr))
            _syscall(_nr("bind"), sock, buf, len(addr))
        finally:
            os.umask(old)
    finally:
        os.close(dfd)


@handles("listen")
def h_listen(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    sock, _path = fs._their_fd(s, w, n, fs._int(a[0]))
    try:
        name = ctypes.create_string_buffer(SOCKADDR_MAX)
        size = ctypes.c_uint32(SOCKADDR_MAX)
        _syscall(_nr("getsockname"), sock, name, ctypes.byref(size))
        raw = name.raw[: size.value]
        family = struct.unpack_from("=H", raw)[0] if len(raw) >= 2 else 0
        if family in (AF_INET, AF_INET6) and struct.unpack_from("!H", raw, 2)[0] == 0:
            # Unbound: listen would bind an ephemeral port by itself.
            address = "0.0.0.0" if family == AF_INET else "::"  # noqa: S104 - any address: what an unbound socket gets
            s.check_net(n, Category.NET_BIND, family, address, 0)
        _syscall(_nr("listen"), sock, fs._int(a[1]))
    finally:
        os.close(sock)
    fs._done(s, w, n)


@handles("sendto")
def h_sendto(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    length = a[2]
    if length > MAX_SEND:
        raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
    data = fs._read_large(w, n, a[1], length) if length else b""
    raw = _sockaddr(w, n, a[4], a[5] & 0xFFFFFFFF)
    sock, _path = fs._their_fd(s, w, n, fs._int(a[0]))
    try:
        target = _decide(s, w, n, caller, raw, _getsockopt_type(sock), None)
        try:
            if target.passthrough:
                _unshared(s, w, n, raw, [(a[4], len(raw))])
                w.resp.cont(s.listener, n.id)
                return
            dbuf = ctypes.create_string_buffer(data, max(len(data), 1))
            abuf = ctypes.create_string_buffer(target.raw, len(target.raw))
            try:
                sent = _syscall(_nr("sendto"), sock, dbuf, len(data), a[3] & 0xFFFFFFFF, abuf,
                                len(target.raw))  # fmt: skip
            except OSError as err:
                _sigpipe(n, err, a[3])
                raise
        finally:
            target.close()
    finally:
        os.close(sock)
    fs._done(s, w, n, sent)


def _sendmsg_one(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller,
                 sock: int, sock_type: int, hdr_addr: int, flags: int) -> int | None:  # fmt: skip
    """Send one ``struct msghdr`` of the caller's; None when it must be
    continued instead (an abstract address)."""
    name, namelen, iov, iovlen, control, controllen, _ = MSGHDR.unpack(
        w.mem.read(n.pid, hdr_addr, MSGHDR.size)
    )
    if iovlen > 1024:
        raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
    chunks: list[bytes] = []
    total = 0
    for i in range(iovlen):
        base, length = struct.unpack("=QQ", w.mem.read(n.pid, iov + 16 * i, 16))
        total += length
        if total > MAX_SEND:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        chunks.append(fs._read_large(w, n, base, length) if length else b"")
    ancillary: list[tuple[int, int, bytes]] = []
    theirs: list[int] = []
    try:
        if control and controllen:
            if controllen > 65536:
                raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
            cdata = fs._read_large(w, n, control, controllen)
            off = 0
            while off + 16 <= len(cdata):
                clen, level, kind = struct.unpack_from("=Qii", cdata, off)
                if clen < 16 or off + clen > len(cdata):
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
                payload = cdata[off + 16 : off + clen]
                if level == SOL_SOCKET and kind == SCM_RIGHTS:
                    numbers = array.array("i")
                    numbers.frombytes(payload[: len(payload) - len(payload) % 4])
                    mine = array.array("i")
                    for number in numbers:
                        fd, _ = fs._their_fd(s, w, n, number)
                        theirs.append(fd)
                        mine.append(fd)
                    payload = mine.tobytes()
                ancillary.append((level, kind, payload))
                off += (clen + 7) & ~7
        target = None
        if name and namelen:
            raw = _sockaddr(w, n, name, namelen)
            target = _decide(s, w, n, caller, raw, sock_type, None)
            if target.passthrough:
                target.close()
                # The kernel reads the header and the address again.
                _unshared(s, w, n, raw, [(hdr_addr, MSGHDR.size), (name, len(raw))])
                return None
        else:
            s.valid(w, n)
        py = _socket.socket(fileno=os.dup(sock))
        try:
            address = _py_address(target.raw) if target is not None else None
            if address is None:
                return py.sendmsg(chunks, ancillary, flags)
            return py.sendmsg(chunks, ancillary, flags, address)
        finally:
            py.close()
            if target is not None:
                target.close()
    finally:
        for fd in theirs:
            os.close(fd)


def _py_address(raw: bytes) -> Any:
    family = struct.unpack_from("=H", raw)[0]
    if family == AF_UNIX:
        return raw[2:].split(b"\0", 1)[0]
    if family == AF_INET:
        return (_ip_text(raw[4:8]), struct.unpack_from("!H", raw, 2)[0])
    if family == AF_INET6:
        (flow,) = struct.unpack_from("=I", raw, 4)
        (scope,) = struct.unpack_from("=I", raw, 24) if len(raw) >= 28 else (0,)
        return (_ip_text(raw[8:24]), struct.unpack_from("!H", raw, 2)[0],
                flow, scope)  # fmt: skip
    raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))


@handles("sendmsg")
def h_sendmsg(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    sock, _path = fs._their_fd(s, w, n, fs._int(a[0]))
    try:
        sent = _sendmsg_one(s, w, n, caller, sock, _getsockopt_type(sock), a[1],
                            a[2] & 0xFFFFFFFF)  # fmt: skip
    except OSError as err:
        _sigpipe(n, err, a[2])
        raise
    finally:
        os.close(sock)
    if sent is None:
        w.resp.cont(s.listener, n.id)
        return
    fs._done(s, w, n, sent)


@handles("sendmmsg")
def h_sendmmsg(s: SandboxSession, w: Worker, n: notify.SeccompNotif, caller: Caller) -> None:
    a = n.data.args
    vlen = min(a[2] & 0xFFFFFFFF, 1024)
    flags = a[3] & 0xFFFFFFFF
    sock, _path = fs._their_fd(s, w, n, fs._int(a[0]))
    count = 0
    try:
        stype = _getsockopt_type(sock)
        for i in range(vlen):
            entry = a[1] + MMSGHDR_SIZE * i
            try:
                sent = _sendmsg_one(s, w, n, caller, sock, stype, entry, flags)
            except OSError as err:
                if count:
                    break
                _sigpipe(n, err, flags)
                raise
            if sent is None:
                if count:
                    break
                # Continued, the call sends every entry: each must be one
                # the kernel may take as it is (see _abstract_only).
                _abstract_only(s, w, n, a[1], vlen)
                w.resp.cont(s.listener, n.id)
                return
            w.mem.write(n.pid, entry + MSGHDR.size, struct.pack("=I", sent))
            count += 1
    finally:
        os.close(sock)
    fs._done(s, w, n, count)
