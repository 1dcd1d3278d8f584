"""Landlock: unprivileged access control (landlock(7)).

Some facts about Landlock:

- A *ruleset* names the access rights it handles; anything handled and not
  granted by a rule is denied, anything not handled is left alone.  The ABI
  version (``landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)``)
  says which rights this kernel knows; handling an unknown right is EINVAL,
  so the handled set is masked to the ABI.
- ``landlock_restrict_self`` confines the *calling thread* (and what it
  spawns after) and needs ``PR_SET_NO_NEW_PRIVS`` or CAP_SYS_ADMIN.  Domains
  only ever tighten: a rule can never be removed afterwards.
- A path-beneath rule on a regular file may only carry file rights
  (EXECUTE, WRITE_FILE, READ_FILE, TRUNCATE, IOCTL_DEV); directory rights on
  a file are EINVAL.
- Files opened before the domain is entered keep the access they were
  opened with (so inherited stdio keeps working).
- Landlock also restricts ptrace-mode checks: a sandboxed process cannot
  ptrace, nor read ``/proc/PID/mem`` or ``environ`` of, a process outside its
  domain.
- ABI history: 1 (5.13) filesystem; 2 (5.19) REFER; 3 (6.2) TRUNCATE;
  4 (6.7) TCP bind/connect; 5 (6.10) IOCTL_DEV; 6 (6.12) scoping of
  abstract UNIX sockets and signals; 7 (6.15) audit-log flags.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import os

from stockade.kernel import _ffi

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2


class AccessFs(enum.IntFlag):
    """``LANDLOCK_ACCESS_FS_*`` (include/uapi/linux/landlock.h)."""

    EXECUTE = 1 << 0
    WRITE_FILE = 1 << 1
    READ_FILE = 1 << 2
    READ_DIR = 1 << 3
    REMOVE_DIR = 1 << 4
    REMOVE_FILE = 1 << 5
    MAKE_CHAR = 1 << 6
    MAKE_DIR = 1 << 7
    MAKE_REG = 1 << 8
    MAKE_SOCK = 1 << 9
    MAKE_FIFO = 1 << 10
    MAKE_BLOCK = 1 << 11
    MAKE_SYM = 1 << 12
    REFER = 1 << 13  # ABI 2
    TRUNCATE = 1 << 14  # ABI 3
    IOCTL_DEV = 1 << 15  # ABI 5


class AccessNet(enum.IntFlag):
    """``LANDLOCK_ACCESS_NET_*`` (ABI 4)."""

    BIND_TCP = 1 << 0
    CONNECT_TCP = 1 << 1


class Scope(enum.IntFlag):
    """``LANDLOCK_SCOPE_*`` (ABI 6)."""

    ABSTRACT_UNIX_SOCKET = 1 << 0
    SIGNAL = 1 << 1


#: Rights a rule on a non-directory may carry.
FILE_RIGHTS = (
    AccessFs.EXECUTE
    | AccessFs.WRITE_FILE
    | AccessFs.READ_FILE
    | AccessFs.TRUNCATE
    | AccessFs.IOCTL_DEV
)

_FS_BY_ABI = {
    1: AccessFs((1 << 13) - 1),
    2: AccessFs((1 << 14) - 1),
    3: AccessFs((1 << 15) - 1),
    4: AccessFs((1 << 15) - 1),
    5: AccessFs((1 << 16) - 1),
}


def fs_rights_for_abi(abi: int) -> AccessFs:
    """All filesystem rights known to Landlock ABI *abi*."""
    return _FS_BY_ABI[min(max(abi, 1), 5)]


def net_rights_for_abi(abi: int) -> AccessNet:
    """All network rights known to Landlock ABI *abi* (none before 4)."""
    return AccessNet.BIND_TCP | AccessNet.CONNECT_TCP if abi >= 4 else AccessNet(0)


def scopes_for_abi(abi: int) -> Scope:
    """All scopes known to Landlock ABI *abi* (none before 6)."""
    return Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL if abi >= 6 else Scope(0)


class RulesetAttr(ctypes.Structure):
    """struct landlock_ruleset_attr { __u64 handled_access_fs;
    __u64 handled_access_net; __u64 scoped; };"""

    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    """struct landlock_path_beneath_attr { __u64 allowed_access;
    __s32 parent_fd; } __attribute__((packed));"""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class NetPortAttr(ctypes.Structure):
    """struct landlock_net_port_attr { __u64 allowed_access; __u64 port; };"""

    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@functools.cache
def abi_version() -> int | None:
    """The Landlock ABI of this kernel, or None when Landlock is unavailable
    (ENOSYS: not built; EOPNOTSUPP: built but not enabled at boot)."""
    try:
        return _ffi.syscall(
            _ffi.SYS_landlock_create_ruleset, None, 0, LANDLOCK_CREATE_RULESET_VERSION
        )
    except OSError:
        return None


def create_ruleset(fs: AccessFs, net: AccessNet, scoped: Scope, abi: int) -> int:
    """Create a ruleset fd handling *fs*, *net* and *scoped*.

    The struct is sized for the ABI: older kernels reject unknown trailing
    fields that are non-zero, and ABI < 4 do not know ``handled_access_net``.
    """
    attr = RulesetAttr(int(fs), int(net), int(scoped))
    if abi >= 6:
        size = ctypes.sizeof(RulesetAttr)
    elif abi >= 4:
        size = 16
    else:
        size = 8
    return _ffi.syscall(_ffi.SYS_landlock_create_ruleset, ctypes.byref(attr), size, 0)


def add_path_rule(ruleset_fd: int, allowed: AccessFs, parent_fd: int, path: str = "") -> None:
    """Allow *allowed* beneath the file or directory open as *parent_fd*."""
    attr = PathBeneathAttr(int(allowed), parent_fd)
    _ffi.syscall(
        _ffi.SYS_landlock_add_rule,
        ruleset_fd,
        LANDLOCK_RULE_PATH_BENEATH,
        ctypes.byref(attr),
        0,
        path=path or None,
    )


def add_port_rule(ruleset_fd: int, allowed: AccessNet, port: int) -> None:
    """Allow *allowed* (bind and/or connect) for TCP *port*."""
    attr = NetPortAttr(int(allowed), port)
    _ffi.syscall(
        _ffi.SYS_landlock_add_rule, ruleset_fd, LANDLOCK_RULE_NET_PORT, ctypes.byref(attr), 0
    )


def restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """Enter the ruleset's domain (this thread and its future children)."""
    _ffi.syscall(_ffi.SYS_landlock_restrict_self, ruleset_fd, flags)


def open_path(path: str) -> int:
    """Open *path* as an ``O_PATH`` descriptor for a path-beneath rule."""
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


SYS_openat2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class OpenHow(ctypes.Structure):
    """struct open_how { __u64 flags; __u64 mode; __u64 resolve; };"""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_path_in_root(root_fd: int, path: str) -> int:
    """Open *path* as ``O_PATH`` the way a process whose root is the
    directory *root_fd* would see it: ``..`` and absolute symlinks stay
    beneath it (openat2 ``RESOLVE_IN_ROOT``)."""
    how = OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    return _ffi.syscall(
        SYS_openat2, root_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how), path=path
    )
