"""What the child does, as plain keyword arguments for ChildSetup.

One place turns an :class:`EnforcementPlan` into :class:`ChildSetup`
arguments, whether the child is forked here or by the fork server (the
arguments travel in the request; descriptors travel beside it).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from stockade.errors import PolicyError
from stockade.kernel import caps
from stockade.kernel.landlock import AccessFs
from stockade.launch.rootfs import root_options

if TYPE_CHECKING:  # the fork server imports this module: keep it light
    from stockade.plan import EnforcementPlan


def child_options(plan: EnforcementPlan, terminal: str | None = None) -> dict[str, Any]:
    """ChildSetup keyword arguments for *plan* (all picklable); *terminal*
    is the slave of the run's own pseudo-terminal (``pty``)."""
    policy = plan.policy
    id_maps = None
    if "user" in plan.namespaces:
        uid, gid = os.getuid(), os.getgid()
        inside_uid, inside_gid = (0, 0) if policy.map_root else (uid, gid)
        # The maps name the ids of the process that forks the child: the
        # fork server runs as the same user as its host.
        id_maps = (f"{inside_uid} {uid} 1".encode(), f"{inside_gid} {gid} 1".encode())
    return {
        "rlimits": plan.rlimits,
        "personality": plan.personality,
        "no_thp": policy.no_thp,
        "cpus": policy.cpus,
        "drop_caps": plan.drop_caps,
        "subreaper": True,
        "namespaces": plan.namespaces,
        "id_maps": id_maps,
        "loopback": plan.loopback,
        "hostname": policy.hostname,
        "masks": resolve_masks(plan),
        "mounts": resolve_mounts(plan) if policy.root is None else (),
        "tmpfs_rights": plan.tmpfs_rights,
        **root_options(plan, terminal),
        # stdin is then the slave of a pseudo-terminal made for this run.
        "controlling_tty": policy.pty,
    }


def resolve_mounts(plan: EnforcementPlan) -> tuple[tuple[bytes, bytes, bool], ...]:
    """Binds and tmpfs mounts as ``(source, destination, readonly)``, both
    paths resolved here (an empty source is a fresh tmpfs).  Without a
    private root the destination must already exist, as what the source is:
    a directory over a directory, a file over a file."""
    policy = plan.policy
    out: list[tuple[bytes, bytes, bool]] = []
    for bind in policy.binds:
        src, dst = os.path.realpath(bind.src), os.path.realpath(bind.dst)
        src_st, dst_st = _stat(src, f"--bind {bind}"), _stat(dst, f"--bind {bind}")
        if stat.S_ISDIR(src_st.st_mode) != stat.S_ISDIR(dst_st.st_mode):
            raise PolicyError(
                f"{bind.src} and {bind.dst} must both be directories or both files",
                "policy",
                f"--bind {bind}",
            )
        out.append((os.fsencode(src), os.fsencode(dst), bind.readonly))
    for path in policy.tmpfs:
        dst = os.path.realpath(path)
        if not stat.S_ISDIR(_stat(dst, f"--tmpfs {path}").st_mode):
            raise PolicyError(f"{path} is not a directory", "policy", f"--tmpfs {path}")
        out.append((b"", os.fsencode(dst), False))
    return tuple(out)


def _stat(path: str, origin: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as err:
        raise PolicyError(
            f"{path}: {err.strerror}; without a private root (--root) the mount point must exist",
            "policy",
            origin,
        ) from None


def resolve_masks(plan: EnforcementPlan) -> tuple[tuple[bytes, bool], ...]:
    """Each mask as ``(real path, is_dir)``, the path resolved here, so that
    the child can reach it without following any symlink.

    A missing path inside a writable tree is refused: the sandbox could
    create it, and nothing would be masked.  A missing path elsewhere needs
    no mask: nothing there can be read, and nothing can be created.
    """
    out: list[tuple[bytes, bool]] = []
    writable = [
        g.path for g in plan.landlock.grants if g.rights & (AccessFs.MAKE_REG | AccessFs.MAKE_DIR)
    ]
    root = plan.policy.root
    inside = root if root is not None and root != "tmpfs" else None
    for path in plan.landlock.masks:
        # Under root = DIR the path is DIR's, taken as written: the child
        # refuses any symlink on the way (ELOOP).
        real = path if inside else os.path.realpath(path)
        try:
            st = os.lstat(os.path.join(inside, path.lstrip("/"))) if inside else os.stat(real)
        except FileNotFoundError:
            if any(real == w or real.startswith(w.rstrip("/") + "/") for w in writable):
                raise PolicyError(
                    f"{path} does not exist inside a writable tree: the sandbox could create "
                    "it, and a mount mask needs something to cover (the supervisor will "
                    "enforce this)",
                    "policy",
                    "deny",
                ) from None
            continue
        out.append((os.fsencode(real), stat.S_ISDIR(st.st_mode)))
    return tuple(out)


def bounding_to_drop(
    drop_caps: bool, namespaces: frozenset[str], bounding_empty: bool
) -> int | None:
    """What the child must drop of the bounding set: None when the forking
    process has none left to pass on (*bounding_empty*: the fork server of a
    root host empties its own once).  Entering a new user namespace resets
    the bounding set to full, so then the child always drops it."""
    if not drop_caps:
        return None
    if "user" not in namespaces and bounding_empty:
        return None
    return caps.cap_last()
