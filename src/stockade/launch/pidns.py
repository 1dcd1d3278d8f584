"""The pid namespace: an outer stub, a minimal init, and the command.

Like everything in :mod:`stockade.launch.child`, this runs in the forked
child before exec: raw system calls on buffers prepared in the parent, no
imports, no locks, no exceptions.

Some facts that shape it:

- After ``unshare(CLONE_NEWPID)`` (and ``CLONE_NEWTIME``) only the caller's
  *children* enter the new namespaces.  So the launched child C forks the
  init I, which is pid 1 inside; I makes the sandbox's mounts (its procfs
  first: a user namespace may mount one only while a full procfs is in
  sight, so before a private root detaches the host's) and forks the
  command P (pid 2), which finishes the confinement and execs.  C stays
  outside: it is what the launcher knows, waits for and signals.
- pid 1 ignores every signal sent from inside its namespace that it has no
  handler for, SIGKILL included; from outside, only SIGKILL and SIGSTOP are
  forced.  So I cannot die of the command's signal: it hands the command's
  wait status to C over a pipe, and C re-raises the signal on itself (after
  resetting its disposition), so the launcher sees the same status as
  without a pid namespace (a signal death stays a negative returncode).
- When pid 1 exits, the kernel kills every other process of the namespace
  and reaps them before pid 1 becomes a zombie: once C has waited for I,
  nothing of the sandbox is left.  Killing C kills I (PDEATHSIG), which
  ends the namespace; the launcher's tree kill finds I and P beneath C too.
- C and I block the signals they forward (and SIGCHLD) and take them with
  ``rt_sigtimedwait``: no handler runs, and nothing is lost between fork and
  the wait loop.  P restores the mask before exec.
- C drops its capabilities and sets ``PR_SET_NO_NEW_PRIVS`` once I exists.
- C and I never return to the launcher's preexec code: right after forking
  they close every descriptor they do not own (``close_range``), because the
  launcher reads its exec-error pipe until EOF.
- I moves into a process group of its own and P into another, so a signal
  for C's group reaches C alone; C forwards it to I, and I to P's group.
- I is as confined as its job allows once P exists: not dumpable (so P
  can neither ptrace it nor see it in a ``hidepid=4`` /proc), no
  capabilities, ``PR_SET_NO_NEW_PRIVS``, a Landlock domain that handles
  every filesystem and TCP right and grants none, and the sandbox's own
  seccomp filter.  Its Landlock domain does not scope signals (I must signal
  P, whose domain is not beneath I's); P's does, so P cannot signal I.
  All of it is applied after the fork, because P inherits what I has at
  that moment and still has to exec.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

from stockade.kernel import _ffi
from stockade.kernel.landlock import LANDLOCK_RULE_PATH_BENEATH, PathBeneathAttr, RulesetAttr

if TYPE_CHECKING:
    from stockade.launch.child import ChildSetup

SYS_read = 0
SYS_write = 1
SYS_close = 3
SYS_poll = 7
SYS_rt_sigaction = 13
SYS_ioctl = 16
SYS_rt_sigprocmask = 14
SYS_getpid = 39
SYS_wait4 = 61
SYS_kill = 62
SYS_setpgid = 109
SYS_capset = 126
SYS_rt_sigtimedwait = 128
SYS_pipe2 = 293
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_move_mount = 429
SYS_pidfd_open = 434
SYS_close_range = 436

TIOCSPGRP = 0x5410
SIG_BLOCK = 0
SIG_UNBLOCK = 1
SIG_SETMASK = 2
SIGKILL = 9
SIGCHLD = 17
WNOHANG = 1
POLLIN = 1
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
FSOPEN_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
SECCOMP_SET_MODE_FILTER = 1
#: The kernel's sigset_t is 64 bits on x86_64.
SIGSET_SIZE = 8

#: Never forwarded: SIGKILL and SIGSTOP cannot be caught, SIGCHLD is the
#: init's own business, and the synchronous faults are about the process
#: that takes them; 32 and 33 belong to the C library's threads.
NOT_FORWARDED = frozenset({4, 5, 7, 8, 9, 11, 17, 19, 31, 32, 33})
#: Signals whose default action is not to terminate: a status never says a
#: process died of one, and C must not raise one on itself.
NOT_FATAL = frozenset({17, 18, 19, 20, 21, 22, 23, 28})
FORWARDED_MASK = sum(1 << (sig - 1) for sig in range(1, 65) if sig not in NOT_FORWARDED)

# Step numbers of stockade.launch.child.STEP_NAMES, defined here because
# that module imports this one.
STEP_PID_INIT = 33
STEP_PROC = 34


class _PollFd(ctypes.Structure):
    """struct pollfd { int fd; short events; short revents; };"""

    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


class PidNamespaceInit:
    """The fork into a new pid namespace, prepared in the parent.

    ``proc`` mounts a private procfs at ``/proc`` from inside the namespace
    (``hidepid=4``, plus ``subset=pid`` with ``proc_subset_pid``);
    ``proc_rights`` are the Landlock rights the policy grants on ``/proc``,
    given again on the new mount; ``init_landlock`` is the ruleset the init
    confines itself with: ``(handled fs, handled net, scopes, attr size)``.
    """

    def __init__(
        self,
        *,
        proc: bool,
        proc_subset_pid: bool,
        proc_rights: int,
        init_landlock: tuple[int, int, int, int] | None,
    ) -> None:
        self._wait_set = ctypes.c_uint64(FORWARDED_MASK | (1 << (SIGCHLD - 1)))
        self._old_set = ctypes.c_uint64(0)
        self._one_set = ctypes.c_uint64(0)
        self._status = ctypes.c_int(0)
        self._pgid = ctypes.c_int(0)
        self._word = ctypes.create_string_buffer(4)
        self._pipe = (ctypes.c_int * 2)(-1, -1)
        self._pollfd = _PollFd(-1, POLLIN, 0)
        self._pidfd = -1
        self._dfl_action = ctypes.create_string_buffer(32)  # struct kernel_sigaction, SIG_DFL
        self._fork = _ffi.libc.fork
        self._fork.restype = ctypes.c_int
        self._proc = proc
        self._subset = proc_subset_pid
        self._proc_rule = PathBeneathAttr(proc_rights, -1)
        self._init_landlock: tuple[RulesetAttr, int] | None = None
        if init_landlock is not None:
            fs, net, scoped, size = init_landlock
            self._init_landlock = (RulesetAttr(fs, net, scoped), size)

    # -- C: the launched child, outside --------------------------------------

    def start(self, s: ChildSetup) -> None:
        """Called by C once its namespaces are set up.  Returns only in P,
        the command, inside the namespace; C and I never return."""
        c_long = ctypes.c_long
        byref = ctypes.byref
        s._sys(STEP_PID_INIT, SYS_rt_sigprocmask, c_long(SIG_BLOCK), byref(self._wait_set),
               byref(self._old_set), c_long(SIGSET_SIZE))  # fmt: skip
        s._sys(STEP_PID_INIT, SYS_pipe2, self._pipe, c_long(O_CLOEXEC | O_NONBLOCK))
        # The init checks through this that C still lives once its own
        # parent-death signal is armed (getppid() says 0 across the border).
        pid = s._syscall(c_long(SYS_getpid))
        self._pidfd = s._sys(STEP_PID_INIT, SYS_pidfd_open, c_long(pid), c_long(0))
        child = self._fork()
        if child == -1:
            s._fail(STEP_PID_INIT, s._get_errno())
        if child > 0:
            self._outer(s, child)
        self._init(s)

    def _close_all_but(self, s: ChildSetup, keep: int) -> None:
        c_long = ctypes.c_long
        if keep > 0:
            s._syscall(c_long(SYS_close_range), c_long(0), c_long(keep - 1), c_long(0))
        s._syscall(c_long(SYS_close_range), c_long(keep + 1), c_long(0xFFFFFFFF), c_long(0))

    def _outer(self, s: ChildSetup, init_pid: int) -> None:
        c_long = ctypes.c_long
        byref = ctypes.byref
        syscall = s._syscall
        status_fd = self._pipe[0]
        # C only waits, forwards and mirrors: it needs no capability (it
        # has every one in a new user namespace).
        if (
            s._syscall(c_long(SYS_capset), byref(s._cap_header), byref(s._cap_data)) == -1
            or s._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1
        ):
            err = s._get_errno()
            syscall(c_long(SYS_kill), c_long(init_pid), c_long(SIGKILL))
            s._fail(STEP_PID_INIT, err)
        self._close_all_but(s, status_fd)
        while True:
            sig = syscall(c_long(SYS_rt_sigtimedwait), byref(self._wait_set), None, None,
                          c_long(SIGSET_SIZE))  # fmt: skip
            if sig == SIGCHLD:
                got = syscall(c_long(SYS_wait4), c_long(init_pid), byref(self._status),
                              c_long(WNOHANG), None)  # fmt: skip
                if got == init_pid:
                    break
            elif sig > 0:
                syscall(c_long(SYS_kill), c_long(init_pid), c_long(sig))
        # The command's own status, as the init saw it; the init's when it
        # died without saying (killed from outside).
        status = self._status.value
        if syscall(c_long(SYS_read), c_long(status_fd), self._word, c_long(4)) == 4:
            status = int.from_bytes(self._word.raw, "little")
        self._mirror(s, status)

    def _mirror(self, s: ChildSetup, status: int) -> None:
        c_long = ctypes.c_long
        sig = status & 0x7F
        if sig == 0:
            os._exit((status >> 8) & 0xFF)
        if sig not in NOT_FATAL:
            # Not dumpable: a re-raised SIGSEGV or SIGQUIT must not dump
            # this process's core (a piped core_pattern ignores RLIMIT_CORE).
            s._prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            s._syscall(c_long(SYS_rt_sigaction), c_long(sig), self._dfl_action, None,
                       c_long(SIGSET_SIZE))  # fmt: skip
            self._one_set.value = 1 << (sig - 1)
            s._syscall(c_long(SYS_rt_sigprocmask), c_long(SIG_UNBLOCK),
                       ctypes.byref(self._one_set), None, c_long(SIGSET_SIZE))  # fmt: skip
            s._syscall(c_long(SYS_kill), c_long(s._syscall(c_long(SYS_getpid))), c_long(sig))
        os._exit(128 + sig)

    # -- I: the init, pid 1 ---------------------------------------------------

    def _init(self, s: ChildSetup) -> None:
        c_long = ctypes.c_long
        syscall = s._syscall
        s._pr(STEP_PID_INIT, PR_SET_PDEATHSIG, SIGKILL)
        self._pollfd.fd = self._pidfd
        if syscall(c_long(SYS_poll), ctypes.byref(self._pollfd), c_long(1), c_long(0)) != 0:
            s._fail(STEP_PID_INIT, 3)  # ESRCH: C died before the prctl
        syscall(c_long(SYS_close), c_long(self._pidfd))
        s._sys(STEP_PID_INIT, SYS_setpgid, c_long(0), c_long(0))
        # The kernel lets a user namespace mount a procfs only while a full
        # one is in sight of its mount namespace: make it before the mounts
        # (a private root detaches the host's), attach it after them.
        proc = self._make_proc(s) if self._proc else -1
        s._mount_all()
        if proc >= 0:
            self._attach_proc(s, proc)
        s._after_proc()
        command = self._fork()
        if command == -1:
            s._fail(STEP_PID_INIT, s._get_errno())
        if command == 0:
            self._command(s)
            return
        self._confine_init(s, command)
        self._close_all_but(s, self._pipe[1])
        self._reap(s, command)

    def _make_proc(self, s: ChildSetup) -> int:
        """A procfs of this namespace (hidepid=4, subset=pid when asked), as
        a detached mount, with the policy's /proc rights on it."""
        c_long = ctypes.c_long
        step = STEP_PROC
        fs = s._sys(step, SYS_fsopen, b"proc", c_long(FSOPEN_CLOEXEC))
        s._sys(step, SYS_fsconfig, c_long(fs), c_long(FSCONFIG_SET_STRING), b"hidepid", b"4",
               c_long(0))  # fmt: skip
        if self._subset:
            s._sys(step, SYS_fsconfig, c_long(fs), c_long(FSCONFIG_SET_STRING), b"subset",
                   b"pid", c_long(0))  # fmt: skip
        s._sys(step, SYS_fsconfig, c_long(fs), c_long(FSCONFIG_CMD_CREATE), None, None, c_long(0))
        mnt = s._sys(step, SYS_fsmount, c_long(fs), c_long(FSMOUNT_CLOEXEC),
                     c_long(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC))  # fmt: skip
        s._syscall(c_long(SYS_close), c_long(fs))
        if s._landlock_fd is not None and self._proc_rule.allowed_access:
            # The policy's grant on /proc names the host's procfs inode; the
            # new one is another inode (and, under a private root, not even
            # beneath it).
            self._proc_rule.parent_fd = mnt
            s._sys(step, _ffi.SYS_landlock_add_rule, c_long(s._landlock_fd),
                   c_long(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(self._proc_rule),
                   c_long(0))  # fmt: skip
        return mnt

    def _attach_proc(self, s: ChildSetup, mnt: int) -> None:
        """Over ``/proc`` (of the private root, if any): the only place a
        procfs is ever mounted, reached without following a symlink."""
        c_long = ctypes.c_long
        dst = s._open_nofollow(STEP_PROC, b"/proc", 0)
        s._sys(STEP_PROC, SYS_move_mount, c_long(mnt), b"", c_long(dst), b"",
               c_long(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH))  # fmt: skip
        s._syscall(c_long(SYS_close), c_long(mnt))
        s._syscall(c_long(SYS_close), c_long(dst))

    def _confine_init(self, s: ChildSetup, command: int) -> None:
        """Confine I once P exists.  A failure kills P (and so ends the
        namespace) after reporting the step: the error pipe is still open."""
        c_long = ctypes.c_long
        byref = ctypes.byref
        ok = s._prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != -1
        ok = ok and s._syscall(c_long(SYS_capset), byref(s._cap_header),
                               byref(s._cap_data)) != -1  # fmt: skip
        ok = ok and s._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != -1
        if ok and self._init_landlock is not None:
            attr, size = self._init_landlock
            fd = s._syscall(c_long(_ffi.SYS_landlock_create_ruleset), byref(attr), c_long(size),
                            c_long(0))  # fmt: skip
            ok = fd >= 0 and s._syscall(c_long(_ffi.SYS_landlock_restrict_self), c_long(fd),
                                        c_long(0)) != -1  # fmt: skip
            if fd >= 0:
                s._syscall(c_long(SYS_close), c_long(fd))
        if ok and s._filter is not None:
            ok = s._syscall(c_long(_ffi.SYS_seccomp), c_long(SECCOMP_SET_MODE_FILTER),
                            c_long(s._filter.flags), s._filter.fprog_ref) != -1  # fmt: skip
        if not ok:
            err = s._get_errno()
            s._syscall(c_long(SYS_kill), c_long(command), c_long(SIGKILL))
            s._fail(STEP_PID_INIT, err)

    def _reap(self, s: ChildSetup, command: int) -> None:
        c_long = ctypes.c_long
        byref = ctypes.byref
        syscall = s._syscall
        while True:
            sig = syscall(c_long(SYS_rt_sigtimedwait), byref(self._wait_set), None, None,
                          c_long(SIGSET_SIZE))  # fmt: skip
            if sig == SIGCHLD:
                # Every child: the command, and the orphans the kernel
                # re-parents to pid 1.
                done = False
                while True:
                    got = syscall(c_long(SYS_wait4), c_long(-1), byref(self._status),
                                  c_long(WNOHANG), None)  # fmt: skip
                    if got <= 0:
                        break
                    if got == command:
                        done = True
                        status = self._status.value
                if done:
                    ctypes.memmove(self._word, status.to_bytes(4, "little"), 4)
                    syscall(c_long(SYS_write), c_long(self._pipe[1]), self._word, c_long(4))
                    sig = status & 0x7F
                    os._exit((status >> 8) & 0xFF if sig == 0 else 128 + sig)
            elif sig > 0 and syscall(c_long(SYS_kill), c_long(-command), c_long(sig)) == -1:
                # The command left its process group: signal it alone.
                syscall(c_long(SYS_kill), c_long(command), c_long(sig))

    # -- P: the command, pid 2 --------------------------------------------------

    def _command(self, s: ChildSetup) -> None:
        c_long = ctypes.c_long
        s._syscall(c_long(SYS_close), c_long(self._pipe[0]))
        s._syscall(c_long(SYS_close), c_long(self._pipe[1]))
        s._sys(STEP_PID_INIT, SYS_setpgid, c_long(0), c_long(0))
        if s._controlling_tty:
            # The terminal's foreground group is C's: the command's own group
            # takes it over.  SIGTTOU is still blocked, which is what lets a
            # background group do that.
            self._pgid.value = s._syscall(c_long(SYS_getpid))
            s._sys(STEP_PID_INIT, SYS_ioctl, c_long(0), c_long(TIOCSPGRP), ctypes.byref(self._pgid))
        s._sys(STEP_PID_INIT, SYS_rt_sigprocmask, c_long(SIG_SETMASK), ctypes.byref(self._old_set),
               None, c_long(SIGSET_SIZE))  # fmt: skip
