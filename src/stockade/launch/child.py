"""The only code that runs in the child between fork and exec.

The parent builds a :class:`ChildSetup` (every buffer, struct and syscall
argument allocated up front) and passes :meth:`ChildSetup.run` to
``subprocess.Popen`` as ``preexec_fn``.  Popen has already forked, wired
stdio and changed directory; after ``run`` returns it closes every other
descriptor and execs.  ``run`` performs a fixed list of steps with raw
system calls: no imports, no logging, no locks, no exceptions.  A failing
step writes ``(step, errno)`` to a CLOEXEC pipe and ``_exit``s; the parent
turns that into a :class:`stockade.LaunchError` naming the step.

The order, and why:

1. ``setsid`` - the sandbox gets its own session and process group, so it
   cannot reach our terminal's job control and can be killed as a group.
   With a pseudo-terminal of its own (``-i``), stdin is the new terminal's
   slave: ``TIOCSCTTY`` makes it the session's controlling terminal, with
   the command's group in the foreground.  It must follow ``setsid`` (only
   a session leader without a terminal may take one).
2. ``PR_SET_PDEATHSIG(SIGKILL)``, then check that the parent is still the
   one that forked us (it may have died before the prctl).  Optionally
   become a child subreaper (kept across exec), so that what the command
   daemonizes stays beneath it while it lives.
3. cgroup - join the sandbox's cgroup before anything can fork.
   Namespaces - one unshare(2); in a new user namespace, map our own ids
   (setgroups denied first, as an unprivileged map requires); in a new
   network namespace bring loopback up; in a new UTS namespace set the
   hostname and domain name; in a new time namespace write the clock
   offsets (before any process enters it); in a new mount namespace make
   every mount private, then either enter a private root (mounts made
   inside it, pivot_root, the old root detached; see ``_enter_root``) or
   mount the binds in place, and last the masks.  These use the
   capabilities the new user namespace grants, so they come before step
   6, and before the rlimits: a user namespace records the creator's
   RLIMIT_NPROC for the level above it.
   pid namespace - only children enter it: this process stays outside,
   forks the init (pid 1, which mounts the private /proc) and the init
   forks the command, which alone goes on with the steps below
   (:mod:`stockade.launch.pidns`).
4. rlimits - before privileges are dropped (root could still raise them
   afterwards otherwise; see step 6).
5. personality, THP, CPU affinity - process attributes exec keeps.
6. capabilities - a root caller's sandbox runs with none: bounding set
   (unless the spawning process emptied its own already), ambient set,
   then effective/permitted/inheritable.
7. ``PR_SET_NO_NEW_PRIVS`` - required by both Landlock and seccomp, and
   makes setuid binaries harmless.
8. the notify filter (when the policy needs the supervisor).  Its
   listener fd is handed to the supervisor: we write its number on the
   hand-off socket (``write`` is never trapped; the supervisor learns our
   pid from SCM_CREDENTIALS and takes the fd with ``pidfd_getfd``).  The
   acknowledgement is read after step 10, so that the supervisor's work
   and ours overlap.  The main filter's ERRNO and KILL verdicts take
   precedence over USER_NOTIF whatever the order the two are loaded in.
9. Landlock - the ruleset fd was built by the parent; this step only
   enters it.
10. seccomp - last, so the filter never has to allow our own setup.
11. wait for the supervisor's one-byte acknowledgement (``read``, never
    trapped) and close our copy of the listener.  Only then may we exec:
    the command never runs a trapped call without a supervisor.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from stockade.kernel import _ffi
from stockade.kernel.landlock import LANDLOCK_RULE_PATH_BENEATH, PathBeneathAttr
from stockade.kernel.seccomp import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_SET_MODE_FILTER,
    PreparedFilter,
)
from stockade.launch.pidns import STEP_PID_INIT, STEP_PROC, PidNamespaceInit
from stockade.launch.wire import RECORD_SIZE

# Step numbers sent over the error pipe, and their names for messages.
STEP_SETSID = 1
STEP_PDEATHSIG = 2
STEP_PARENT = 3
STEP_CGROUP = 4
STEP_RLIMIT = 5
STEP_PERSONALITY = 6
STEP_THP = 7
STEP_AFFINITY = 8
STEP_CAPS = 9
STEP_NNP = 10
STEP_LANDLOCK = 11
STEP_SECCOMP = 12
STEP_SUBREAPER = 13
STEP_UNSHARE = 14
STEP_IDMAP = 15
STEP_LOOPBACK = 16
STEP_HOSTNAME = 17
STEP_MOUNT_PRIVATE = 18
STEP_MASK_STAGING = 19
STEP_MASK = 20
STEP_BIND = 21
STEP_ROOT = 22
STEP_ROOT_SOURCE = 23
STEP_ROOT_MAKE = 24
STEP_ROOT_MOUNT = 25
STEP_PIVOT = 26
STEP_ROOT_CWD = 27
STEP_CTTY = 30
STEP_TIME_OFFSETS = 31
STEP_DOMAINNAME = 32
STEP_NOTIFY = 35
STEP_HANDOFF = 36

STEP_NAMES = {
    STEP_SETSID: "setsid",
    STEP_PDEATHSIG: "prctl(PR_SET_PDEATHSIG)",
    STEP_PARENT: "parent check (the parent died during setup)",
    STEP_CGROUP: "joining the cgroup",
    STEP_RLIMIT: "setrlimit",
    STEP_PERSONALITY: "personality",
    STEP_THP: "prctl(PR_SET_THP_DISABLE)",
    STEP_AFFINITY: "sched_setaffinity",
    STEP_CAPS: "dropping capabilities",
    STEP_NNP: "prctl(PR_SET_NO_NEW_PRIVS)",
    STEP_LANDLOCK: "landlock_restrict_self",
    STEP_SECCOMP: "seccomp(SECCOMP_SET_MODE_FILTER)",
    STEP_SUBREAPER: "prctl(PR_SET_CHILD_SUBREAPER)",
    STEP_UNSHARE: "unshare (namespaces)",
    STEP_IDMAP: "writing the user namespace's id maps",
    STEP_LOOPBACK: "bringing loopback up",
    STEP_HOSTNAME: "sethostname",
    STEP_MOUNT_PRIVATE: "making the mount namespace private",
    STEP_MASK_STAGING: "preparing the masks (tmpfs)",
    STEP_MASK: "mounting a mask over",
    STEP_BIND: "mounting (--bind or --tmpfs) over",
    STEP_ROOT: "making the private root (--root)",
    STEP_ROOT_SOURCE: "opening what the private root mounts at",
    STEP_ROOT_MAKE: "making in the private root",
    STEP_ROOT_MOUNT: "mounting in the private root over",
    STEP_PIVOT: "pivot_root into the private root",
    STEP_ROOT_CWD: "entering the working directory (--cwd) inside the private root",
    STEP_CTTY: "ioctl(TIOCSCTTY): taking the new pseudo-terminal as controlling terminal",
    STEP_TIME_OFFSETS: "writing the time namespace's offsets (--time-offset)",
    STEP_DOMAINNAME: "setdomainname",
    STEP_PID_INIT: "starting the pid namespace's init",
    STEP_PROC: "mounting the private /proc",
    STEP_NOTIFY: "seccomp(SECCOMP_SET_MODE_FILTER) of the notify filter",
    STEP_HANDOFF: "handing the notify listener to the supervisor",
}
#: Steps whose index names an entry of ``mounts``.
_MOUNT_STEPS = (STEP_BIND, STEP_ROOT_SOURCE, STEP_ROOT_MAKE, STEP_ROOT_MOUNT)

#: Exit status of a child that failed setup (never seen by users: the
#: parent raises instead).
SETUP_FAILED_STATUS = 125

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_SET_THP_DISABLE = 41
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SIGKILL = 9
SYS_setsid = 112
SYS_getppid = 110
SYS_capset = 126
SYS_prlimit64 = 302
SYS_write = 1
SYS_read = 0
SYS_close = 3
SYS_socket = 41
SYS_ioctl = 16
SYS_unshare = 272
SYS_sethostname = 170
TIOCSCTTY = 0x540E
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWTIME = 0x00000080
NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER,
    "mount": CLONE_NEWNS,
    "net": CLONE_NEWNET,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "pid": CLONE_NEWPID,
    "cgroup": CLONE_NEWCGROUP,
    "time": CLONE_NEWTIME,
}
SYS_setdomainname = 171
AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
#: sizeof(struct ifreq) on x86_64: IFNAMSIZ (16) + the 24-byte union.
IFREQ_SIZE = 40
# The new mount API (mount_setattr(2), move_mount(2), open_tree(2)...).
SYS_mount = 165
SYS_mkdirat = 258
SYS_openat = 257
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_openat2 = 437
SYS_mount_setattr = 442
SYS_pivot_root = 155
SYS_umount2 = 166
SYS_fchdir = 81
SYS_chdir = 80
SYS_getcwd = 79
SYS_mknodat = 259
SYS_symlinkat = 266
SYS_linkat = 265
MNT_DETACH = 2
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
MOVE_MOUNT_F_EMPTY_PATH_ONLY = 0x4
RESOLVE_NO_MAGICLINKS = 0x02
O_DIRECTORY = 0o200000
O_EXCL = 0o200
O_NOFOLLOW = 0o400000
S_IFIFO = 0o010000
EEXIST = 17
ENOENT = 2
AT_FDCWD = -100
# Operations of a private root (see stockade.launch.rootfs, which makes them).
OP_RO = 0x1
OP_CREATE = 0x2
OP_FILE = 0x4
OP_DEV = 0x8
OP_RW_RULE = 0x10
OP_LIST_RULE = 0x20
OP_READ_RULE = 0x40
OP_DEVPTS = 0x80
K_MOUNT = 0
K_MKDIR = 1
K_MKFILE = 2
K_MKFIFO = 3
K_SYMLINK = 4
K_LINK = 5
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
FSOPEN_CLOEXEC = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
RESOLVE_NO_SYMLINKS = 0x04
O_PATH = 0o10000000
O_CLOEXEC = 0o2000000
O_CREAT = 0o100
O_WRONLY = 1


class _OpenHow(ctypes.Structure):
    """struct open_how { __u64 flags; __u64 mode; __u64 resolve; };"""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    """struct mount_attr { __u64 attr_set, attr_clr, propagation, userns_fd; };"""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    """struct __user_cap_header_struct { __u32 version; int pid; };"""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    """struct __user_cap_data_struct { __u32 effective, permitted, inheritable; };"""

    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _Rlimit64(ctypes.Structure):
    """struct rlimit64 { __u64 rlim_cur; __u64 rlim_max; };"""

    _fields_ = [("rlim_cur", ctypes.c_uint64), ("rlim_max", ctypes.c_uint64)]


class ChildSetup:
    """Everything the child does, prepared by the parent.

    Build it in the parent; call :meth:`run` only in the forked child.
    """

    def __init__(
        self,
        *,
        error_fd: int,
        parent_pid: int,
        rlimits: tuple[tuple[int, int, int], ...] = (),
        personality: int | None = None,
        no_thp: bool = False,
        cpus: tuple[int, ...] = (),
        drop_caps: bool = False,
        cap_last: int | None = 40,
        cgroup_procs_fd: int | None = None,
        subreaper: bool = False,
        namespaces: frozenset[str] = frozenset(),
        id_maps: tuple[bytes, bytes] | None = None,
        loopback: bool = False,
        hostname: str | None = None,
        domainname: str | None = None,
        time_offsets: tuple[int, int] | None = None,
        proc: bool = False,
        proc_subset_pid: bool = False,
        proc_rights: int = 0,
        init_landlock: tuple[int, int, int, int] | None = None,
        masks: tuple[tuple[bytes, bool], ...] = (),
        mounts: tuple[tuple[Any, ...], ...] = (),
        tmpfs_rights: int = 0,
        root: bytes | None = None,
        root_cwd: bytes | None = None,
        root_rights: tuple[int, ...] = (0, 0, 0, 0),
        controlling_tty: bool = False,
        landlock_fd: int | None = None,
        seccomp_filter: PreparedFilter | None = None,
        notify_filter: PreparedFilter | None = None,
        notify_fd: int | None = None,
    ) -> None:
        self._error_fd = error_fd
        self._parent_pid = parent_pid
        self._record = ctypes.create_string_buffer(RECORD_SIZE)
        self._syscall = _ffi._syscall
        self._get_errno = ctypes.get_errno
        self._prctl = _ffi._prctl
        self._rlimits = [
            (ctypes.c_long(res), ctypes.byref(_Rlimit64(soft, hard)), _Rlimit64(soft, hard))
            for res, soft, hard in rlimits
        ]
        self._personality = personality
        self._no_thp = no_thp
        self._cpus = frozenset(cpus) if cpus else None
        self._drop_caps = drop_caps
        self._cap_last = cap_last
        self._cap_header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        self._cap_data = (_CapData * 2)()
        self._cgroup_fd = cgroup_procs_fd
        self._subreaper = subreaper
        flags = 0
        for name in namespaces:
            flags |= NAMESPACE_FLAGS[name]
        self._unshare_flags = flags
        # (path, content) pairs, written in this order.
        self._id_writes: tuple[tuple[bytes, bytes], ...] = ()
        if id_maps is not None:
            self._id_writes = (
                (b"/proc/self/setgroups", b"deny"),
                (b"/proc/self/uid_map", id_maps[0]),
                (b"/proc/self/gid_map", id_maps[1]),
            )
        self._ifreq = None
        if loopback:
            self._ifreq = ctypes.create_string_buffer(IFREQ_SIZE)
            ctypes.memmove(self._ifreq, b"lo", 2)
            ctypes.memmove(ctypes.addressof(self._ifreq) + 16, IFF_UP.to_bytes(2, "little"), 2)
        # Masks: (path, is_dir).  A read-only, nosuid, nodev, noexec clone of
        # a mode-000 directory or file from a private tmpfs goes over each.
        # Those under /proc go over the private /proc once it is mounted
        # (by the pid namespace's init): the host's would be hidden by it.
        self._masks = masks
        self._proc_masks: tuple[tuple[bytes, bool], ...] = ()
        if proc:
            self._masks = tuple(m for m in masks if not _under_proc(m[0]))
            self._proc_masks = tuple(m for m in masks if _under_proc(m[0]))
        self._mask_index = {path: i for i, (path, _d) in enumerate(masks)}
        self._domainname = None
        if domainname is not None:
            encoded = domainname.encode()
            self._domainname = (ctypes.create_string_buffer(encoded, len(encoded)), len(encoded))
        self._time_offsets = None
        if time_offsets is not None:
            self._time_offsets = (
                f"monotonic {time_offsets[0]} 0\nboottime {time_offsets[1]} 0\n".encode()
            )
        self._pidns: PidNamespaceInit | None = None
        if flags & CLONE_NEWPID:
            self._pidns = PidNamespaceInit(
                proc=proc,
                proc_subset_pid=proc_subset_pid,
                proc_rights=proc_rights,
                init_landlock=init_landlock,
            )
        # Binds and tmpfs mounts: (source or b"" for a tmpfs, target, readonly).
        self._mounts = mounts
        # A tmpfs root exists only once mounted: its Landlock rule is added
        # here, to the parent's ruleset, before the domain is entered.
        self._tmpfs_rule = PathBeneathAttr(tmpfs_rights, -1)
        self._bind_attr = _MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
        self._bind_ro_attr = _MountAttr(
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0
        )
        self._open_how = _OpenHow(O_PATH | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS)
        self._mount_attr = _MountAttr(
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, 0, 0, 0
        )
        # A private root: b"" for a tmpfs, else the directory; ``mounts`` then
        # holds its operations (stockade.launch.rootfs.root_ops).
        self._root = root
        self._root_cwd = root_cwd
        self._root_fd = -1
        self._trees = [-1] * len(mounts) if root is not None else []
        self._list_rule = PathBeneathAttr(root_rights[0], -1)
        self._read_rule = PathBeneathAttr(root_rights[1], -1)
        self._fifo_rule = PathBeneathAttr(root_rights[2], -1)
        self._pts_rule = PathBeneathAttr(root_rights[3], -1)
        self._dev_attr = _MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0, 0, 0)
        self._root_attr = _MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
        self._root_ro_attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                                        0, 0, 0)  # fmt: skip
        # One component at a time: no symlink, no magic link, no "..".
        self._step_how = _OpenHow(O_PATH | O_CLOEXEC | O_NOFOLLOW, 0,
                                  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)  # fmt: skip
        self._dir_how = _OpenHow(O_PATH | O_CLOEXEC | O_DIRECTORY, 0,
                                 RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)  # fmt: skip
        self._cwd_buf = ctypes.create_string_buffer(4096)
        self._hostname = None
        if hostname is not None:
            encoded = hostname.encode()
            self._hostname = (ctypes.create_string_buffer(encoded, len(encoded)), len(encoded))
        self._controlling_tty = controlling_tty
        self._landlock_fd = landlock_fd
        self._filter = seccomp_filter
        self._notify = notify_filter if notify_fd is not None else None
        self._notify_fd = notify_fd
        self._handoff = ctypes.c_int32(-1)
        self._ack = ctypes.create_string_buffer(1)

    def _fail(self, step: int, err: int, index: int = 0) -> None:
        # Fixed-size record; the buffer exists already, so nothing allocates.
        value = step | (err << 16) | (index << 32)
        ctypes.memmove(self._record, value.to_bytes(8, "little"), RECORD_SIZE)
        self._syscall(ctypes.c_long(SYS_write), ctypes.c_long(self._error_fd), self._record,
                      ctypes.c_long(RECORD_SIZE))  # fmt: skip
        os._exit(SETUP_FAILED_STATUS)

    def _sys(self, step: int, nr: int, *args: object, index: int = 0) -> int:
        ret: int = self._syscall(ctypes.c_long(nr), *args)
        if ret == -1:
            self._fail(step, self._get_errno(), index)
        return ret

    def _pr(self, step: int, option: int, a2: int = 0, a3: int = 0) -> None:
        if self._prctl(option, a2, a3, 0, 0) == -1:
            self._fail(step, self._get_errno())

    def warm(self) -> None:
        """Make harmless calls through the same ctypes paths as :meth:`run`
        (getppid, a prctl query), in a forked process that has time to
        spare before its request: the copy-on-write faults of the first
        foreign call (some 40 µs here) are then taken while nobody waits."""
        c_long = ctypes.c_long
        self._syscall(c_long(SYS_getppid))
        self._prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
        self._get_errno()

    def run(self) -> None:
        """Apply every step, in order.  Child only; never returns on failure."""
        c_long = ctypes.c_long
        self._sys(STEP_SETSID, SYS_setsid)
        if self._controlling_tty:
            self._sys(STEP_CTTY, SYS_ioctl, c_long(0), c_long(TIOCSCTTY), c_long(0))
        self._pr(STEP_PDEATHSIG, PR_SET_PDEATHSIG, SIGKILL)
        if self._syscall(c_long(SYS_getppid)) != self._parent_pid:
            self._fail(STEP_PARENT, 3)  # ESRCH
        if self._subreaper:
            self._pr(STEP_SUBREAPER, PR_SET_CHILD_SUBREAPER, 1)
        if self._cgroup_fd is not None:
            try:
                os.write(self._cgroup_fd, b"0")
            except OSError as err:
                self._fail(STEP_CGROUP, err.errno or 5)
        if self._unshare_flags:
            self._enter_namespaces()
        if self._pidns is not None:
            # Returns only in the command, inside the new pid namespace.
            self._pidns.start(self)
        for resource, ref, _keep in self._rlimits:
            self._sys(STEP_RLIMIT, SYS_prlimit64, c_long(0), resource, ref, None)
        if self._personality is not None:
            self._sys(STEP_PERSONALITY, _ffi.SYS_personality, c_long(self._personality))
        if self._no_thp:
            self._pr(STEP_THP, PR_SET_THP_DISABLE, 1)
        if self._cpus is not None:
            try:
                os.sched_setaffinity(0, self._cpus)
            except OSError as err:
                self._fail(STEP_AFFINITY, err.errno or 22)
        if self._drop_caps:
            # cap_last is None when the spawning process emptied its own
            # bounding set already, and we inherited that.
            if self._cap_last is not None:
                for cap in range(self._cap_last + 1):
                    self._pr(STEP_CAPS, PR_CAPBSET_DROP, cap)
            self._pr(STEP_CAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
            self._sys(STEP_CAPS, SYS_capset, ctypes.byref(self._cap_header),
                      ctypes.byref(self._cap_data))  # fmt: skip
        self._pr(STEP_NNP, PR_SET_NO_NEW_PRIVS, 1)
        # The listener goes to the supervisor first, so that it takes it
        # over while Landlock and the main filter are entered here; its
        # acknowledgement is awaited only before returning (to exec).
        listener = self._hand_over() if self._notify is not None else -1
        if self._landlock_fd is not None:
            self._sys(STEP_LANDLOCK, _ffi.SYS_landlock_restrict_self,
                      c_long(self._landlock_fd), c_long(0))  # fmt: skip
        if self._filter is not None:
            self._sys(STEP_SECCOMP, _ffi.SYS_seccomp, c_long(SECCOMP_SET_MODE_FILTER),
                      c_long(self._filter.flags), self._filter.fprog_ref)  # fmt: skip
        if listener >= 0:
            self._await_supervisor(listener)

    def _hand_over(self) -> int:
        """Load the notify filter and send its listener's number to the
        supervisor; returns the listener.  Nothing between here and the
        acknowledgement is a call the filter traps (landlock_restrict_self,
        seccomp, read, close), and precedence among stacked filters goes
        by action, not by order: the main filter's ERRNO and KILL verdicts
        still win over USER_NOTIF."""
        c_long = ctypes.c_long
        assert self._notify is not None and self._notify_fd is not None
        listener = self._sys(STEP_NOTIFY, _ffi.SYS_seccomp, c_long(SECCOMP_SET_MODE_FILTER),
                             c_long(self._notify.flags), self._notify.fprog_ref)  # fmt: skip
        self._handoff.value = listener
        sock = c_long(self._notify_fd)
        while True:
            ret = self._syscall(c_long(SYS_write), sock, ctypes.byref(self._handoff), c_long(4))
            if ret == 4:
                break
            if ret == -1 and self._get_errno() == 4:  # EINTR
                continue
            self._fail(STEP_HANDOFF, self._get_errno() if ret == -1 else 32)  # EPIPE
        return listener

    def _await_supervisor(self, listener: int) -> None:
        """Wait for the supervisor's acknowledgement: only then may we exec."""
        c_long = ctypes.c_long
        assert self._notify_fd is not None
        sock = c_long(self._notify_fd)
        while True:
            ret = self._syscall(c_long(SYS_read), sock, self._ack, c_long(1))
            if ret == 1:
                break
            if ret == -1 and self._get_errno() == 4:
                continue
            # No acknowledgement: the supervisor refused or died.
            self._fail(STEP_HANDOFF, self._get_errno() if ret == -1 else 32)
        self._syscall(c_long(SYS_close), c_long(listener))
        self._syscall(c_long(SYS_close), sock)

    def _enter_namespaces(self) -> None:
        c_long = ctypes.c_long
        self._sys(STEP_UNSHARE, SYS_unshare, c_long(self._unshare_flags))
        for path, content in self._id_writes:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, content)
                finally:
                    os.close(fd)
            except OSError as err:
                self._fail(STEP_IDMAP, err.errno or 5)
        if self._time_offsets is not None:
            # Only until a process enters the new time namespace: the init,
            # forked later, is the first.
            self._write_proc(STEP_TIME_OFFSETS, b"/proc/self/timens_offsets", self._time_offsets)
        if self._ifreq is not None:
            sock = self._sys(STEP_LOOPBACK, SYS_socket, c_long(AF_INET),
                             c_long(SOCK_DGRAM | SOCK_CLOEXEC), c_long(0))  # fmt: skip
            self._sys(STEP_LOOPBACK, SYS_ioctl, c_long(sock), c_long(SIOCSIFFLAGS), self._ifreq)
            self._syscall(c_long(SYS_close), c_long(sock))
        if self._hostname is not None:
            buf, length = self._hostname
            self._sys(STEP_HOSTNAME, SYS_sethostname, buf, c_long(length))
        if self._domainname is not None:
            buf, length = self._domainname
            self._sys(STEP_DOMAINNAME, SYS_setdomainname, buf, c_long(length))
        if self._unshare_flags & CLONE_NEWNS:
            # Nothing mounted here may propagate back to the host.
            self._sys(STEP_MOUNT_PRIVATE, SYS_mount, None, b"/", None,
                      c_long(MS_REC | MS_PRIVATE), None)  # fmt: skip
        if self._pidns is None:
            self._mount_all()

    def _mount_all(self) -> None:
        """Every mount of the sandbox's mount namespace.  With a pid
        namespace the init runs this, once it has made its procfs (which
        needs a full procfs still in sight: before the old root goes)."""
        if self._root is not None:
            self._enter_root()
        elif self._mounts:
            self._mount_binds()
        if self._masks:
            self._mount_masks(self._masks)

    def _write_proc(self, step: int, path: bytes, content: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
        except OSError as err:
            self._fail(step, err.errno or 5)

    def _after_proc(self) -> None:
        """In the pid namespace's init, once the private /proc is mounted."""
        if self._proc_masks:
            self._mount_masks(self._proc_masks)

    def _open_nofollow(self, step: int, path: bytes, index: int) -> int:
        return self._sys(step, SYS_openat2, ctypes.c_long(-100), path,
                         ctypes.byref(self._open_how), ctypes.c_long(ctypes.sizeof(_OpenHow)),
                         index=index)  # fmt: skip

    def _mount_binds(self) -> None:
        c_long = ctypes.c_long
        for index, (source, target, readonly, *_) in enumerate(self._mounts):
            step = STEP_BIND
            if source:
                src = self._open_nofollow(step, source, index)
                tree = self._sys(step, SYS_open_tree, c_long(src), b"",
                                 c_long(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
                                        | AT_EMPTY_PATH), index=index)  # fmt: skip
                self._syscall(c_long(SYS_close), c_long(src))
            else:
                fs = self._sys(step, SYS_fsopen, b"tmpfs", c_long(FSOPEN_CLOEXEC), index=index)
                self._sys(step, SYS_fsconfig, c_long(fs), c_long(FSCONFIG_CMD_CREATE), None,
                          None, c_long(0), index=index)  # fmt: skip
                tree = self._sys(step, SYS_fsmount, c_long(fs), c_long(FSMOUNT_CLOEXEC),
                                 c_long(0), index=index)  # fmt: skip
                self._syscall(c_long(SYS_close), c_long(fs))
                if self._landlock_fd is not None and self._tmpfs_rule.allowed_access:
                    self._tmpfs_rule.parent_fd = tree
                    self._sys(step, _ffi.SYS_landlock_add_rule, c_long(self._landlock_fd),
                              c_long(LANDLOCK_RULE_PATH_BENEATH),
                              ctypes.byref(self._tmpfs_rule), c_long(0),
                              index=index)  # fmt: skip
            attr = self._bind_ro_attr if readonly else self._bind_attr
            self._sys(step, SYS_mount_setattr, c_long(tree), b"",
                      c_long(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
                      c_long(ctypes.sizeof(_MountAttr)), index=index)  # fmt: skip
            dst = self._open_nofollow(step, target, index)
            self._sys(step, SYS_move_mount, c_long(tree), b"", c_long(dst), b"",
                      c_long(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
                      index=index)  # fmt: skip
            self._syscall(c_long(SYS_close), c_long(tree))
            self._syscall(c_long(SYS_close), c_long(dst))

    # -- a private root (--root) ----------------------------------------------
    #
    # 1. Every mount the root will hold is opened or made first: bind
    #    sources are host paths, resolved while the host's root is ours.
    # 2. The root (a tmpfs, or a recursive bind of DIR) is attached on top of
    #    "/", because pivot_root needs it in our mount tree.  "/" still
    #    resolves in the old root, so from here on everything goes through
    #    the root's fd, one component at a time, never through a symlink.
    # 3. The operations of stockade.launch.rootfs, in its order.
    # 4. A tmpfs root turns read-only; pivot_root(".", ".") stacks the old
    #    root on the new one, and umount2(".", MNT_DETACH) takes it away:
    #    no path reaches it any more.

    def _enter_root(self) -> None:
        c_long = ctypes.c_long
        # Popen has entered the requested directory: keep it if the new
        # root has it too.
        have_cwd = False
        if self._root_cwd is None:
            size = c_long(ctypes.sizeof(self._cwd_buf))
            have_cwd = self._syscall(c_long(SYS_getcwd), self._cwd_buf, size) > 0
        for index, (source, _target, flags, _parents, _name) in enumerate(self._mounts):
            if flags >> 8 == K_MOUNT:
                self._trees[index] = self._make_tree(index, source, flags)
        root = self._make_root()
        self._sys(STEP_ROOT, SYS_move_mount, c_long(root), b"", c_long(AT_FDCWD), b"/",
                  c_long(MOVE_MOUNT_F_EMPTY_PATH))  # fmt: skip
        self._root_fd = root
        for index, op in enumerate(self._mounts):
            self._root_op(index, op)
        if not self._root:
            self._sys(STEP_ROOT, SYS_mount_setattr, c_long(root), b"", c_long(AT_EMPTY_PATH),
                      ctypes.byref(self._root_ro_attr),
                      c_long(ctypes.sizeof(_MountAttr)))  # fmt: skip
        self._sys(STEP_PIVOT, SYS_fchdir, c_long(root))
        self._sys(STEP_PIVOT, SYS_pivot_root, b".", b".")
        self._sys(STEP_PIVOT, SYS_umount2, b".", c_long(MNT_DETACH))
        self._sys(STEP_PIVOT, SYS_chdir, b"/")
        self._syscall(c_long(SYS_close), c_long(root))
        self._root_fd = -1
        if self._root_cwd is not None:
            fd = self._sys(STEP_ROOT_CWD, SYS_openat2, c_long(AT_FDCWD), self._root_cwd,
                           ctypes.byref(self._dir_how),
                           c_long(ctypes.sizeof(_OpenHow)))  # fmt: skip
            self._sys(STEP_ROOT_CWD, SYS_fchdir, c_long(fd))
            self._syscall(c_long(SYS_close), c_long(fd))
        elif have_cwd:
            fd = self._syscall(c_long(SYS_openat2), c_long(AT_FDCWD), self._cwd_buf,
                               ctypes.byref(self._dir_how),
                               c_long(ctypes.sizeof(_OpenHow)))  # fmt: skip
            if fd >= 0:
                self._syscall(c_long(SYS_fchdir), c_long(fd))
                self._syscall(c_long(SYS_close), c_long(fd))

    def _new_tmpfs(self, step: int, index: int) -> int:
        c_long = ctypes.c_long
        fs = self._sys(step, SYS_fsopen, b"tmpfs", c_long(FSOPEN_CLOEXEC), index=index)
        self._sys(step, SYS_fsconfig, c_long(fs), c_long(FSCONFIG_SET_STRING), b"mode", b"0755",
                  c_long(0), index=index)  # fmt: skip
        self._sys(step, SYS_fsconfig, c_long(fs), c_long(FSCONFIG_CMD_CREATE), None, None,
                  c_long(0), index=index)  # fmt: skip
        tree = self._sys(step, SYS_fsmount, c_long(fs), c_long(FSMOUNT_CLOEXEC), c_long(0),
                         index=index)  # fmt: skip
        self._syscall(c_long(SYS_close), c_long(fs))
        return tree

    def _new_devpts(self) -> int:
        """A private devpts instance (ptys of the sandbox's own), or -1 where
        the kernel refuses one: ptys are a convenience, not a boundary."""
        c_long, call = ctypes.c_long, self._syscall
        fs = call(c_long(SYS_fsopen), b"devpts", c_long(FSOPEN_CLOEXEC))
        if fs < 0:
            return -1
        tree = -1
        if (
            call(c_long(SYS_fsconfig), c_long(fs), c_long(FSCONFIG_SET_FLAG), b"newinstance",
                 None, c_long(0)) == 0
            and call(c_long(SYS_fsconfig), c_long(fs), c_long(FSCONFIG_SET_STRING), b"ptmxmode",
                     b"0666", c_long(0)) == 0
            and call(c_long(SYS_fsconfig), c_long(fs), c_long(FSCONFIG_SET_STRING), b"mode",
                     b"0620", c_long(0)) == 0
            and call(c_long(SYS_fsconfig), c_long(fs), c_long(FSCONFIG_CMD_CREATE), None, None,
                     c_long(0)) == 0
        ):  # fmt: skip
            tree = call(c_long(SYS_fsmount), c_long(fs), c_long(FSMOUNT_CLOEXEC), c_long(0))
        call(c_long(SYS_close), c_long(fs))
        return tree

    def _add_rule(self, step: int, rule: PathBeneathAttr, fd: int, index: int) -> None:
        """Add a Landlock rule on *fd*: what exists only inside the sandbox
        (a tmpfs, a file made there) has no host path the parent could open."""
        if self._landlock_fd is None or not rule.allowed_access:
            return
        rule.parent_fd = fd
        self._sys(step, _ffi.SYS_landlock_add_rule, ctypes.c_long(self._landlock_fd),
                  ctypes.c_long(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_long(0),
                  index=index)  # fmt: skip

    def _make_tree(self, index: int, source: bytes, flags: int) -> int:
        c_long = ctypes.c_long
        step = STEP_ROOT_SOURCE
        if source:
            src = self._open_nofollow(step, source, index)
            tree = self._sys(step, SYS_open_tree, c_long(src), b"",
                             c_long(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
                                    | AT_EMPTY_PATH), index=index)  # fmt: skip
            self._syscall(c_long(SYS_close), c_long(src))
            attr = (
                self._dev_attr if flags & OP_DEV
                else self._bind_ro_attr if flags & OP_RO
                else self._bind_attr
            )  # fmt: skip
        elif flags & OP_DEVPTS:
            tree = self._new_devpts()
            if tree < 0:
                return -1
            attr = self._dev_attr
            self._add_rule(step, self._pts_rule, tree, index)
        else:
            tree = self._new_tmpfs(step, index)
            attr = self._bind_attr
            if flags & OP_RW_RULE:
                self._add_rule(step, self._tmpfs_rule, tree, index)
            if flags & OP_LIST_RULE:
                self._add_rule(step, self._list_rule, tree, index)
        self._sys(step, SYS_mount_setattr, c_long(tree), b"", c_long(AT_EMPTY_PATH | AT_RECURSIVE),
                  ctypes.byref(attr), c_long(ctypes.sizeof(_MountAttr)), index=index)  # fmt: skip
        return tree

    def _make_root(self) -> int:
        c_long = ctypes.c_long
        step = STEP_ROOT
        if self._root:
            src = self._sys(step, SYS_openat2, c_long(AT_FDCWD), self._root,
                            ctypes.byref(self._dir_how),
                            c_long(ctypes.sizeof(_OpenHow)))  # fmt: skip
            root = self._sys(step, SYS_open_tree, c_long(src), b"",
                             c_long(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
                                    | AT_EMPTY_PATH))  # fmt: skip
            self._syscall(c_long(SYS_close), c_long(src))
        else:
            root = self._new_tmpfs(step, 0)
            self._add_rule(step, self._list_rule, root, 0)
        self._sys(step, SYS_mount_setattr, c_long(root), b"", c_long(AT_EMPTY_PATH | AT_RECURSIVE),
                  ctypes.byref(self._root_attr), c_long(ctypes.sizeof(_MountAttr)))  # fmt: skip
        return root

    def _walk(self, step: int, index: int, parents: tuple[bytes, ...], create: int) -> int:
        """The directory *parents* names beneath the root, reached one
        component at a time (a symlink is ELOOP), made if *create*."""
        c_long = ctypes.c_long
        how, size = ctypes.byref(self._dir_how), c_long(ctypes.sizeof(_OpenHow))
        fd = self._root_fd
        for name in parents:
            nxt = self._syscall(c_long(SYS_openat2), c_long(fd), name, how, size)
            if nxt == -1:
                err = self._get_errno()
                if err != ENOENT or not create:
                    self._fail(step, err, index)
                if self._syscall(c_long(SYS_mkdirat), c_long(fd), name, c_long(0o755)) == -1:
                    err = self._get_errno()
                    if err != EEXIST:
                        self._fail(step, err, index)
                nxt = self._sys(step, SYS_openat2, c_long(fd), name, how, size, index=index)
            if fd != self._root_fd:
                self._syscall(c_long(SYS_close), c_long(fd))
            fd = nxt
        return fd

    def _open_in(self, step: int, index: int, dirfd: int, name: bytes) -> int:
        return self._sys(step, SYS_openat2, ctypes.c_long(dirfd), name,
                         ctypes.byref(self._open_how), ctypes.c_long(ctypes.sizeof(_OpenHow)),
                         index=index)  # fmt: skip

    def _make_dir(self, step: int, index: int, dirfd: int, name: bytes) -> None:
        c_long = ctypes.c_long
        if self._syscall(c_long(SYS_mkdirat), c_long(dirfd), name, c_long(0o755)) == -1:
            err = self._get_errno()
            if err != EEXIST:
                self._fail(step, err, index)

    def _make_file(self, step: int, index: int, dirfd: int, name: bytes, exist_ok: bool) -> None:
        c_long = ctypes.c_long
        fd = self._syscall(c_long(SYS_openat), c_long(dirfd), name,
                           c_long(O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW),
                           c_long(0o644))  # fmt: skip
        if fd >= 0:
            self._syscall(c_long(SYS_close), c_long(fd))
        elif not exist_ok or self._get_errno() != EEXIST:
            self._fail(step, self._get_errno(), index)

    def _root_op(self, index: int, op: tuple[bytes, bytes, int, tuple[bytes, ...], bytes]) -> None:
        c_long = ctypes.c_long
        source, _target, flags, parents, name = op
        kind = flags >> 8
        step = STEP_ROOT_MOUNT if kind == K_MOUNT else STEP_ROOT_MAKE
        create = flags & OP_CREATE if kind == K_MOUNT else 1
        d = self._walk(step, index, parents, create)
        rule = self._fifo_rule if flags & OP_RW_RULE else self._read_rule
        if kind == K_MOUNT and self._trees[index] < 0:
            pass  # an optional mount the kernel refused (devpts)
        elif kind == K_MOUNT:
            if create and flags & OP_FILE:
                self._make_file(step, index, d, name, True)
            elif create:
                self._make_dir(step, index, d, name)
            target = self._open_in(step, index, d, name)
            tree = self._trees[index]
            self._sys(step, SYS_move_mount, c_long(tree), b"", c_long(target), b"",
                      c_long(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
                      index=index)  # fmt: skip
            self._syscall(c_long(SYS_close), c_long(tree))
            self._syscall(c_long(SYS_close), c_long(target))
            self._trees[index] = -1
        elif kind == K_MKDIR:
            self._make_dir(step, index, d, name)
            # What exists already must be a directory, not a link to one.
            fd = self._sys(step, SYS_openat2, c_long(d), name, ctypes.byref(self._dir_how),
                           c_long(ctypes.sizeof(_OpenHow)), index=index)  # fmt: skip
            self._syscall(c_long(SYS_close), c_long(fd))
        elif kind == K_SYMLINK:
            self._sys(step, SYS_symlinkat, source, c_long(d), name, index=index)
        else:
            if kind == K_MKFILE:
                self._make_file(step, index, d, name, False)
            elif kind == K_MKFIFO:
                self._sys(step, SYS_mknodat, c_long(d), name, c_long(S_IFIFO | 0o644), c_long(0),
                          index=index)  # fmt: skip
            else:  # K_LINK: source is the existing file, relative to the root
                src = self._open_in(step, index, self._root_fd, source)
                self._sys(step, SYS_linkat, c_long(src), b"", c_long(d), name,
                          c_long(AT_EMPTY_PATH), index=index)  # fmt: skip
                self._syscall(c_long(SYS_close), c_long(src))
            fd = self._open_in(step, index, d, name)
            self._add_rule(step, rule, fd, index)
            self._syscall(c_long(SYS_close), c_long(fd))
        if d != self._root_fd:
            self._syscall(c_long(SYS_close), c_long(d))

    def _mount_masks(self, masks: tuple[tuple[bytes, bool], ...]) -> None:
        c_long = ctypes.c_long
        step = STEP_MASK_STAGING
        fs = self._sys(step, SYS_fsopen, b"tmpfs", c_long(FSOPEN_CLOEXEC))
        self._sys(step, SYS_fsconfig, c_long(fs), c_long(FSCONFIG_CMD_CREATE), None, None,
                  c_long(0))  # fmt: skip
        root = self._sys(step, SYS_fsmount, c_long(fs), c_long(FSMOUNT_CLOEXEC), c_long(0))
        self._sys(step, SYS_mkdirat, c_long(root), b"d", c_long(0))
        f = self._sys(step, SYS_openat, c_long(root), b"f",
                      c_long(O_CREAT | O_WRONLY | O_CLOEXEC), c_long(0))  # fmt: skip
        self._syscall(c_long(SYS_close), c_long(f))
        for path, is_dir in masks:
            index = self._mask_index[path]
            tree = self._sys(STEP_MASK, SYS_open_tree, c_long(root), b"d" if is_dir else b"f",
                             c_long(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), index=index)  # fmt: skip
            self._sys(STEP_MASK, SYS_mount_setattr, c_long(tree), b"", c_long(AT_EMPTY_PATH),
                      ctypes.byref(self._mount_attr), c_long(ctypes.sizeof(_MountAttr)),
                      index=index)  # fmt: skip
            # Reached without following a symlink: one planted since the
            # parent resolved the path cannot redirect the mount.
            target = self._sys(STEP_MASK, SYS_openat2, c_long(-100), path,
                               ctypes.byref(self._open_how), c_long(ctypes.sizeof(_OpenHow)),
                               index=index)  # fmt: skip
            self._sys(STEP_MASK, SYS_move_mount, c_long(tree), b"", c_long(target), b"",
                      c_long(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
                      index=index)  # fmt: skip
            self._syscall(c_long(SYS_close), c_long(tree))
            self._syscall(c_long(SYS_close), c_long(target))
        self._syscall(c_long(SYS_close), c_long(root))
        self._syscall(c_long(SYS_close), c_long(fs))


def _under_proc(path: bytes) -> bool:
    return path == b"/proc" or path.startswith(b"/proc/")


def notify_setup(program: bytes, handoff_fd: int | None) -> dict[str, Any]:
    """ChildSetup arguments for the notify filter: none without a program.

    The filter waits killably once a call was received: a signal then no
    longer interrupts (and restarts) a call the supervisor may already have
    performed, such as a brokered mkdir; a fatal signal still kills.
    """
    if not program or handoff_fd is None:
        return {}
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    return {"notify_filter": PreparedFilter(program, flags), "notify_fd": handoff_fd}


def decode_record(data: bytes) -> tuple[str, int, int]:
    """Turn an error-pipe record into ``(step name, errno, index)``; the
    index names which mask a mask step failed on."""
    value = int.from_bytes(data[:RECORD_SIZE], "little")
    step, err, index = value & 0xFFFF, (value >> 16) & 0xFFFF, value >> 32
    return STEP_NAMES.get(step, f"step {step}"), err, index


def failed_target(
    step: str,
    index: int,
    masks: tuple[tuple[bytes, bool], ...] = (),
    mounts: tuple[tuple[Any, ...], ...] = (),
) -> str:
    """The path a failed mask or mount step was about, for the message."""
    if step == STEP_NAMES[STEP_MASK] and index < len(masks):
        return masks[index][0].decode(errors="replace")
    if step in (STEP_NAMES[s] for s in _MOUNT_STEPS) and index < len(mounts):
        return bytes(mounts[index][1]).decode(errors="replace")
    return ""
