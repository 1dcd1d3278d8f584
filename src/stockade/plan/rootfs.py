"""A private root (``root = "tmpfs"`` or ``root = DIR``): what it contains.

Under ``root = "tmpfs"`` the sandbox sees an empty tmpfs and only what is
put into it, so the policy's own access rules say what goes in: every
path a rule allows (``-r``, ``-w``, ``-x``, ``allow/...+P/***``) is bound
at the same path, read-only unless the rule allows writing, creating or
deleting there.  A Landlock rule on the host path still matches the bind,
since a bind shares the host's inodes.  Paths that do not exist on the
host are skipped, as their Landlock rules are.  ``/proc`` and ``/dev`` are
not bound from the host: the root has an empty ``/proc`` (for a private
procfs) and a minimal ``/dev``.

Under ``root = DIR`` the sandbox sees DIR, and the access rules name paths
inside it (``-r /usr`` is DIR/usr; see ``PathGrant.in_root``).  Nothing is
ever created in DIR: mount points there must exist.

Both get the minimal ``/dev`` (a tmpfs: the host's null, zero, full,
random, urandom and tty bound in, ``shm`` as a tmpfs, ``fd``, ``stdin``,
``stdout`` and ``stderr`` as links into ``/proc/self/fd``), with the
Landlock rights those nodes need; under DIR only when DIR has a ``/dev``.
"""

from __future__ import annotations

from stockade.errors import PolicyError
from stockade.kernel.landlock import FILE_RIGHTS, AccessFs
from stockade.plan.landlock import CATEGORY_RIGHTS, PathGrant
from stockade.policy.model import Bind, Category, Policy

#: Host device nodes bound into a private /dev, and the categories allowed on them.
DEV_NODES: tuple[tuple[str, tuple[Category, ...]], ...] = (
    ("null", (Category.READ, Category.WRITE, Category.IOCTL)),
    ("zero", (Category.READ, Category.WRITE, Category.IOCTL)),
    ("full", (Category.READ, Category.WRITE, Category.IOCTL)),
    ("random", (Category.READ,)),
    ("urandom", (Category.READ,)),
    ("tty", (Category.READ, Category.WRITE, Category.IOCTL)),
)

#: Links made in a private /dev: (name, target).
DEV_LINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)

#: Trees a tmpfs root never takes from the host.
NOT_BOUND = ("/proc", "/dev")

_WRITING = (
    CATEGORY_RIGHTS[Category.WRITE]
    | CATEGORY_RIGHTS[Category.CREATE]
    | CATEGORY_RIGHTS[Category.DELETE]
) & ~AccessFs.REFER


def beneath(path: str, top: str) -> bool:
    """Whether *path* is *top* or inside it (both normalised, absolute)."""
    return top in (path, "/") or path.startswith(top + "/")


def root_binds(policy: Policy, grants: tuple[PathGrant, ...]) -> tuple[Bind, ...]:
    """The binds a tmpfs root gets from the access rules (none for DIR)."""
    if policy.root != "tmpfs":
        return ()
    out: list[Bind] = []
    for grant in grants:
        if any(beneath(grant.path, top) for top in NOT_BOUND):
            continue
        if grant.path == "/":
            raise PolicyError(
                "a rule on / would bind the host's whole root into the private root; "
                "allow the directories the command needs instead (-r /usr -r /lib ...)",
                "policy",
                grant.origin,
            )
        out.append(Bind(grant.path, grant.path, readonly=not grant.rights & _WRITING))
    return tuple(out)


def dev_grants(handled: AccessFs) -> tuple[PathGrant, ...]:
    """Landlock rights on the host device nodes a private /dev binds (the
    binds share their inodes, so rules on the host paths match them)."""
    out: list[PathGrant] = []
    for name, categories in DEV_NODES:
        rights = AccessFs(0)
        for category in categories:
            rights |= CATEGORY_RIGHTS[category]
        rights &= handled & FILE_RIGHTS
        if rights:
            out.append(PathGrant(f"/dev/{name}", rights, False, "private /dev"))
    return tuple(out)


def check_root(policy: Policy, binds: tuple[Bind, ...]) -> None:
    """Refuse what a private root cannot do as asked."""
    entries = {
        "mkdir": policy.mkdir,
        "mkfile": policy.mkfile,
        "mkfifo": policy.mkfifo,
        "symlink": tuple(path for _, path in policy.symlink),
        "link": tuple(path for _, path in policy.link),
    }
    made = any(entries.values())
    if made and policy.root != "tmpfs":
        key = next(k for k, v in entries.items() if v)
        raise PolicyError(
            'entries are made only inside root = "tmpfs" (never in a directory of the host)',
            "policy",
            key,
        )
    if policy.root is None:
        return
    mounted = [b.dst for b in (*binds, *policy.binds)] + list(policy.tmpfs) + ["/dev"]
    if policy.private_tmp:
        mounted.append("/tmp")  # noqa: S108 - the private root's own tmpfs
    for bind in policy.binds:
        if bind.dst == "/":
            raise PolicyError(
                "a bind over the private root's / hides it; use root = DIR instead",
                "policy",
                f"--bind {bind}",
            )
    for key, paths in entries.items():
        for path in paths:
            for top in mounted:
                if path != top and beneath(path, top):
                    raise PolicyError(
                        f"{path} is inside {top}, which is mounted over the root: entries are "
                        "made only on the tmpfs root itself",
                        "policy",
                        key,
                    )
    for target, _path in policy.link:
        for top in mounted:
            if beneath(target, top):
                raise PolicyError(
                    f"a hard link joins files of one filesystem, and {target} is inside "
                    f"{top}; link a file made with mkfile, or use symlink",
                    "policy",
                    "link",
                )
