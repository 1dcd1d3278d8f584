"""The seccomp-bpf program every sandbox runs under.

Layout (each block is short, so no jump needs more than 255 instructions):

1. ``arch != AUDIT_ARCH_X86_64`` -> kill the process: an ``int 0x80`` (i386)
   call or any foreign ABI never reaches the kernel's handler.
2. ``nr >= X32_SYSCALL_BIT`` -> kill: x32 calls reuse 64-bit handlers under
   other numbers and would slip past a list of 64-bit numbers.
3. One block per system call that has a verdict: a plain ``JEQ nr`` followed
   by ``RET``, or a block of argument checks on the low 32 bits.
4. Everything else is allowed; Landlock and the namespaces do the rest.

Denied calls answer EPERM (the answer a process without privilege gets)
except ``clone3``, which answers ENOSYS so that libc falls back to
``clone``, whose flags the filter can see.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

from stockade._record import record
from stockade.kernel import syscalls
from stockade.kernel.bpf import BPF_JGE as JGE
from stockade.kernel.bpf import BPF_JSET, OFF_ARCH, OFF_NR, Program, arg_lo
from stockade.kernel.seccomp import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_KILL_PROCESS,
    ret_errno,
)

#: Denied outright: the mount family and new mount API, root changes,
#: tracing and cross-process memory access, kernel extension points, keys,
#: io_uring (its operations bypass this filter), handles that bypass path
#: checks, system administration, and namespace changes.
DENY_EPERM: tuple[str, ...] = (
    # mounts and roots
    "mount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "mount_setattr", "open_tree_attr",
    # tracing and other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # kernel extension points
    "bpf", "perf_event_open", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module",
    # keyrings
    "keyctl", "add_key", "request_key",
    # memory tricks used by exploits
    "userfaultfd",
    # io_uring
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # file handles bypass path resolution
    "open_by_handle_at", "name_to_handle_at",
    # administration
    "swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd",
    "syslog", "vhangup", "iopl", "ioperm", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "lookup_dcookie", "uselib", "fanotify_init", "nfsservctl",
    # namespaces
    "setns", "unshare",
)  # fmt: skip

#: IPC objects named by key or id, reachable by uid alone (Landlock does not
#: mediate them): another process's SysV shared memory could be attached.
#: Refused unless the sandbox has an IPC namespace of its own.
HOST_IPC: tuple[str, ...] = (
    "shmget", "shmat", "shmctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)  # fmt: skip

#: System calls that change a file's mode.  Landlock up to ABI 7 has no
#: right for them: the kernel asks only for ownership, so a sandbox could
#: change the mode of any file its uid owns, wherever it is.  For a root
#: caller that is every system file (``chmod 666 /etc/shadow``, or a setuid
#: bit, needs no capability).  Root-run sandboxes refuse them while writes
#: are restricted; allowing them exactly (in write trees) is the
#: supervisor's work.  The rest of the metadata family is left alone: with
#: no capabilities, chown can only keep the owner, the security.* and
#: trusted.* xattrs are refused by the kernel, and times are no privilege.
MODE_CHANGES: tuple[str, ...] = ("chmod", "fchmod", "fchmodat", "fchmodat2")

CLONE_NS_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)

CLONE_VM = 0x00000100
CLONE_FILES = 0x00000400
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
#: ioctls that inject input into or take over a terminal.
DENY_IOCTLS = (TIOCSTI, TIOCLINUX)

PR_SET_DUMPABLE = 4
PR_SET_SECUREBITS = 28
PR_SET_MM = 35
PR_SET_PTRACER = 0x59616D61
#: prctl options that rewrite the process image's identity, open it to
#: tracing, or change securebits.  PR_SET_DUMPABLE is denied only when it
#: would make the process dumpable again.
DENY_PRCTL = (PR_SET_MM, PR_SET_PTRACER, PR_SET_SECUREBITS)

#: personality(2) values that are harmless: PER_LINUX, PER_LINUX32, their
#: UNAME26 / ADDR_NO_RANDOMIZE variants (what ``setarch -R`` asks for), and
#: the 0xffffffff query.  READ_IMPLIES_EXEC, MMAP_PAGE_ZERO and the other
#: flags weaken the process's own memory protections and are refused.
PERSONALITY_ALLOWED = (
    0x00000000,
    0x00000008,
    0x00020000,
    0x00040000,
    0x00040008,
    0x00060000,
    0xFFFFFFFF,
)

#: Calls whose args[0] is a pid: only 0 (the caller) is allowed.
SELF_ONLY_ARG0 = (
    "prlimit64",
    "sched_setaffinity",
    "sched_setscheduler",
    "sched_setparam",
    "sched_setattr",
)
#: setpriority(which, who) and ioprio_set(which, who): ``who`` must be 0,
#: and ``which`` must not be the per-user value (PRIO_USER, IOPRIO_WHO_USER),
#: which reaches every process of the user.
SELF_ONLY_WHICH_WHO = {"setpriority": 2, "ioprio_set": 3}

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
SOCK_SEQPACKET = 5
SOCK_TYPE_MASK = 0xF
NETLINK_SOCK_DIAG = 4
IPPROTO_TCP = 6
MSG_FASTOPEN = 0x20000000
#: The flags argument of each sending call, for MSG_FASTOPEN.
SEND_FLAGS_ARG = {"sendto": 3, "sendmsg": 2, "sendmmsg": 3}
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58


@record(frozen=True)
class FilterSpec:
    """The inputs that change the program from one policy to another."""

    #: inet datagram sockets (UDP, ping) may be created.
    allow_udp: bool = False
    #: inet stream sockets are refused outright (no Landlock ABI 4 here).
    deny_tcp: bool = False
    #: Landlock restricts TCP connect or bind: close the paths around it.
    #: TCP Fast Open (``MSG_FASTOPEN`` on sendto/sendmsg/sendmmsg) connects
    #: without the connect hook, and MPTCP sockets (protocol 262) are not
    #: TCP to Landlock; inet stream sockets may then only be plain TCP.
    tcp_restricted: bool = False
    #: The sandbox shares the host's IPC namespace: SysV IPC and POSIX
    #: message queues, which only uid checks guard, are refused.
    deny_ipc: bool = True
    #: Refuse mode changes, which Landlock (ABI 7) does not mediate (see
    #: MODE_CHANGES).
    deny_chmod: bool = False
    #: Refuse Linux AIO contexts (ENOSYS, as on a kernel built without
    #: them): a supervisor runs beside the sandbox, and a direct read that
    #: completes after io_submit returned could rewrite memory the
    #: supervisor decided on while a call waits (supervisor/net.py).
    deny_aio: bool = False


def build_program(spec: FilterSpec) -> bytes:
    """Assemble the filter for *spec*.

    The system calls with a verdict are searched as a balanced binary tree
    on their number: the kernel emulates the filter once per system call
    number when it is loaded (to cache the calls it always allows), so a
    linear chain would cost that emulation hundreds of steps per number at
    every spawn.
    """
    p = Program()
    kill = SECCOMP_RET_KILL_PROCESS
    allow = SECCOMP_RET_ALLOW
    eperm = ret_errno(errno.EPERM)
    eacces = ret_errno(errno.EACCES)

    p.load(OFF_ARCH)
    arch_ok = p.new_label("arch_ok")
    p.jeq(syscalls.AUDIT_ARCH, arch_ok, 0)
    p.ret(kill)
    p.label(arch_ok)
    p.load(OFF_NR)
    not_x32 = p.new_label("not_x32")
    p.jump(JGE, syscalls.X32_SYSCALL_BIT, 0, not_x32)
    p.ret(kill)
    p.label(not_x32)

    verdicts: dict[int, Callable[[], None]] = {}
    for name in DENY_EPERM:
        verdicts[syscalls.nr(name)] = functools.partial(p.ret, eperm)
    verdicts[syscalls.nr("clone3")] = functools.partial(p.ret, ret_errno(errno.ENOSYS))
    if spec.deny_aio:
        verdicts[syscalls.nr("io_setup")] = functools.partial(p.ret, ret_errno(errno.ENOSYS))
    if spec.deny_chmod:
        for name in MODE_CHANGES:
            verdicts[syscalls.nr(name)] = functools.partial(p.ret, eperm)
    if spec.deny_ipc:
        for name in HOST_IPC:
            verdicts[syscalls.nr(name)] = functools.partial(p.ret, eperm)
    # clone: refuse any namespace flag (flags are args[0] on x86_64), and
    # a descriptor table shared outside one thread group (see _clone).
    verdicts[syscalls.nr("clone")] = lambda: _clone(p, eperm, allow)
    verdicts[syscalls.nr("ioctl")] = lambda: _one_of(p, 1, DENY_IOCTLS, eperm, allow)
    verdicts[syscalls.nr("prctl")] = lambda: _prctl(p, eperm, allow)
    verdicts[syscalls.nr("personality")] = lambda: _one_of(p, 0, PERSONALITY_ALLOWED, allow, eperm)
    verdicts[syscalls.nr("socket")] = lambda: _socket(p, spec, eacces, allow)
    verdicts[syscalls.nr("socketpair")] = lambda: _socketpair(p, eacces, allow)
    if spec.tcp_restricted:
        for name, flags_arg in SEND_FLAGS_ARG.items():
            verdicts[syscalls.nr(name)] = functools.partial(
                _any_bit, p, flags_arg, (MSG_FASTOPEN,), eacces, allow
            )
    # Calls that act on another process by pid, where the kernel asks only
    # for a matching uid (and Landlock has no hook): only the caller itself
    # (pid 0) may be named, so that no host process can be reniced, pinned,
    # or have its limits changed.
    for name in SELF_ONLY_ARG0:
        verdicts[syscalls.nr(name)] = functools.partial(_one_of, p, 0, (0,), allow, eperm)
    for name, per_user in SELF_ONLY_WHICH_WHO.items():
        verdicts[syscalls.nr(name)] = functools.partial(_which_who, p, per_user, eperm, allow)
    _tree(p, sorted(verdicts.items()), allow)
    return p.assemble()


def _tree(p: Program, entries: list[tuple[int, Callable[[], None]]], default: int) -> None:
    """Binary search on the system call number in the accumulator.

    Every verdict ends in a RET, so the accumulator still holds ``nr``
    wherever a comparison falls through.
    """
    if len(entries) <= 3:
        for nr, emit in entries:
            skip = p.new_label("skip")
            p.jeq(nr, 0, skip)
            emit()
            p.label(skip)
        p.ret(default)
        return
    mid = len(entries) // 2
    right = p.new_label("right")
    p.jump(JGE, entries[mid][0], 0, 1)
    p.ja(right)
    _tree(p, entries[:mid], default)
    p.label(right)
    _tree(p, entries[mid:], default)


def _one_of(p: Program, arg: int, values: tuple[int, ...], hit: int, miss: int) -> None:
    """RET *hit* when the low word of args[arg] is one of *values*, else *miss*."""
    p.load(arg_lo(arg))
    yes = p.new_label("yes")
    for value in values:
        p.jeq(value, yes, 0)
    p.ret(miss)
    p.label(yes)
    p.ret(hit)


def _any_bit(p: Program, arg: int, bits: tuple[int, ...], hit: int, miss: int) -> None:
    """RET *hit* when any of *bits* is set in the low word of args[arg]."""
    p.load(arg_lo(arg))
    mask = 0
    for bit in bits:
        mask |= bit
    yes = p.new_label("yes")
    p.jump(BPF_JSET, mask, yes, 0)
    p.ret(miss)
    p.label(yes)
    p.ret(hit)


def _clone(p: Program, deny: int, allow: int) -> None:
    """clone(2): no CLONE_NEW* flag; CLONE_FILES only with CLONE_THREAD;
    CLONE_VM without CLONE_THREAD only as vfork does it (CLONE_VFORK, and
    not CLONE_PARENT).

    exec(2) gives every process a descriptor table of its own, so with
    this only the threads of one process ever share one, and a process
    with one thread, stopped in a system call, has a table nobody else
    can change: the supervisor relies on it to let an inet connect run in
    the kernel (supervisor/net.py).  Likewise memory: another process
    shares a one-thread caller's address space only while that caller is
    a vfork child of it (the vforking thread waits, its other threads
    run), which the supervisor sees by comparing the caller with its
    parent (kcmp): it relies on it to let an abstract UNIX address be read
    again by the kernel.  Threads (pthread_create, Go, the JVM), fork,
    vfork and posix_spawn never ask for CLONE_FILES alone, nor for
    CLONE_VM without CLONE_VFORK or with CLONE_PARENT.
    """
    p.load(arg_lo(0))
    ns = 0
    for bit in CLONE_NS_FLAGS:
        ns |= bit
    check = p.new_label("check")
    p.jump(BPF_JSET, ns | CLONE_FILES | CLONE_VM, check, 0)
    p.ret(allow)
    p.label(check)
    no = p.new_label("no")
    yes = p.new_label("yes")
    p.jump(BPF_JSET, ns, no, 0)
    p.jump(BPF_JSET, CLONE_THREAD, yes, 0)
    p.jump(BPF_JSET, CLONE_FILES, no, 0)
    p.jump(BPF_JSET, CLONE_VFORK, 0, no)
    p.jump(BPF_JSET, CLONE_PARENT, no, 0)
    p.label(yes)
    p.ret(allow)
    p.label(no)
    p.ret(deny)


def _which_who(p: Program, per_user: int, deny: int, allow: int) -> None:
    p.load(arg_lo(0))
    no = p.new_label("no")
    p.jeq(per_user, no, 0)
    p.load(arg_lo(1))
    p.jeq(0, 0, no)
    p.ret(allow)
    p.label(no)
    p.ret(deny)


def _prctl(p: Program, deny: int, allow: int) -> None:
    p.load(arg_lo(0))
    no = p.new_label("no")
    for option in DENY_PRCTL:
        p.jeq(option, no, 0)
    dumpable = p.new_label("dumpable")
    p.jeq(PR_SET_DUMPABLE, dumpable, 0)
    p.ret(allow)
    p.label(dumpable)
    p.load(arg_lo(1))
    p.jeq(0, 0, no)  # making itself non-dumpable is always fine
    p.ret(allow)
    p.label(no)
    p.ret(deny)


def _socket(p: Program, spec: FilterSpec, deny: int, allow: int) -> None:
    """socket(domain, type, protocol): UNIX always; inet per policy; netlink
    except sock_diag (it lists every socket of the host); nothing else."""
    inet = p.new_label("inet")
    netlink = p.new_label("netlink")
    p.load(arg_lo(0))
    unix = p.new_label("unix")
    p.jeq(AF_UNIX, unix, 0)
    p.jeq(AF_INET, inet, 0)
    p.jeq(AF_INET6, inet, 0)
    p.jeq(AF_NETLINK, netlink, 0)
    p.ret(ret_errno(errno.EAFNOSUPPORT))
    p.label(unix)
    p.ret(allow)

    p.label(inet)
    p.load(arg_lo(1))
    p.and_(SOCK_TYPE_MASK)
    stream = p.new_label("stream")
    dgram = p.new_label("dgram")
    p.jeq(SOCK_STREAM, stream, 0)
    p.jeq(SOCK_DGRAM, dgram, 0)
    p.ret(deny)  # raw, packet, seqpacket (SCTP) and anything newer
    p.label(stream)
    if spec.deny_tcp:
        p.ret(deny)
    elif spec.tcp_restricted:
        p.load(arg_lo(2))
        tcp = p.new_label("tcp")
        p.jeq(0, tcp, 0)
        p.jeq(IPPROTO_TCP, tcp, 0)
        p.ret(deny)  # MPTCP and anything else Landlock does not see as TCP
        p.label(tcp)
        p.ret(allow)
    else:
        p.ret(allow)
    p.label(dgram)
    p.ret(allow if spec.allow_udp else deny)

    p.label(netlink)
    p.load(arg_lo(2))
    no = p.new_label("no")
    p.jeq(NETLINK_SOCK_DIAG, no, 0)
    p.ret(allow)
    p.label(no)
    p.ret(deny)


def _socketpair(p: Program, deny: int, allow: int) -> None:
    p.load(arg_lo(0))
    ok = p.new_label("ok")
    p.jeq(AF_UNIX, ok, 0)
    p.ret(deny)
    p.label(ok)
    p.ret(allow)
