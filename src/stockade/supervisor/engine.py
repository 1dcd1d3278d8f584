"""The notification loop: one receiver at a time, a pool of workers.

Threads and their contract (one :class:`Supervisor` per process serves
every sandbox the process runs).  The receiver is a role that passes from
thread to thread (leader/follower), so that a notification is handled by
the thread that received it, with no queue between them:

- Exactly one thread at a time, the **receiver** (it holds
  ``_receiver``), waits in ``poll`` on every sandbox's listener fd and
  every pending hand-off socket.  ``poll``, not ``epoll``: with
  ``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`` the kernel wakes a thread that
  waits on the listener itself on the caller's CPU, but epoll's own
  wake-up of its waiter is a plain one, which on an idle 2-vCPU VM sends
  the receiver to the other, halted vCPU (a C supervisor answering
  ``find /usr``'s opens measured 1.5x native with ``poll``, 3.5-4.5x
  with ``epoll``: bench/README.md).  It does only non-blocking work:
  ``SECCOMP_IOCTL_NOTIF_RECV`` on a listener that polled readable, and
  taking a listener over from a child.  The wait itself is the compiled
  receiver when it is built (:mod:`stockade.supervisor.fastpath`), which
  also answers there, without the GIL, the read-only opens that Python
  taught it to (and hands everything else back).  As soon as it holds one
  notification it gives up the role, to an idle thread waiting for it (a
  new thread is started if none is idle, up to ``MAX_WORKERS``), and only
  then runs the handler.  So a slow handler (an open of a FIFO, a
  connect) never delays another sandbox's calls or another thread's.
- An idle thread waits for the receiver role; one that has waited
  ``IDLE_SECONDS`` retires, all but ``MIN_WORKERS``.  Idle and live counts
  change under one lock, and a new thread is started when, under it, no
  thread is idle once the role was released: some thread is always
  receiving, or on its way to.
- The **sentinel**: whatever a handler raises, the call it was handling is
  answered EACCES and the thread carries on.  A handler that answered
  already makes that second answer fail with ENOENT, which is ignored.
- A listener is closed only once its sandbox is gone (POLLHUP) *and* no
  thread still holds one of its notifications, so nobody answers on a
  reused descriptor number.

Threads of a privileged process drop their effective capabilities at start
(per thread), so that what they do on a sandbox's behalf is checked by the
kernel with the same rights the sandbox has (a root sandbox runs with no
capabilities).  They also unshare their filesystem attributes, so that the
umask they set for a brokered create is theirs alone.
"""

from __future__ import annotations

# _socket, not socket: its enum conversions cost start-up time, and the
# default profile imports this module on every run.
import _socket
import ctypes
import errno
import os
import select
import signal
import struct
import threading

from stockade.kernel import _ffi, notify, procmem
from stockade.supervisor import fastpath
from stockade.supervisor.idlepoll import IdlePoller

IDLE_SECONDS = 5.0
MAX_WORKERS = 64
MIN_WORKERS = 1

CLONE_FS = 0x00000200
SYS_capset = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: What the supervisor's threads block: every signal but those a fault
#: raises in the thread itself.
ASYNC_SIGNALS = signal.valid_signals() - {
    signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS,
}  # fmt: skip

#: One hand-off record: the listener's descriptor number in the child.
HANDOFF = struct.Struct("=i")


class Worker:
    """Per-thread scratch: answer structs and a memory reader, allocated
    once so that handling a call allocates as little as possible."""

    def __init__(self) -> None:
        self.resp = notify.Responder()
        self.mem = procmem.MemReader()
        #: The notification this thread receives into: the thread that
        #: receives a call is the one that handles it, so one per thread.
        self.notif = notify.SeccompNotif()
        #: Handling a call (cleared when back to idle).
        self.busy = False


class Session:
    """One sandbox under supervision: subclassed by the dispatcher that
    knows the handlers (:class:`stockade.supervisor.session.SandboxSession`).
    """

    #: Where the compiled receiver answers this sandbox's quick opens
    #: (:mod:`stockade.supervisor.fastpath`); None: never.
    fast: fastpath.DirCache | None = None

    def __init__(self) -> None:
        self.listener = -1
        self._lock = threading.Lock()
        self._pending = 0
        self._hup = False
        #: Set once the listener is closed (or was never received).
        self.finished = threading.Event()
        #: Set once the listener was received (or the hand-off failed).
        self.attached = threading.Event()

    def handle(self, worker: Worker, notif: notify.SeccompNotif) -> None:
        """Answer *notif*; runs in a worker.  May raise: the sentinel then
        answers EACCES."""
        raise NotImplementedError

    def quick(self, worker: Worker, notif: notify.SeccompNotif) -> bool:
        """Answer *notif* in the receiver if that takes no waiting; True if
        answered.  Must never block: the receiver calls it before it gives
        up its role.  Raising counts as False (:meth:`handle` then runs)."""
        return False

    def handler_failed(self, notif: notify.SeccompNotif, err: BaseException) -> None:
        """Told after the sentinel answered EACCES for *notif*."""

    def closed(self) -> None:
        """Told once the listener is closed."""

    # -- bookkeeping, called by the supervisor --------------------------------

    def _take(self) -> None:
        with self._lock:
            self._pending += 1

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
            close = self._hup and self._pending == 0
        if close:
            self._close()

    def _hangup(self) -> None:
        with self._lock:
            self._hup = True
            close = self._pending == 0
        if close:
            self._close()

    def _close(self) -> None:
        with self._lock:
            fd, self.listener = self.listener, -1
        if fd >= 0:
            os.close(fd)
        self.attached.set()
        self.finished.set()
        self.closed()


class Supervisor:
    """The receiver and the worker pool of this process."""

    def __init__(self) -> None:
        # Used by the receiver only (one thread at a time): the poll set,
        # compiled when it can be (it then answers quick opens itself).
        self._rx = fastpath.receiver()
        # fd -> (kind, session, socket or None); entries are added by the
        # receiver (from _new, which adopt() fills from any thread) and
        # changed or removed by the receiver only.
        self._watched: dict[int, tuple[str, Session, _socket.socket | None]] = {}
        self._new: list[tuple[int, Session, _socket.socket]] = []
        #: Written by adopt() to wake the receiver for a new hand-off.
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._rx.register(self._wake)
        #: Held by the thread that is the receiver.
        self._receiver = threading.Lock()
        self._lock = threading.Lock()
        self._idle = 0
        self._workers = 1
        #: Threads started that are not yet waiting for the receiver role.
        self._starting = 1
        self._pool: list[Worker] = []
        self._privileged = os.geteuid() == 0
        self._sync_wakeup = True
        self._poller = IdlePoller()
        self._start_thread()

    @property
    def workers(self) -> int:
        """Live worker threads (for tests of idle retirement)."""
        with self._lock:
            return self._workers

    @property
    def compiled_answers(self) -> int:
        """Calls answered by the compiled receiver, in all (for tests and
        benchmarks; 0 when it does not run)."""
        return self._rx.answered

    def adopt(self, handoff: _socket.socket, session: Session) -> None:
        """Take over the listener that a child will send on *handoff* (our
        end of the hand-off socket pair, SO_PASSCRED set), then supervise
        it in *session*.  Returns at once; the receiver does the rest."""
        # The receiver registers it: a poll set is changed by the thread
        # that polls it, which must then poll again (woken here).
        with self._lock:
            self._new.append((handoff.fileno(), session, handoff))
        os.eventfd_write(self._wake, 1)

    # -- threads ------------------------------------------------------------------

    def _start_thread(self) -> None:
        threading.Thread(target=self._work, name="stockade-supervisor", daemon=True).start()

    def _work(self) -> None:
        # A signal sent to the process may be taken by any thread that does
        # not block it, and Python runs the handler only once the main
        # thread next wakes: one taken here could wait forever.
        signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
        try:
            self._confine_thread()
            worker: Worker | None = Worker()
        except OSError:
            worker = None  # cannot act with the sandbox's rights: deny all
        if worker is not None:
            with self._lock:
                self._pool.append(worker)
        receiver = self._receiver
        with self._lock:
            self._starting -= 1
        while True:
            # Idle: waiting for the receiver role, or holding it.  (Busy
            # ends here, under the same lock: never neither busy nor idle.)
            with self._lock:
                self._idle += 1
                if worker is not None:
                    worker.busy = False
            if not receiver.acquire(timeout=IDLE_SECONDS):
                with self._lock:
                    self._idle -= 1
                    if self._workers > MIN_WORKERS:
                        self._workers -= 1
                        if worker is not None:
                            self._pool.remove(worker)
                        return
                continue
            try:
                item = self._receive(worker)
            finally:
                with self._lock:
                    self._idle -= 1
                    # Someone must be receiving while we handle this call.
                    # A thread whose call is answered is only tidying up:
                    # it will be idle at once, and needs no replacement.
                    spawn = (
                        self._idle == 0
                        and not self._starting
                        and self._workers < MAX_WORKERS
                        and not any(w.busy and w.resp.answered for w in self._pool)
                    )
                    if spawn:
                        self._workers += 1
                        self._starting += 1
                    if worker is not None:
                        worker.busy = True
                        worker.resp.answered = False
                receiver.release()
            if spawn:
                self._start_thread()
            session, notif = item
            if worker is None:
                Worker_deny(session, notif)
                continue
            self._run(worker, session, notif)

    # -- the receiver role ---------------------------------------------------------

    def _receive(self, worker: Worker | None) -> tuple[Session, notify.SeccompNotif]:
        """Wait for the next notification (and do the bookkeeping events
        that come before it); called by the receiver only.  A notification
        the session can answer at once (:meth:`Session.quick`, or the
        compiled receiver's own quick opens) is answered here, with no
        hand-off of the role: that hand-off (waking another thread, which
        then contends for the GIL) costs more than such an answer."""
        rx = self._rx
        wake = self._wake
        # Only a thread that confined itself opens anything for a sandbox.
        fast = worker is not None
        while True:
            notif = worker.notif if worker is not None else notify.SeccompNotif()
            fd, mask, state, answered = rx.wait(notif, fast)
            if answered:
                self._poller.touch(answered)
            entry = self._watched.get(fd)
            if entry is None:
                if fd == wake:
                    self._take_new()
                continue  # a tick, or an event of a descriptor just dropped
            kind, session, sock = entry
            try:
                if kind == "handoff":
                    assert sock is not None
                    self._handoff(sock, session)
                elif state == fastpath.STATE_RECEIVED or mask & select.POLLIN:
                    if state == fastpath.STATE_EVENT:
                        notify.recv(fd, notif)
                    elif state < 0:
                        raise OSError(-state, os.strerror(-state))
                    self._poller.touch()
                    if worker is not None and self._quick(worker, session, notif):
                        continue
                    # Counted only when handed on: while the receiver holds
                    # it, nobody else can close the listener (only the
                    # receiver marks it hung up).
                    session._take()
                    return session, notif
                elif mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    self._drop(fd, session)
            except OSError as err:
                if err.errno != errno.ENOENT:  # ENOENT: the caller went away
                    self._drop(fd, session)
            except Exception:  # the receiver must survive anything
                # A listener we cannot read from is given up: with no
                # listener its sandbox's trapped calls fail (ENOSYS), never
                # succeed, and the launcher ends the run.
                self._drop(fd, session)

    def _take_new(self) -> None:
        """Watch the hand-off sockets adopt() queued (receiver only)."""
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        with self._lock:
            new, self._new = self._new, []
        for fd, session, sock in new:
            self._watched[fd] = ("handoff", session, sock)
            self._rx.register(fd)

    def _quick(self, worker: Worker, session: Session, notif: notify.SeccompNotif) -> bool:
        try:
            return session.quick(worker, notif)
        except Exception:  # the receiver must survive anything: a worker decides
            return False

    def _drop(self, fd: int, session: Session) -> None:
        if self._watched.pop(fd, None) is None:
            return
        try:
            self._rx.unregister(fd)
        except KeyError:
            pass  # already gone
        session._hangup()

    def _handoff(self, sock: _socket.socket, session: Session) -> None:
        """Read the child's record, take its listener with pidfd_getfd, and
        acknowledge so that it may exec.  On any failure the socket is
        closed without acknowledgement: the child fails its hand-off step
        and never runs the command unsupervised."""
        fd = sock.fileno()
        self._rx.unregister(fd)
        del self._watched[fd]
        listener = -1
        try:
            data, anc, _flags, _addr = sock.recvmsg(
                HANDOFF.size, _socket.CMSG_SPACE(struct.calcsize("3i"))
            )
            pid = -1
            for level, kind, payload in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            if len(data) == HANDOFF.size and pid > 0:
                (number,) = HANDOFF.unpack(data)
                pidfd = procmem.pidfd_open(pid)
                try:
                    listener = procmem.pidfd_getfd(pidfd, number)
                finally:
                    os.close(pidfd)
                if os.readlink(f"/proc/self/fd/{listener}") != "anon_inode:seccomp notify":
                    os.close(listener)
                    listener = -1
        except Exception:  # any failure refuses the hand-off (fail closed)
            if listener >= 0:
                os.close(listener)
            listener = -1
        if listener < 0:
            sock.close()
            session._close()
            return
        if self._sync_wakeup:
            self._sync_wakeup = notify.set_sync_wakeup(listener)
        session.listener = listener
        self._watched[listener] = ("listener", session, None)
        self._rx.register(listener)
        if session.fast is not None:
            self._rx.fast(listener, session.fast)
        session.attached.set()
        try:
            sock.send(b"k")
        except OSError:
            pass  # the child died meanwhile: its listener hangs up
        sock.close()

    def _run(self, worker: Worker, session: Session, notif: notify.SeccompNotif) -> None:
        try:
            session.handle(worker, notif)
        except BaseException as err:
            try:
                # Recorded before the answer: once answered, the caller may
                # exit and its run's result be read.
                session.handler_failed(notif, err)
            except Exception:  # noqa: S110 - reporting must not stop the answer
                pass
            worker.resp.send(session.listener, notif.id, error=errno.EACCES)
        finally:
            session._release()

    def _confine_thread(self) -> None:
        # A private fs_struct: the umask a brokered create sets is ours.
        _ffi.syscall(_ffi.SYS_unshare, CLONE_FS)
        if self._privileged:
            header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
            data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: empty
            _ffi.syscall(SYS_capset, header, data)


_supervisor: Supervisor | None = None
_supervisor_pid = -1
_supervisor_lock = threading.Lock()


def Worker_deny(session: Session, notif: notify.SeccompNotif) -> None:
    """Answer EACCES from a thread that could not confine itself."""
    try:
        notify.Responder().send(session.listener, notif.id, error=errno.EACCES)
    finally:
        session._release()


def get() -> Supervisor:
    """This process's supervisor (started on first use; a forked child
    gets its own)."""
    global _supervisor, _supervisor_pid
    with _supervisor_lock:
        if _supervisor is None or _supervisor_pid != os.getpid():
            _supervisor = Supervisor()
            _supervisor_pid = os.getpid()
        return _supervisor


def handoff_pair() -> tuple[_socket.socket, _socket.socket]:
    """``(ours, the child's)``: the socket pair a listener is handed over on.
    Ours receives the sender's pid with every message (SO_PASSCRED)."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    return ours, theirs
