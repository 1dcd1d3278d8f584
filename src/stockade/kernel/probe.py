"""What this kernel supports: one cached probe per feature.

Some facts about probing kernel features:

- Each probe makes the smallest real call that exercises the feature and
  reads the errno.  ENOSYS means the system call is not in this kernel (or an
  outer seccomp policy hides it, as container runtimes do for calls they do
  not know); EINVAL or EOPNOTSUPP means the call exists but this argument or
  flag is unknown or the feature is switched off; EPERM or EACCES means
  something outside us (a sysctl, an LSM, an outer sandbox) forbids it.
  Kernel versions only decide what a message suggests, never the answer.
- ``landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)``
  returns the Landlock ABI; EOPNOTSUPP means Landlock is built but not in
  the ``lsm=`` list the kernel booted with (landlock(7)).
- ``seccomp(SECCOMP_SET_MODE_FILTER, flags, NULL)`` validates *flags* before
  it reads the program, so a known flag gives EFAULT and an unknown one
  EINVAL, with nothing installed.
- Anything that changes the calling process for good (a seccomp filter, a
  new user namespace) is tried in a forked child, which writes one small
  record of errnos to a CLOEXEC pipe and ``_exit``s; the parent reaps it.
  The child uses only objects built before the fork.
- Every probe closes what it opens and is cached (``functools.cache``):
  the kernel does not change under a running process, and ``stockade
  check`` and the launcher ask the same questions.

Man pages: landlock(7), seccomp(2), seccomp_unotify(2), user_namespaces(7),
pidfd_open(2), pidfd_getfd(2), close_range(2), fsopen(2), prctl(2),
seccomp_version(3).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import errno_name
from stockade.kernel import _ffi
from stockade.kernel.landlock import LANDLOCK_CREATE_RULESET_VERSION
from stockade.kernel.seccomp import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_GET_ACTION_AVAIL,
    SECCOMP_GET_NOTIF_SIZES,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_KILL_THREAD,
    SECCOMP_RET_LOG,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_TRAP,
    SECCOMP_RET_USER_NOTIF,
    SECCOMP_SET_MODE_FILTER,
)

__all__ = [
    "LANDLOCK_LEVELS",
    "Feature",
    "LandlockLevel",
    "all_features",
    "close_range",
    "kernel_version",
    "landlock_abi",
    "landlock_status",
    "new_mount_api",
    "no_new_privs",
    "overlayfs",
    "pidfd_getfd",
    "pidfd_open",
    "seccomp_actions",
    "seccomp_filter",
    "seccomp_notif_sizes",
    "seccomp_notify_flags",
    "seccomp_user_notif",
    "usable",
    "user_namespaces",
]

# include/uapi/linux/seccomp.h constants live in kernel/seccomp.py.
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1 << 0
# SECCOMP_IOW(3, struct seccomp_notif_addfd) and SECCOMP_IOW(4, __u64):
# _IOW('!', nr, size) = 1 << 30 | size << 16 | ord('!') << 8 | nr.
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104

#: ``SECCOMP_RET_*`` action values, by the names seccomp(2) uses.
SECCOMP_ACTIONS: dict[str, int] = {
    "kill_process": SECCOMP_RET_KILL_PROCESS,
    "kill_thread": SECCOMP_RET_KILL_THREAD,
    "trap": SECCOMP_RET_TRAP,
    "errno": SECCOMP_RET_ERRNO,
    "user_notif": SECCOMP_RET_USER_NOTIF,
    "trace": SECCOMP_RET_TRACE,
    "log": SECCOMP_RET_LOG,
    "allow": SECCOMP_RET_ALLOW,
}

# include/uapi/linux/prctl.h, sched.h, close_range.h, filter.h
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
CLONE_NEWUSER = 0x10000000
CLOSE_RANGE_CLOEXEC = 1 << 2
BPF_RET = 0x06
BPF_K = 0x00

# Above any descriptor that can exist (fd numbers are ints capped by
# fs.nr_open), so close_range(_NO_FD, _NO_FD, ...) never closes anything.
_NO_FD = 0xFFFFFFFF
_NOT_REACHED = 255  # a step a forked child never got to


@dataclass(frozen=True)
class Feature:
    """One kernel or library feature and what its absence costs.

    ``detail`` says what the probe saw (with the errno name when it failed),
    ``needed_for`` which stockade options depend on it, ``how_to_get`` the
    kernel version, boot flag, sysctl or package that provides it.
    """

    name: str
    available: bool
    detail: str
    needed_for: str
    how_to_get: str


@dataclass(frozen=True)
class LandlockLevel:
    """What one Landlock ABI level adds, and the first kernel that has it."""

    abi: int
    kernel: tuple[int, int]
    adds: str
    needed_for: str


#: The Landlock ABI history (landlock(7), "Previous limitations").
LANDLOCK_LEVELS: tuple[LandlockLevel, ...] = (
    LandlockLevel(
        1,
        (5, 13),
        "filesystem: execute, read and write files, list dirs, create and remove",
        "-r, -w, -x and filesystem rules; stockade does not run without it",
    ),
    LandlockLevel(
        2,
        (5, 19),
        "REFER: renaming and linking files between directories",
        "mv and ln across directories inside the sandbox (refused outright without it)",
    ),
    LandlockLevel(
        3,
        (6, 2),
        "TRUNCATE: truncate(2) and O_TRUNC",
        "truncation checked in the kernel (otherwise by the supervisor)",
    ),
    LandlockLevel(
        4,
        (6, 7),
        "TCP bind and connect by port",
        "--net-allow *:PORTS and --net-bind in the kernel (otherwise by the supervisor)",
    ),
    LandlockLevel(
        5,
        (6, 10),
        "IOCTL_DEV: ioctl on device files",
        "the ioctl category on devices in the kernel (otherwise by the supervisor)",
    ),
    LandlockLevel(
        6,
        (6, 12),
        "scoping of abstract UNIX sockets and signals",
        "isolating abstract sockets and signals without --unshare net,pid",
    ),
    LandlockLevel(
        7,
        (6, 15),
        "audit logging flags (LANDLOCK_RESTRICT_SELF_LOG_*)",
        "kernel audit records of Landlock denials",
    ),
)


#: What each feature's absence costs (which stockade options stop working)
#: and how to get it.  One table so ``stockade check`` and error messages
#: agree.
_COSTS: dict[str, tuple[str, str]] = {
    "landlock": (
        "all filesystem confinement (-r, -w, -x, --deny) and kernel port rules; required",
        "Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK=y",
    ),
    "seccomp-bpf": (
        "every sandbox: syscall deny lists and the arch/x32 check; required",
        "Linux 4.14 or later built with CONFIG_SECCOMP_FILTER=y",
    ),
    "seccomp user_notif": (
        "the supervisor: --deny globs with exceptions, hostnames and CIDRs in --net-allow, "
        "rules changed at run time (--ipc, ctl), --log of denials, learn, on_event",
        "Linux 5.9 or later (listener 5.0, SECCOMP_IOCTL_NOTIF_ADDFD 5.9)",
    ),
    "seccomp WAIT_KILLABLE_RECV": (
        "signals cannot interrupt a system call the supervisor is already handling",
        "Linux 5.19 or later",
    ),
    "seccomp SYNC_WAKE_UP": (
        "lower supervisor round-trip latency (the waiter wakes on the same CPU)",
        "Linux 6.6 or later",
    ),
    "user namespaces": (
        "--unshare, --root, --bind, --tmpfs, --hostname, --no-net, and mount masks "
        "for --deny inside allowed trees (otherwise checked by the supervisor)",
        "a kernel built with CONFIG_USER_NS=y",
    ),
    "pidfd_open": (
        "race-free waiting for and killing the sandbox (--timeout, supervisor death)",
        "Linux 5.3 or later",
    ),
    "pidfd_getfd": (
        "taking the seccomp listener from the child, and supervised connect/bind "
        "on the sandbox's own socket (--net-allow HOST or CIDR)",
        "Linux 5.6 or later",
    ),
    "close_range": (
        "closing inherited descriptors before exec in one call (otherwise one close per fd)",
        "Linux 5.9 or later (CLOSE_RANGE_CLOEXEC 5.11)",
    ),
    "new mount API": (
        "--root, --bind and --tmpfs with detached mounts made read-only atomically",
        "Linux 5.2 or later",
    ),
    "overlayfs": (
        "a writable view of a read-only --root DIR (changes go to a scratch layer)",
        "a kernel built with CONFIG_OVERLAY_FS (or modprobe overlay); Linux 5.11 "
        "to mount it in a user namespace",
    ),
    "no_new_privs": (
        "Landlock and seccomp without root; required",
        "Linux 3.5 or later",
    ),
}


def _feature(name: str, available: bool, detail: str, how: str | None = None) -> Feature:
    """A Feature with its costs from ``_COSTS``; *how* overrides the advice."""
    needed, default_how = _COSTS[name]
    if how is None:
        how = "" if available else default_how
    return Feature(name, available, detail, needed, how)


# --------------------------------------------------------------------------
# kernel version and errno wording


@functools.cache
def kernel_version() -> tuple[int, int, int]:
    """The running kernel's version from uname(2): ``6.18.44-foo`` gives (6, 18, 44).

    Missing parts count as 0.  Used only to phrase advice: features are
    probed, never inferred from the version.
    """
    parts = re.findall(r"\d+", os.uname().release.split("-", 1)[0])[:3]
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return (nums[0], nums[1], nums[2])


def _kernel_has(major: int, minor: int) -> bool:
    return kernel_version()[:2] >= (major, minor)


def _err(err: int) -> str:
    if err == _NOT_REACHED:
        return "not tried (an earlier step failed)"
    return f"{errno_name(err)} ({os.strerror(err)})"


def _missing(call: str, err: int, since: tuple[int, int]) -> str:
    """Say why *call*, which Linux has had since *since*, failed with *err*."""
    version = f"Linux {since[0]}.{since[1]}"
    if err == errno.ENOSYS and _kernel_has(*since):
        # The kernel is new enough, so the call was compiled out or an outer
        # seccomp policy answers ENOSYS for calls it does not know.
        return f"{call}: ENOSYS although {version} has it: hidden by an outer sandbox?"
    if err == errno.ENOSYS:
        return f"{call}: ENOSYS, not in this kernel (needs {version})"
    if err in (errno.EPERM, errno.EACCES):
        return f"{call}: {errno_name(err)}, blocked by an outer sandbox or security policy"
    return f"{call}: {_err(err)}"


def _read_int(path: str) -> int | None:
    """An integer sysctl or /proc value, or None when absent or unreadable."""
    try:
        return int(Path(path).read_text().split()[0])
    except (FileNotFoundError, PermissionError, ValueError, IndexError):
        return None


def _call(nr: int, *args: object) -> tuple[int, int]:
    """``(result, 0)`` or ``(-1, errno)`` for a probing system call."""
    try:
        return (_ffi.syscall(nr, *args), 0)
    except OSError as err:
        return (-1, err.errno or 0)


# --------------------------------------------------------------------------
# forked trials


def _run_child(steps: int, child: Callable[[int, bytearray], None]) -> bytes:
    """Fork; run ``child(write_fd, record)`` there; return the child's record.

    The child fills *record*, one errno per step (0 = worked, 255 = not
    reached), and writes it to a CLOEXEC pipe; whatever happens it
    ``_exit``s, so it never returns into the caller's code.  The parent
    reads to EOF and reaps the child.  A child that died before writing
    gives a short record.
    """
    record = bytearray([_NOT_REACHED] * steps)
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        raise
    if pid == 0:  # pragma: no cover -- the child; its record is the coverage
        try:
            os.close(rfd)
            child(wfd, record)
        finally:
            try:
                os.write(wfd, record)
            finally:
                os._exit(0)
    os.close(wfd)
    chunks: list[bytes] = []
    try:
        while chunk := os.read(rfd, 64):
            chunks.append(chunk)
    finally:
        os.close(rfd)
        # ECHILD: SIGCHLD is ignored in this process, so the kernel reaped it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return b"".join(chunks)


def _step(record: bytes, step: int) -> int:
    return record[step] if len(record) > step else _NOT_REACHED


# --------------------------------------------------------------------------
# Landlock


@functools.cache
def _landlock_query() -> tuple[int, int]:
    return _call(_ffi.SYS_landlock_create_ruleset, None, 0, LANDLOCK_CREATE_RULESET_VERSION)


def landlock_abi() -> int | None:
    """The Landlock ABI version of this kernel, or None without Landlock.

    landlock(7), landlock_create_ruleset(2).  None when the call is ENOSYS
    (not built, or hidden) or EOPNOTSUPP (built, but not enabled at boot);
    ``landlock_status()`` says which.
    """
    abi, _ = _landlock_query()
    return abi if abi >= 1 else None


def _lsm_advice() -> str:
    current = ""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        # Keep the LSMs already running: lsm= replaces the whole list.
        current = Path("/sys/kernel/security/lsm").read_text().strip()
    if current:
        return f"add lsm=landlock,{current} to the kernel command line and reboot"
    return "add lsm=landlock (then the LSMs you use) to the kernel command line and reboot"


@functools.cache
def landlock_status() -> Feature:
    """Whether Landlock is usable, and if not, why (landlock(7)).

    Tells apart not built (ENOSYS), built but disabled at boot (EOPNOTSUPP:
    add ``lsm=landlock``) and blocked from outside (EPERM/EACCES).
    """
    abi, err = _landlock_query()
    if abi >= 1:
        return _feature("landlock", True, f"Landlock ABI {abi}")
    if err == errno.EOPNOTSUPP:
        return _feature(
            "landlock", False, "EOPNOTSUPP: built in, but disabled at boot", _lsm_advice()
        )
    return _feature("landlock", False, _missing("landlock_create_ruleset", err, (5, 13)))


# --------------------------------------------------------------------------
# seccomp


@functools.cache
def _seccomp_action_errnos() -> dict[str, int]:
    """seccomp(SECCOMP_GET_ACTION_AVAIL) for each action: 0 or the errno."""
    result: dict[str, int] = {}
    for name, value in SECCOMP_ACTIONS.items():
        action = ctypes.c_uint32(value)
        _, result[name] = _call(_ffi.SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action))
    return result


def seccomp_actions() -> dict[str, bool]:
    """Which ``SECCOMP_RET_*`` actions this kernel knows (seccomp(2)).

    Asked with ``seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &action)`` (Linux
    4.14): EOPNOTSUPP for an unknown action; before 4.14 the call itself is
    EINVAL (or ENOSYS) and every action reads as unavailable.  The answers
    are cached; each call returns a fresh dict, so callers may change it.
    """
    return {name: err == 0 for name, err in _seccomp_action_errnos().items()}


class _SeccompNotifSizes(ctypes.Structure):
    """``struct seccomp_notif_sizes { __u16 seccomp_notif;
    __u16 seccomp_notif_resp; __u16 seccomp_data; };``
    """

    _fields_ = [
        ("seccomp_notif", ctypes.c_uint16),
        ("seccomp_notif_resp", ctypes.c_uint16),
        ("seccomp_data", ctypes.c_uint16),
    ]


@functools.cache
def seccomp_notif_sizes() -> tuple[int, int, int] | None:
    """Sizes of struct seccomp_notif, seccomp_notif_resp and seccomp_data.

    From ``seccomp(SECCOMP_GET_NOTIF_SIZES, 0, &sizes)`` (seccomp(2),
    Linux 5.0); None when the kernel refuses it (ENOSYS, EINVAL).
    """
    sizes = _SeccompNotifSizes()
    _, err = _call(_ffi.SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes))
    if err:
        return None
    return (sizes.seccomp_notif, sizes.seccomp_notif_resp, sizes.seccomp_data)


class _SockFilter(ctypes.Structure):
    """``struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; };``"""

    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog { unsigned short len; struct sock_filter *filter; };``"""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _SeccompNotifAddfd(ctypes.Structure):
    """``struct seccomp_notif_addfd { __u64 id; __u32 flags; __u32 srcfd;
    __u32 newfd; __u32 newfd_flags; };``
    """

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


# Steps of the seccomp trial, in order: one errno slot each.
_SC_NNP, _SC_FILTER, _SC_LISTENER, _SC_ADDFD, _SC_SYNC = range(5)


@functools.cache
def _seccomp_trial() -> bytes:
    """Load real filters in a forked child; one errno per step (0 = worked).

    PR_SET_NO_NEW_PRIVS; an allow-all filter; a second one with
    SECCOMP_FILTER_FLAG_NEW_LISTENER; SECCOMP_IOCTL_NOTIF_ADDFD for a
    notification id that cannot exist (ENOENT when the ioctl is known,
    EINVAL when not); SECCOMP_IOCTL_NOTIF_SET_FLAGS with
    SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP.  The filters never notify.
    """
    insn = (_SockFilter * 1)(_SockFilter(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW))
    prog = _SockFprog(1, insn)
    prog_ref = ctypes.byref(prog)
    addfd = bytearray(bytes(_SeccompNotifAddfd()))
    srcfd_at = _SeccompNotifAddfd.srcfd.offset

    def child(wfd: int, record: bytearray) -> None:  # pragma: no cover -- forked child
        try:
            _ffi.prctl(PR_SET_NO_NEW_PRIVS, 1)
            record[_SC_NNP] = 0
            _ffi.syscall(_ffi.SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, prog_ref)
            record[_SC_FILTER] = 0
            flag = SECCOMP_FILTER_FLAG_NEW_LISTENER
            listener = _ffi.syscall(_ffi.SYS_seccomp, SECCOMP_SET_MODE_FILTER, flag, prog_ref)
            record[_SC_LISTENER] = 0
        except OSError as err:
            record[record.index(_NOT_REACHED)] = err.errno or 0
            return
        # srcfd must be open, or EBADF comes before the id lookup; the
        # pipe's write end is.
        addfd[srcfd_at : srcfd_at + 4] = wfd.to_bytes(4, "little")
        try:
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, addfd)
        except OSError as err:
            record[_SC_ADDFD] = 0 if err.errno == errno.ENOENT else (err.errno or 0)
        try:
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
            record[_SC_SYNC] = 0
        except OSError as err:
            record[_SC_SYNC] = err.errno or 0

    return _run_child(5, child)


@functools.cache
def _wait_killable_errno() -> int:
    # The flags are checked before the program is read, so a known flag
    # gives EFAULT for the NULL program and nothing is installed.
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    ret, err = _call(_ffi.SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, None)
    return err if ret == -1 else 0


def seccomp_notify_flags() -> dict[str, bool]:
    """Optional user-notification features this kernel accepts (seccomp_unotify(2)).

    ``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`` (Linux 5.19) is probed with
    ``seccomp(SECCOMP_SET_MODE_FILTER, flags, NULL)``, EFAULT when known;
    ``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`` (Linux 6.6) is set on a real
    listener in a forked child, and ``SECCOMP_IOCTL_NOTIF_ADDFD`` (Linux
    5.9), which the supervisor needs to open files for the sandbox, is tried
    there too.  Probed rather than guessed from the kernel version, because
    distributions backport.
    """
    trial = _seccomp_trial()
    return {
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": _wait_killable_errno() == errno.EFAULT,
        "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP": _step(trial, _SC_SYNC) == 0,
        "SECCOMP_IOCTL_NOTIF_ADDFD": _step(trial, _SC_ADDFD) == 0,
    }


@functools.cache
def seccomp_filter() -> Feature:
    """Whether a seccomp-bpf filter really loads (seccomp(2), prctl(2)).

    Tried in a forked child (PR_SET_NO_NEW_PRIVS, then an allow-all
    filter); also needs the ``errno`` and ``kill_process`` actions.  The
    detail lists every available ``SECCOMP_RET_*`` action.
    """
    actions = seccomp_actions()
    have = " ".join(name for name, ok in actions.items() if ok) or "none"
    lacking = [name for name in ("errno", "kill_process") if not actions[name]]
    trial = _seccomp_trial()
    nnp, filt = _step(trial, _SC_NNP), _step(trial, _SC_FILTER)
    if nnp != 0:
        return _feature("seccomp-bpf", False, _missing("PR_SET_NO_NEW_PRIVS", nnp, (3, 5)))
    if filt == errno.EINVAL:
        detail = "seccomp(SECCOMP_SET_MODE_FILTER): EINVAL, built without CONFIG_SECCOMP_FILTER"
        return _feature("seccomp-bpf", False, detail)
    if filt != 0:
        detail = _missing("seccomp(SECCOMP_SET_MODE_FILTER)", filt, (3, 17))
        return _feature("seccomp-bpf", False, detail)
    if lacking:
        detail = f"filters load, but not the {' and '.join(lacking)} actions (have: {have})"
        return _feature("seccomp-bpf", False, detail)
    return _feature("seccomp-bpf", True, f"filters load; actions: {have}")


@functools.cache
def seccomp_user_notif() -> Feature:
    """Whether seccomp user notification works (seccomp_unotify(2)).

    Needs the ``user_notif`` action, a listener from
    SECCOMP_FILTER_FLAG_NEW_LISTENER (Linux 5.0) and
    SECCOMP_IOCTL_NOTIF_ADDFD (5.9), tried in a forked child; the detail
    gives the kernel's struct sizes.
    """
    name = "seccomp user_notif"
    action_err = _seccomp_action_errnos()["user_notif"]
    trial = _seccomp_trial()
    listener, addfd = _step(trial, _SC_LISTENER), _step(trial, _SC_ADDFD)
    sizes = seccomp_notif_sizes()
    size_text = f"; sizes notif={sizes[0]} resp={sizes[1]} data={sizes[2]}" if sizes else ""
    if action_err:
        return _feature(name, False, f"SECCOMP_RET_USER_NOTIF unavailable: {_err(action_err)}")
    if listener == errno.EBUSY:
        # seccomp(2): one listener per filter chain; nesting needs the
        # outer sandbox's co-operation.
        return _feature(
            name,
            False,
            "EBUSY: this process already runs under a filter with a listener (nested sandbox)",
            "run stockade outside the other sandbox",
        )
    if listener != 0:
        return _feature(name, False, _missing("SECCOMP_FILTER_FLAG_NEW_LISTENER", listener, (5, 0)))
    if addfd != 0:
        detail = f"listener works, SECCOMP_IOCTL_NOTIF_ADDFD does not: {_err(addfd)}{size_text}"
        return _feature(name, False, detail)
    return _feature(name, True, f"listener and ADDFD work{size_text}")


def _notify_flag_features() -> list[Feature]:
    flags = seccomp_notify_flags()
    wk = flags["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    sync = flags["SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP"]
    sync_err = _step(_seccomp_trial(), _SC_SYNC)
    return [
        _feature(
            "seccomp WAIT_KILLABLE_RECV",
            wk,
            "flag accepted" if wk else f"flag refused: {_err(_wait_killable_errno())}",
        ),
        _feature(
            "seccomp SYNC_WAKE_UP",
            sync,
            "flag set on a listener" if sync else f"NOTIF_SET_FLAGS: {_err(sync_err)}",
        ),
    ]


# --------------------------------------------------------------------------
# user namespaces

# Steps of the user-namespace trial.
_UN_UNSHARE, _UN_UID_MAP = range(2)


@functools.cache
def _userns_trial() -> bytes:
    """unshare(CLONE_NEWUSER), then write our uid_map, in a forked child."""
    uid_line = f"0 {os.getuid()} 1\n".encode()
    uid_map = b"/proc/self/uid_map"
    unshare = getattr(os, "unshare", None)  # Python 3.12+

    def child(_wfd: int, record: bytearray) -> None:  # pragma: no cover -- forked child
        try:
            if unshare is not None:
                unshare(CLONE_NEWUSER)
            else:
                _ffi.syscall(_ffi.SYS_unshare, CLONE_NEWUSER)
            record[_UN_UNSHARE] = 0
            fd = os.open(uid_map, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, uid_line)
            finally:
                os.close(fd)
            record[_UN_UID_MAP] = 0
        except OSError as err:
            record[record.index(_NOT_REACHED)] = err.errno or 0

    return _run_child(2, child)


def _userns_blocked(call: str, err: int) -> tuple[str, str]:
    """(detail, how to get it) for EPERM/EACCES from a user-namespace step."""
    name = errno_name(err)
    # Ubuntu 23.10+: unshare may succeed while the uid_map write fails, so
    # AppArmor is suspected whichever step was refused.
    if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
        return (
            f"{call}: {name}, AppArmor restricts unprivileged user namespaces",
            "sysctl kernel.apparmor_restrict_unprivileged_userns=0, "
            "or an AppArmor profile that allows 'userns,'",
        )
    if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return (
            f"{call}: {name}, kernel.unprivileged_userns_clone is 0 (Debian)",
            "sysctl kernel.unprivileged_userns_clone=1",
        )
    return (
        f"{call}: {name} as uid {os.getuid()}: blocked by an outer sandbox "
        "(a container's seccomp policy, a chroot) or an LSM",
        "run outside that sandbox, or let it allow unshare(CLONE_NEWUSER)",
    )


def _userns_refusal(call: str, err: int) -> tuple[str, str | None]:
    """(detail, how to get it) for a refused user-namespace step."""
    if err in (errno.EPERM, errno.EACCES):
        return _userns_blocked(call, err)
    if err == errno.ENOSPC:
        limit = _read_int("/proc/sys/user/max_user_namespaces")
        return (
            f"{call}: ENOSPC, user.max_user_namespaces ({limit}) is reached",
            "sysctl user.max_user_namespaces=15000",
        )
    if err == errno.EUSERS:
        return (f"{call}: EUSERS, already 32 user namespaces deep", "run less deeply nested")
    if call.startswith("unshare") and err in (errno.ENOSYS, errno.EINVAL):
        return (f"{call}: {errno_name(err)}, user namespaces are not built into this kernel", None)
    return (f"{call}: {_err(err)}", None)


@functools.cache
def user_namespaces() -> Feature:
    """Whether this user can create a user namespace and map its uid.

    user_namespaces(7), unshare(2): tried for real in a forked child, as the
    current user.  EPERM/EACCES is traced to AppArmor
    (``kernel.apparmor_restrict_unprivileged_userns``), Debian's
    ``kernel.unprivileged_userns_clone`` or an outer sandbox; ENOSPC to
    ``user.max_user_namespaces``; ENOSYS/EINVAL means not built.
    """
    name = "user namespaces"
    trial = _userns_trial()
    unshare_err, map_err = _step(trial, _UN_UNSHARE), _step(trial, _UN_UID_MAP)
    if unshare_err == 0 and map_err == 0:
        return _feature(name, True, f"unshare and uid_map work as uid {os.getuid()}")
    if unshare_err == _NOT_REACHED:
        return _feature(name, False, "the probe child died before reporting", "")
    if unshare_err != 0:
        detail, how = _userns_refusal("unshare(CLONE_NEWUSER)", unshare_err)
    else:
        detail, how = _userns_refusal("write /proc/self/uid_map", map_err)
    return _feature(name, False, detail, how)


# --------------------------------------------------------------------------
# descriptors and processes


@functools.cache
def pidfd_open() -> Feature:
    """Whether pidfd_open(2) works on our own pid (Linux 5.3)."""
    fd, err = _call(_ffi.SYS_pidfd_open, os.getpid(), 0)
    if err:
        return _feature("pidfd_open", False, _missing("pidfd_open", err, (5, 3)))
    os.close(fd)
    return _feature("pidfd_open", True, "works on our own pid")


@functools.cache
def pidfd_getfd() -> Feature:
    """Whether pidfd_getfd(2) can copy a descriptor (Linux 5.6).

    Copies our own pidfd out of our own process: the target descriptor is
    surely open and the ptrace-mode check passes for the same process, so
    a refusal can only come from the kernel or an outer sandbox.
    """
    pidfd, err = _call(_ffi.SYS_pidfd_open, os.getpid(), 0)
    if err:
        return _feature("pidfd_getfd", False, _missing("pidfd_open", err, (5, 3)))
    try:
        copy, err = _call(_ffi.SYS_pidfd_getfd, pidfd, pidfd, 0)
        if err:
            return _feature("pidfd_getfd", False, _missing("pidfd_getfd", err, (5, 6)))
        os.close(copy)
    finally:
        os.close(pidfd)
    return _feature("pidfd_getfd", True, "copied a descriptor from our own process")


@functools.cache
def close_range() -> Feature:
    """Whether close_range(2) works (Linux 5.9; CLOSE_RANGE_CLOEXEC 5.11).

    Called on a range no descriptor can occupy, so nothing is closed.
    """
    _, err = _call(_ffi.SYS_close_range, _NO_FD, _NO_FD, 0)
    if err:
        return _feature("close_range", False, _missing("close_range", err, (5, 9)))
    _, err = _call(_ffi.SYS_close_range, _NO_FD, _NO_FD, CLOSE_RANGE_CLOEXEC)
    if err:
        detail = f"works; CLOSE_RANGE_CLOEXEC refused: {_err(err)}"
        return _feature("close_range", True, detail, "Linux 5.11 for CLOSE_RANGE_CLOEXEC")
    return _feature("close_range", True, "works, with CLOSE_RANGE_CLOEXEC")


@functools.cache
def no_new_privs() -> Feature:
    """Whether PR_SET_NO_NEW_PRIVS exists (prctl(2), Linux 3.5), and its state.

    Read with PR_GET_NO_NEW_PRIVS, which changes nothing.
    """
    try:
        state = _ffi.prctl(PR_GET_NO_NEW_PRIVS)
    except OSError as err:
        detail = _missing("prctl(PR_GET_NO_NEW_PRIVS)", err.errno or 0, (3, 5))
        return _feature("no_new_privs", False, detail)
    return _feature("no_new_privs", True, f"supported; {'set' if state else 'not set'} here")


# --------------------------------------------------------------------------
# mounts


@functools.cache
def new_mount_api() -> Feature:
    """Whether the new mount API (fsopen(2), Linux 5.2) exists.

    fsopen is called with a bogus filesystem name and an unknown flag bit,
    so it cannot create a context or make the kernel load a module: EPERM
    (no CAP_SYS_ADMIN, checked first), EINVAL (flags) or ENODEV (name) all
    mean the call exists; ENOSYS means it does not.
    """
    fd, err = _call(_ffi.SYS_fsopen, ctypes.c_char_p(b"stockade-probe-none"), 0x80000000)
    if err in (errno.EPERM, errno.EINVAL, errno.ENODEV):
        return _feature("new mount API", True, f"fsopen(2) present ({errno_name(err)} as expected)")
    if err:
        return _feature("new mount API", False, _missing("fsopen", err, (5, 2)))
    os.close(fd)  # pragma: no cover -- the kernel refuses the flag bit
    return _feature("new mount API", True, "fsopen(2) present")  # pragma: no cover


@functools.cache
def overlayfs() -> Feature:
    """Whether overlayfs is registered or loadable (filesystems(5)).

    Reads /proc/filesystems; failing that, looks for the module under
    /lib/modules/$(uname -r).  Mounting it inside a user namespace needs
    Linux 5.11.
    """
    caveat = "" if _kernel_has(5, 11) else "; not in a user namespace before Linux 5.11"
    try:
        lines = Path("/proc/filesystems").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        lines = []  # no /proc here: the module tree is the only witness
    if any(line.split()[-1:] == ["overlay"] for line in lines):
        return _feature("overlayfs", True, "in /proc/filesystems" + caveat)
    moddir = Path("/lib/modules") / os.uname().release / "kernel/fs/overlayfs"
    if any((moddir / f"overlay.{ext}").exists() for ext in ("ko", "ko.xz", "ko.zst", "ko.gz")):
        return _feature("overlayfs", True, "module present, loaded on first mount" + caveat)
    return _feature("overlayfs", False, "not in /proc/filesystems, and no overlay module")


# --------------------------------------------------------------------------
# summary


def all_features() -> list[Feature]:
    """Every probe's answer, in the order ``stockade check`` prints them."""
    return [
        landlock_status(),
        seccomp_filter(),
        seccomp_user_notif(),
        *_notify_flag_features(),
        user_namespaces(),
        pidfd_open(),
        pidfd_getfd(),
        close_range(),
        new_mount_api(),
        overlayfs(),
        no_new_privs(),
    ]


def usable() -> tuple[bool, list[str]]:
    """Whether stockade can run here, and if not, why (one reason a line).

    Required: Landlock ABI 6 or later (signal and abstract-socket scoping is
    what keeps a sandbox from reaching host processes), seccomp filters that
    load with the ``errno`` and ``kill_process`` actions, and
    PR_SET_NO_NEW_PRIVS.  Everything else only degrades features.
    """
    required = (landlock_status(), seccomp_filter(), no_new_privs())
    reasons = [f"{feat.name}: {feat.detail}" for feat in required if not feat.available]
    abi = landlock_abi()
    if abi is not None and abi < 6:
        reasons.append(
            f"landlock: ABI {abi} lacks signal and abstract UNIX socket scoping (ABI 6, Linux 6.12)"
        )
    return (not reasons, reasons)
