"""The parent's half of a private root: the child's operations, as data.

:func:`root_ops` turns a plan with ``policy.root`` into the ordered list
of operations :meth:`stockade.launch.child.ChildSetup.run` performs inside
the new root before ``pivot_root``.  Each is ``(source, target, flags,
parents, name)``: ``target`` is the absolute path inside the sandbox (for
messages), ``parents`` and ``name`` its components (walked one at a time
from the root, never following a symlink), ``flags`` an ``OP_*`` set with
the kind in bits 8 and up.

The order:

1. entries (``mkdir``, ``mkfile``, ``mkfifo``, ``symlink``, ``link``), on
   the tmpfs root itself, before anything is mounted over it: nothing is
   ever made inside a bind, so nothing is made on the host;
2. mounts, parents before children (a stable sort on depth, so the
   user's order holds among equals): the minimal ``/dev`` first, with its
   links made right after its tmpfs is mounted, then the binds and tmpfs
   mounts.  A mount point is created only where the nearest mount above it
   is a tmpfs of ours (or the tmpfs root); beneath a bind, or in a root
   directory of the host, it must exist.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from stockade.errors import PolicyError
from stockade.kernel.landlock import AccessFs
from stockade.plan.rootfs import DEV_LINKS, DEV_NODES, beneath

if TYPE_CHECKING:  # the fork server imports this module: keep it light
    from stockade.plan import EnforcementPlan

#: Mount read-only (and immutable).
OP_RO = 0x1
#: Create the mount point (and its parents) if missing.
OP_CREATE = 0x2
#: The mount point is a file.
OP_FILE = 0x4
#: A device node bind: no MOUNT_ATTR_NODEV.
OP_DEV = 0x8
#: Grant read-write beneath this tmpfs (Landlock), or read-write on a FIFO.
OP_RW_RULE = 0x10
#: Grant listing directories beneath this mount (Landlock).
OP_LIST_RULE = 0x20
#: Grant reading this file (Landlock).
OP_READ_RULE = 0x40
#: A private devpts instance (skipped where the kernel refuses one).
OP_DEVPTS = 0x80

#: Kinds, in ``flags >> 8``.
K_MOUNT = 0
K_MKDIR = 1
K_MKFILE = 2
K_MKFIFO = 3
K_SYMLINK = 4
K_LINK = 5

#: What a private devpts allows: opening, using and resizing its ptys.
PTS_RIGHTS = AccessFs.READ_FILE | AccessFs.WRITE_FILE | AccessFs.TRUNCATE | AccessFs.IOCTL_DEV

Op = tuple[bytes, bytes, int, tuple[bytes, ...], bytes]


def _parts(path: str) -> tuple[tuple[bytes, ...], bytes]:
    names = [os.fsencode(p) for p in path.split("/") if p]
    return tuple(names[:-1]), names[-1]


def _op(source: bytes, target: str, flags: int, kind: int = K_MOUNT) -> Op:
    parents, name = _parts(target)
    return (source, os.fsencode(target), flags | (kind << 8), parents, name)


def root_options(plan: EnforcementPlan, terminal: str | None = None) -> dict[str, Any]:
    """ChildSetup keyword arguments for a private root (empty without one).
    *terminal*, the run's own pseudo-terminal, is bound at /dev/console."""
    policy = plan.policy
    if policy.root is None:
        return {}
    handled = plan.landlock.handled_fs
    if policy.root != "tmpfs":
        try:
            is_dir = stat.S_ISDIR(os.stat(policy.root).st_mode)
        except OSError as err:
            raise PolicyError(f"{policy.root}: {err.strerror}", "policy", "root") from None
        if not is_dir:
            raise PolicyError(f"{policy.root} is not a directory", "policy", "root")
    if policy.cwd is not None:
        _check_cwd(plan, policy.cwd)
    return {
        "root": b"" if policy.root == "tmpfs" else os.fsencode(os.path.realpath(policy.root)),
        "mounts": root_ops(plan, terminal),
        "root_cwd": os.fsencode(policy.cwd) if policy.cwd is not None else None,
        "root_rights": (
            int(AccessFs.READ_DIR & handled),
            int(AccessFs.READ_FILE & handled),
            int((AccessFs.READ_FILE | AccessFs.WRITE_FILE) & handled),
            int(PTS_RIGHTS & handled),
        ),
    }


def root_ops(plan: EnforcementPlan, terminal: str | None = None) -> tuple[Op, ...]:
    """The child's operations for *plan*'s private root, in order."""
    policy = plan.policy
    tmpfs_root = policy.root == "tmpfs"
    ops: list[Op] = []
    if tmpfs_root:
        # An empty /proc for the procfs of a pid namespace to go on.
        ops.append(_op(b"", "/proc", 0, K_MKDIR))
        ops.extend(_op(b"", p, 0, K_MKDIR) for p in policy.mkdir)
        ops.extend(_op(b"", p, OP_READ_RULE, K_MKFILE) for p in policy.mkfile)
        ops.extend(_op(b"", p, OP_RW_RULE, K_MKFIFO) for p in policy.mkfifo)
        ops.extend(_op(os.fsencode(t), p, 0, K_SYMLINK) for t, p in policy.symlink)
        # A hard link's source is reached from the root fd: relative.
        ops.extend(_op(os.fsencode(t.lstrip("/")), p, OP_READ_RULE, K_LINK) for t, p in policy.link)
    # (destination, source or None for a tmpfs, flags, ops made right after it)
    mounts: list[tuple[str, str | None, int, list[Op]]] = []
    if tmpfs_root or _has_dev(policy.root):
        links = [_op(os.fsencode(t), f"/dev/{n}", 0, K_SYMLINK) for n, t in DEV_LINKS]
        mounts.append(("/dev", None, OP_LIST_RULE, links))
        for name, _ in DEV_NODES:
            node = f"/dev/{name}"
            try:
                is_char = stat.S_ISCHR(os.lstat(node).st_mode)
            except OSError:
                is_char = False
            if is_char:  # a host without it (some containers) goes without
                mounts.append((node, node, OP_DEV | OP_FILE, []))
        mounts.append(("/dev/pts", None, OP_DEVPTS, []))
        if terminal is not None:
            # The host's /dev/pts is not in the root: bound here, the run's
            # terminal has a name (ttyname finds it by inode), as under
            # bubblewrap.  The descriptors, not the name, are what it uses.
            mounts.append(("/dev/console", terminal, OP_DEV | OP_FILE, []))
        mounts.append(("/dev/shm", None, OP_RW_RULE, []))  # noqa: S108 - a fresh tmpfs, mounted
    for bind in (*plan.root_binds, *policy.binds):
        try:
            st = os.stat(bind.src)
        except FileNotFoundError:
            if bind in plan.root_binds:
                continue  # a rule on a path this host lacks allows nothing
            raise PolicyError(
                f"{bind.src}: no such file or directory", "policy", f"--bind {bind}"
            ) from None
        except OSError as err:
            raise PolicyError(f"{bind.src}: {err.strerror}", "policy", f"--bind {bind}") from None
        flags = (OP_RO if bind.readonly else 0) | (0 if stat.S_ISDIR(st.st_mode) else OP_FILE)
        mounts.append((bind.dst, os.path.realpath(bind.src), flags, []))
    mounts.extend((dst, None, OP_RW_RULE, []) for dst in policy.tmpfs)
    if policy.private_tmp:
        # The private temporary directory of the default profile: a tmpfs
        # is private, empty, writable, and gone with the sandbox.
        mounts.append(("/tmp", None, OP_RW_RULE, []))  # noqa: S108 - a fresh tmpfs
    mounts.sort(key=lambda m: m[0].count("/") - (m[0] == "/"))
    placed: list[tuple[str, bool]] = []  # (destination, is one of our tmpfs)
    for dst, src, flags, after in mounts:
        enclosing = None
        for top, ours in reversed(placed):
            if top != dst and beneath(dst, top):
                enclosing = ours
                break
        create = tmpfs_root if enclosing is None else enclosing
        ops.append(_op(b"" if src is None else os.fsencode(src), dst, flags | (OP_CREATE * create)))
        ops.extend(after)
        placed.append((dst, src is None))
    return tuple(ops)


def _check_cwd(plan: EnforcementPlan, cwd: str) -> None:
    """Refuse a working directory the private root will not have, by name
    (the child would fail too, but could not say which directory)."""
    policy = plan.policy
    found = False
    if policy.root != "tmpfs":
        found = os.path.isdir(os.path.join(os.path.realpath(policy.root or "/"), cwd.lstrip("/")))
    else:
        binds = (*plan.root_binds, *policy.binds)
        made = ["/", "/proc", "/dev", *policy.mkdir, *policy.tmpfs, *(b.dst for b in binds)]
        if policy.private_tmp:
            made.append("/tmp")  # noqa: S108 - the private root's own tmpfs
        # The directory is made (or is the parent of something made) ...
        found = any(beneath(path, cwd) for path in made)
        # ... or lies in a bind whose source has it.
        found = found or any(
            beneath(cwd, b.dst) and os.path.isdir(os.path.join(b.src, os.path.relpath(cwd, b.dst)))
            for b in binds
        )
    if not found:
        raise PolicyError(f"{cwd} does not exist inside the private root", "policy", "cwd")


def _has_dev(root: str | None) -> bool:
    """Whether a root directory has a real /dev directory to mount over."""
    if root is None:
        return False
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(root, "dev")).st_mode)
    except OSError:
        return False
