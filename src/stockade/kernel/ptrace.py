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

from stockade.kernel import _ffi

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


def wait(tid: int) -> int:
    """The next wait status of this thread's tracee *tid* (blocking);
    raises ChildProcessError when it is not (or no longer) ours."""
    return os.waitpid(tid, WALL | WNOTHREAD)[1]


def wait_any() -> tuple[int, int]:
    """``(pid, status)`` of the next event of any tracee (or child) of this
    thread (blocking); raises ChildProcessError when it has none."""
    return os.waitpid(-1, WALL | WNOTHREAD)


def same_vm(pid1: int, pid2: int) -> bool:
    """Whether two tasks share one address space (kcmp KCMP_VM); raises
    OSError (the ptrace check applies to both)."""
    return _ffi.syscall(SYS_kcmp, pid1, pid2, KCMP_VM, 0, 0) == 0
