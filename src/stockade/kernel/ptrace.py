"""Tracing one thread of a sandbox for the length of one system call
(ptrace(2), kcmp(2)).

Some facts the supervisor relies on:

- ``PTRACE_SEIZE`` attaches without stopping the thread or sending it a
  signal, so a thread that waits for a seccomp notification's answer
  keeps waiting.  Access is the ptrace check (PTRACE_MODE_ATTACH_REALCREDS):
  same user and a dumpable target, or CAP_SYS_PTRACE in the target's user
  namespace (its owner in the parent namespace has it).  The sandbox's own
  filter refuses ``ptrace``, so a sandboxed thread never has another tracer.
- The tracer is the *thread* that attached: only it may send requests
  (``PTRACE_INTERRUPT``, ``PTRACE_DETACH``), and ``waitpid`` with
  ``__WNOTHREAD`` sees its tracees only, not its siblings'.
- ``PTRACE_O_EXITKILL``: if the tracer thread dies, the tracee is killed,
  never let go unchecked.
- ``PTRACE_O_TRACEEXEC``: a successful exec stops the tracee
  (PTRACE_EVENT_EXEC) before the new program's first instruction, with
  the old image gone; a thread that was not the leader has taken the
  leader's tid by then.  A failed exec returns to the caller like any
  call: ``PTRACE_INTERRUPT`` makes it stop (PTRACE_EVENT_STOP) on its way
  back to user space, where ``PTRACE_DETACH`` leaves it as it was.
- A stop for a signal (signal-delivery-stop) is left by detaching with that
  signal, which delivers it as if nobody had looked.
"""

from __future__ import annotations

import os
import time

from stockade.kernel import _ffi, procmem

SYS_ptrace = 101
SYS_kcmp = 312
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_STOP = 128
WNOTHREAD = 0x20000000
WALL = 0x40000000
KCMP_VM = 1


def seize(tid: int, options: int) -> None:
    """Attach to thread *tid* without stopping it; raises OSError."""
    _ffi.syscall(SYS_ptrace, PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """Ask tracee *tid* to stop at its next return to user space."""
    _ffi.syscall(SYS_ptrace, PTRACE_INTERRUPT, tid, 0, 0)


def detach(tid: int, sig: int = 0) -> None:
    """Let stopped tracee *tid* go, delivering *sig* if not 0."""
    _ffi.syscall(SYS_ptrace, PTRACE_DETACH, tid, 0, sig)


def next_stop(tid: int, tgid: int) -> tuple[int, int] | None:
    """``(pid, waitpid status)`` of the next stop of this thread's tracee,
    thread *tid* of process *tgid*, blocking; None once it has ended
    instead.

    A thread that was not the leader has the leader's tid after its exec,
    and a wait on its old tid would never wake: such a tracee is waited
    for as any tracee of this thread (the caller of :func:`seize` keeps
    one at a time, and threads that trace have no children).  An ended
    tracee is looked at without reaping it first: reaping a process whose
    real parent is this very process would take its exit status from
    that parent's own wait (Popen would see 0), so such a process is left
    for it.  Any other is reaped, which hands it to its parent (or, for a
    thread, lets its thread group end).
    """
    options = os.WEXITED | os.WSTOPPED | os.WNOWAIT | WALL | WNOTHREAD
    while True:
        try:
            if tid == tgid:
                info = os.waitid(os.P_PID, tid, options)
            else:
                info = os.waitid(os.P_ALL, 0, options)
        except ChildProcessError:
            return None
        if info is None:  # only with WNOHANG
            return None
        pid = info.si_pid
        if pid not in (tid, tgid):
            # An earlier tracee left for this process's own wait is in the
            # way of a wait for any: look at ours only, a while apart.
            found = _poll(tid, tgid)
            if found is None:
                continue
            pid, code = found
        else:
            code = info.si_code
        try:
            if code in (os.CLD_TRAPPED, os.CLD_STOPPED):
                return os.waitpid(pid, WALL | WNOTHREAD)
            if not _parent_reaps(pid):
                os.waitpid(pid, WALL | WNOTHREAD)
        except ChildProcessError:
            pass
        return None


def _poll(tid: int, tgid: int) -> tuple[int, int] | None:
    options = os.WEXITED | os.WSTOPPED | os.WNOWAIT | os.WNOHANG | WALL | WNOTHREAD
    for pid in (tid, tgid):
        try:
            info = os.waitid(os.P_PID, pid, options)
        except ChildProcessError:
            continue
        if info is not None:
            return pid, info.si_code
    time.sleep(0.001)
    return None


def _parent_reaps(pid: int) -> bool:
    """Whether ended tracee *pid* is a process whose real parent is this
    process (its wait reaps it, the ptrace link notwithstanding)."""
    try:
        tgid, ppid = procmem.status(pid, b"Tgid", b"PPid")
    except OSError:
        return False
    return tgid == b"%d" % pid and ppid == b"%d" % os.getpid()


def same_vm(pid1: int, pid2: int) -> bool:
    """Whether two tasks share one address space (kcmp KCMP_VM); raises
    OSError (the ptrace check applies to both)."""
    return _ffi.syscall(SYS_kcmp, pid1, pid2, KCMP_VM, 0, 0) == 0
