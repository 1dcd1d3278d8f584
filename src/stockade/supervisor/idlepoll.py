"""Keep one idle CPU awake while sandboxes make trapped calls.

Why: a brokered open ends with ``SECCOMP_IOCTL_NOTIF_ADDFD``, which wakes
the caller with a plain wake-up (not on our CPU, which is busy: on the
other, idle one) and is woken back the same way.  On a VM whose idle
vCPUs halt at once (no guest halt polling), each of those wake-ups costs a
VM exit and a host reschedule: a C supervisor answering ``find /usr``'s
opens that way took 6.5-8x native there, 1.9x with one idle-priority busy
loop running beside it (bench/README.md).  The kernel's cure is halt
polling in the guest, which only the VM's owner can turn on; this is the
same cure in user space, the way gVisor's systrap platform spins before
it sleeps.

How: a small separate process (its own interpreter, so no GIL is shared)
runs at ``SCHED_IDLE``, the lowest priority there is: any other task
preempts it at once, and the scheduler counts a CPU that runs only such a
task as idle, so that wake-ups go there without waking a halted vCPU.  It
spins only until a deadline that the receiver pushes forward on every
notification (:meth:`IdlePoller.touch`), and sleeps on a pipe otherwise:
a sandbox that makes no trapped call costs nothing, one that makes a
burst of them costs at most :data:`WINDOW_NS` of spinning after the last.
It is started only once this process has seen :data:`START_AFTER`
notifications: a short run (one ``stockade run`` of a small command)
does not pay for starting an interpreter it would not use.

Off with ``STOCKADE_IDLE_POLL=0``, and never started on a single CPU.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import threading
import time

#: How long the poller spins after the last notification.
WINDOW_NS = 2_000_000
#: Notifications this process receives before the poller is started.
START_AFTER = 256
#: The deadline is written at most this often (a store per notification
#: would be cheap, but a shared cache line written that often is not).
_REFRESH_NS = WINDOW_NS // 4

#: Shared page: the deadline (CLOCK_MONOTONIC ns), then the poller's
#: "asleep" byte.
_DEADLINE = struct.Struct("=q")
_ASLEEP = 8

# The poller itself.  It must exit with us: it reads EOF on the wake pipe
# once our end closes (at our exit, however it comes), which it sees at
# the latest one window after the last notification.
_CHILD = r"""
import mmap, os, signal, struct, time
# Started from a supervisor thread, which blocks every signal.
signal.pthread_sigmask(signal.SIG_SETMASK, ())
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
shm, wake = int(os.environ["SHM"]), int(os.environ["WAKE"])
m = mmap.mmap(shm, mmap.PAGESIZE)
deadline = struct.Struct("=q").unpack_from
now = time.monotonic_ns
while True:
    while now() < deadline(m, 0)[0]:
        pass
    m[8] = 1
    # A notification may have pushed the deadline meanwhile; if we missed
    # its wake byte too, the next refresh sends another.
    if now() < deadline(m, 0)[0]:
        m[8] = 0
        continue
    if not os.read(wake, 512):
        break
    m[8] = 0
"""


class IdlePoller:
    """The spinning helper process, started lazily by :meth:`start`."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self._write = -1
        self._next = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._tried = False
        self._seen = 0

    @staticmethod
    def wanted() -> bool:
        """Whether this machine and environment want a poller."""
        if os.environ.get("STOCKADE_IDLE_POLL", "1") == "0" or not sys.executable:
            return False
        return len(os.sched_getaffinity(0)) > 1

    def start(self) -> None:
        """Start the poller (one attempt; a failure leaves it off: it is an
        optimisation, never needed for correctness)."""
        with self._lock:
            if self._tried or not self.wanted():
                return
            self._tried = True
            try:
                self._spawn()
            except (OSError, ValueError, subprocess.SubprocessError):
                pass  # no poller: the supervisor is only slower on some VMs

    def _spawn(self) -> None:
        shm = os.memfd_create("stockade-idlepoll", os.MFD_CLOEXEC)
        try:
            os.ftruncate(shm, mmap.PAGESIZE)
            shared = mmap.mmap(shm, mmap.PAGESIZE)
            read, write = os.pipe2(os.O_CLOEXEC)
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _CHILD],
                    env={"SHM": str(shm), "WAKE": str(read)},
                    pass_fds=(shm, read),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except BaseException:
                os.close(write)
                shared.close()
                raise
            finally:
                os.close(read)
        finally:
            os.close(shm)
        os.set_blocking(write, False)
        self._map, self._write, self._proc = shared, write, proc

    @property
    def pid(self) -> int | None:
        """The poller's pid, if it runs (for tests)."""
        return None if self._proc is None else self._proc.pid

    def touch(self, count: int = 1) -> None:
        """*count* notifications came: keep spinning for another window.
        Called by the receiver only; costs a clock read when nothing is
        due."""
        shared = self._map
        if shared is None:
            seen = self._seen
            self._seen = seen + count
            if seen < START_AFTER <= seen + count:
                # Not here: the receiver must not wait for a process start.
                try:
                    threading.Thread(
                        target=self.start, name="stockade-idlepoll", daemon=True
                    ).start()
                except RuntimeError:
                    pass  # no thread to spare: no poller, and the receiver goes on
            return
        now = time.monotonic_ns()
        if now < self._next:
            return
        self._next = now + _REFRESH_NS
        _DEADLINE.pack_into(shared, 0, now + WINDOW_NS)
        if shared[_ASLEEP]:
            try:
                os.write(self._write, b"w")
            except BlockingIOError:
                pass  # bytes are waiting for it already: it will wake
            except OSError:
                # It died (EPIPE: killed, say).  Go on without it: an error
                # here would reach the receiver, which would give up the
                # listener that this notification came from.
                self._map = None
                os.close(self._write)
                self._write = -1
