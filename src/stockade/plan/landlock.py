"""Compile filesystem and network rules to a Landlock ruleset description.

Landlock is a union of allow rules over whole trees (or single files) and
TCP ports.  A policy compiles here only when that union is *exactly* the
policy: allow rules must be literal paths or ``LITERAL/***`` trees, and a
deny rule must not fall inside a tree an earlier rule allowed (a later
allow overrides the deny anyway).  Anything else needs a mount mask or the
supervisor and is refused with an error naming the rule, never weakened.
"""

from __future__ import annotations

from stockade._record import record, replace
from stockade.errors import PolicyError, UnsupportedError
from stockade.kernel.landlock import AccessFs, AccessNet, Scope, fs_rights_for_abi, scopes_for_abi
from stockade.policy import patterns
from stockade.policy.model import Action, Category, Policy, PortRange, Rule

#: The Landlock rights each rule category stands for.
CATEGORY_RIGHTS: dict[Category, AccessFs] = {
    Category.READ: AccessFs.READ_FILE | AccessFs.READ_DIR,
    Category.WRITE: AccessFs.WRITE_FILE | AccessFs.TRUNCATE,
    Category.EXEC: AccessFs.EXECUTE,
    Category.CREATE: AccessFs.MAKE_REG
    | AccessFs.MAKE_DIR
    | AccessFs.MAKE_SYM
    | AccessFs.MAKE_FIFO
    | AccessFs.MAKE_SOCK
    | AccessFs.REFER,
    Category.DELETE: AccessFs.REMOVE_FILE | AccessFs.REMOVE_DIR | AccessFs.REFER,
    Category.IOCTL: AccessFs.IOCTL_DEV,
}

#: Rights no rule ever grants: device nodes are never created in a sandbox.
ALWAYS_DENIED = AccessFs.MAKE_CHAR | AccessFs.MAKE_BLOCK

_ABI_OF_RIGHT = {AccessFs.REFER: 2, AccessFs.TRUNCATE: 3, AccessFs.IOCTL_DEV: 5}
_KERNEL_OF_ABI = {1: "5.13", 2: "5.19", 3: "6.2", 4: "6.7", 5: "6.10", 6: "6.12", 7: "6.15"}


@record(frozen=True)
class PathGrant:
    """Allow ``rights`` beneath ``path`` (a tree) or on ``path`` alone."""

    path: str
    rights: AccessFs
    tree: bool
    #: Where the grant came from, for error messages.
    origin: str
    #: The path names a place inside a private root directory (``root =
    #: DIR``): it is opened beneath DIR, not on the host.
    in_root: bool = False


@record(frozen=True)
class LandlockPlan:
    """Everything needed to build one Landlock ruleset."""

    abi: int
    handled_fs: AccessFs
    handled_net: AccessNet
    scoped: Scope
    grants: tuple[PathGrant, ...]
    #: (port, rights) pairs.
    ports: tuple[tuple[int, AccessNet], ...]
    #: Paths hidden under an unreadable mount (needs a mount namespace).
    masks: tuple[str, ...] = ()


@record(frozen=True)
class NetPlan:
    """What the network rules need from the kernel layers."""

    connect_all: bool
    bind_all: bool
    connect_ports: tuple[PortRange, ...]
    bind_ports: tuple[PortRange, ...]
    #: UDP (and other datagram) sockets of the inet families may be created.
    allow_udp: bool


def needs_abi(abi: int, need: int, feature: str, hint: str) -> None:
    """Raise :class:`UnsupportedError` when *abi* is older than *need*."""
    if abi < need:
        raise UnsupportedError(
            feature,
            f"Landlock ABI {need} (Linux {_KERNEL_OF_ABI[need]})",
            f"this kernel has ABI {abi}; {hint}",
        )


#: What ``--deny PATH`` refuses: a mask stands for exactly these.
MASKED_CATEGORIES = frozenset(CATEGORY_RIGHTS)


def compile_fs(
    policy: Policy, abi: int, can_mask: bool = False
) -> tuple[AccessFs, tuple[PathGrant, ...], tuple[str, ...]]:
    """The handled rights, the grants, and the paths to mask.

    A deny inside a tree an earlier rule allowed cannot be a Landlock rule.
    With *can_mask* (a mount namespace is possible) a literal path or tree
    denied for every filesystem category becomes a mask: an unreadable
    empty file or directory mounted over it.  Anything else is refused.
    """
    if Category.STAT in policy.enabled:
        raise PolicyError(
            "stat rules need the supervisor, which this release does not have yet; "
            "use sandbox/stat:off",
            "policy",
            "sandbox/stat:on",
        )
    known = fs_rights_for_abi(abi)
    handled = AccessFs(0)
    grants: dict[tuple[str, bool], tuple[AccessFs, str]] = {}
    masks: set[str] = set()
    for category, rights in CATEGORY_RIGHTS.items():
        if category not in policy.enabled:
            continue
        for right, need in _ABI_OF_RIGHT.items():
            if rights & right and need > abi and right is not AccessFs.REFER:
                needs_abi(
                    abi,
                    need,
                    f"{category} rules ({right.name})",
                    f"turn the category off with -c sandbox/{category}:off to run unrestricted",
                )
        handled |= rights & known
        allowed: list[Rule] = []
        for index, rule in enumerate(policy.rules_for(category)):
            if rule.action is Action.ALLOW:
                _check_allow(rule)
                allowed.append(rule)
                root = patterns.tree_root(rule.pattern)
                key = (root, True) if root is not None else (rule.pattern, False)
                old, origin = grants.get(key, (AccessFs(0), str(rule)))
                grants[key] = (old | (rights & known), origin)
            else:
                for earlier in allowed:
                    if patterns.may_overlap(earlier.pattern, rule.pattern):
                        target = _mask_target(rule, policy, category, index) if can_mask else None
                        if target is None:
                            raise PolicyError(
                                f"a deny inside an allowed tree ({earlier}) needs a mount mask "
                                "(a literal path denied for every access, with no later allow "
                                "inside it) or the supervisor, which this release does not "
                                "have yet",
                                "policy",
                                str(rule),
                            )
                        masks.add(target)
    if Category.READ in policy.enabled:
        _check_exec_readable(grants)
    if handled:
        handled |= ALWAYS_DENIED
    grant_list = tuple(
        PathGrant(path, rights, tree, origin)
        for (path, tree), (rights, origin) in grants.items()
        if rights
    )
    return handled, grant_list, tuple(sorted(masks))


def _mask_target(rule: Rule, policy: Policy, category: Category, index: int) -> str | None:
    """The path a mask may stand for *rule*, or None when a mask would deny
    more than the policy says."""
    root = patterns.tree_root(rule.pattern)
    path = root if root is not None else rule.pattern
    if not patterns.is_literal(path) or path == "/":
        return None
    denied = {
        r.category
        for r in policy.rules
        if r.action is Action.DENY and r.pattern == rule.pattern and r.category in policy.enabled
    }
    if not (MASKED_CATEGORIES & policy.enabled) <= denied:
        return None  # a mask refuses every access, the rules only some
    for later in policy.rules_for(category)[index + 1 :]:
        if later.action is Action.ALLOW and patterns.may_overlap(later.pattern, rule.pattern):
            return None  # a later allow reopens part of it: a mask would hide that
    return path


def _check_exec_readable(grants: dict[tuple[str, bool], tuple[AccessFs, str]]) -> None:
    """Landlock checks READ_FILE as well as EXECUTE when a file is executed
    (execve opens it for reading), so an exec rule with no read rule over
    it would allow nothing.  Refuse it rather than accept a rule that
    cannot work; exec without read needs the supervisor."""
    readable = [
        (path, tree) for (path, tree), (rights, _) in grants.items() if rights & AccessFs.READ_FILE
    ]
    for (path, _tree), (rights, origin) in grants.items():
        if not rights & AccessFs.EXECUTE or rights & AccessFs.READ_FILE:
            continue
        covered = any(
            rpath == path or (rtree and (rpath == "/" or path.startswith(rpath + "/")))
            for rpath, rtree in readable
        )
        if not covered:
            raise PolicyError(
                "executing needs read access too (the kernel reads the file to run it), and "
                "exec without read needs the supervisor, which this release does not have "
                f"yet; add read for {path}",
                "policy",
                origin,
            )


def _check_allow(rule: Rule) -> None:
    if patterns.tree_root(rule.pattern) is None and not patterns.is_literal(rule.pattern):
        raise PolicyError(
            "an allow rule with a glob other than a trailing /*** needs the supervisor, "
            "which this release does not have yet; allow the tree (DIR/***) instead",
            "policy",
            str(rule),
        )


def compile_net(policy: Policy) -> NetPlan:
    """Reduce the network rules to port sets that Landlock and the filter hold."""
    connect_all, connect = _ports(policy, Category.NET_CONNECT)
    bind_all, bind = _ports(policy, Category.NET_BIND)
    allow_udp = Category.NET_SEND not in policy.enabled
    for rule in policy.rules_for(Category.NET_SEND):
        if rule.pattern not in ("*!*",):
            raise PolicyError(
                "datagram rules for particular addresses or ports need the supervisor, "
                "which this release does not have yet; allow/net/send+*!* allows all UDP",
                "policy",
                str(rule),
            )
        allow_udp = rule.action is Action.ALLOW or Category.NET_SEND not in policy.enabled
    return NetPlan(connect_all, bind_all, connect, bind, allow_udp)


def _ports(policy: Policy, category: Category) -> tuple[bool, tuple[PortRange, ...]]:
    if category not in policy.enabled:
        return True, ()
    ports: set[int] = set()
    everything = False
    allowed: list[tuple[Rule, frozenset[int] | None]] = []
    for rule in policy.rules_for(category):
        host, _, port_text = rule.pattern.rpartition("!")
        if host != "*":
            raise PolicyError(
                "rules for particular addresses or hostnames need the supervisor, "
                "which this release does not have yet; only *:PORTS rules are enforced",
                "policy",
                str(rule),
            )
        span = _expand(port_text)
        if rule.action is Action.ALLOW:
            allowed.append((rule, span))
            if span is None:
                everything = True
            else:
                ports |= span
        else:
            for earlier, espan in allowed:
                if espan is None or span is None or espan & span:
                    raise PolicyError(
                        f"a deny inside allowed ports ({earlier}) needs the supervisor, "
                        "which this release does not have yet",
                        "policy",
                        str(rule),
                    )
    return everything, _ranges(ports)


def _expand(text: str) -> frozenset[int] | None:
    if text == "*":
        return None
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    if len(out) == 65536:
        return None
    return frozenset(out)


def _ranges(ports: set[int]) -> tuple[PortRange, ...]:
    out: list[PortRange] = []
    for port in sorted(ports):
        if out and out[-1].last == port - 1:
            out[-1] = PortRange(out[-1].first, port)
        else:
            out.append(PortRange(port, port))
    return tuple(out)


def all_rights() -> AccessFs:
    """Every right a rule category stands for (what a writable tree gets)."""
    everything = AccessFs(0)
    for rights in CATEGORY_RIGHTS.values():
        everything |= rights
    return everything


def mount_grants(policy: Policy, handled: AccessFs) -> tuple[PathGrant, ...]:
    """What binds grant at their destination (SPEC section 2: ``:ro`` read,
    otherwise read-write).

    Landlock's walk up a path skips a hidden mount point, so a rule on the
    destination's own inode never covers what is mounted over it; the bind
    root *is* the source's inode, so the rule goes there.  (Without a
    private root the source is then reachable under its own path too, with
    the same access.)  A tmpfs has no inode until the child mounts it: the
    child adds that rule itself (see ``tmpfs_rights``).
    """
    read = CATEGORY_RIGHTS[Category.READ] | CATEGORY_RIGHTS[Category.EXEC]
    out = [
        PathGrant(b.src, (read if b.readonly else all_rights()) & handled, True, f"--bind {b}")
        for b in policy.binds
    ]
    return tuple(g for g in out if g.rights)


def tmpfs_rights(handled: AccessFs) -> AccessFs:
    """What a ``--tmpfs`` grants beneath it: read-write."""
    return all_rights() & handled


def compile_landlock(
    policy: Policy, net: NetPlan, abi: int, can_mask: bool = False
) -> LandlockPlan:
    """The Landlock ruleset for *policy* on a kernel with ABI *abi*."""
    handled_fs, grants, masks = compile_fs(policy, abi, can_mask)
    if policy.root not in (None, "tmpfs"):
        # Under root = DIR the sandbox's /usr is DIR/usr.
        grants = tuple(replace(g, in_root=True) for g in grants)
    grants += mount_grants(policy, handled_fs)
    handled_net = AccessNet(0)
    port_rules: list[tuple[int, AccessNet]] = []
    wants_net = not (net.connect_all and net.bind_all)
    if wants_net and abi >= 4:
        by_port: dict[int, AccessNet] = {}
        if not net.connect_all:
            handled_net |= AccessNet.CONNECT_TCP
            for rng in net.connect_ports:
                for port in range(rng.first, rng.last + 1):
                    by_port[port] = by_port.get(port, AccessNet(0)) | AccessNet.CONNECT_TCP
        if not net.bind_all:
            handled_net |= AccessNet.BIND_TCP
            for rng in net.bind_ports:
                for port in range(rng.first, rng.last + 1):
                    by_port[port] = by_port.get(port, AccessNet(0)) | AccessNet.BIND_TCP
        port_rules = sorted(by_port.items())
    elif wants_net and (net.connect_ports or net.bind_ports):
        needs_abi(abi, 4, "TCP port rules", "without it only all-or-nothing TCP is possible")
    return LandlockPlan(
        abi=abi,
        handled_fs=handled_fs,
        handled_net=handled_net,
        scoped=scopes_for_abi(abi),
        grants=grants,
        ports=tuple(port_rules),
        masks=masks,
    )
