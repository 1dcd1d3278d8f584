"""Compile filesystem and network rules to a Landlock ruleset description.

Landlock is a union of allow rules over whole trees (or single files) and
TCP ports.  A category compiles here exactly when that union is the
category's rules: allow rules are literal paths or ``LITERAL/***`` trees,
and a deny falls inside no tree an earlier rule allowed, or is carried by
a mount mask (a literal path denied for every access, with no later allow
inside it).

Anything else is *routed* to the supervisor (:mod:`stockade.plan.notify`),
and Landlock keeps the category as an outer bound that never denies what
the supervisor would allow: each allow rule grants its literal prefix tree
(``/usr/lib/*.so`` grants ``/usr/lib/***``), each port rule its ports
whatever the address.  Nothing is weakened: the supervisor then decides
every system call of the category with the rules' exact meaning.
"""

from __future__ import annotations

from collections.abc import Callable

from stockade._record import record, replace
from stockade.errors import UnsupportedError
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
    #: Filesystem categories whose grants are only an outer bound: the
    #: supervisor decides them.
    routed: frozenset[Category] = frozenset()


@record(frozen=True)
class NetPlan:
    """What the network rules need from the kernel layers."""

    connect_all: bool
    bind_all: bool
    connect_ports: tuple[PortRange, ...]
    bind_ports: tuple[PortRange, ...]
    #: UDP (and other datagram) sockets of the inet families may be created.
    allow_udp: bool
    #: Network categories whose port sets are only an outer bound: the
    #: supervisor decides them.
    routed: frozenset[Category] = frozenset()


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
    policy: Policy,
    abi: int,
    can_mask: bool = False,
    is_dir: Callable[[str], bool] | None = None,
    exists: Callable[[str], bool] | None = None,
) -> tuple[AccessFs, tuple[PathGrant, ...], tuple[str, ...], frozenset[Category]]:
    """The handled rights, the grants, the paths to mask, and the
    categories routed to the supervisor.

    A deny inside a tree an earlier rule allowed cannot be a Landlock rule.
    With *can_mask* (a mount namespace is possible) a literal path or tree
    denied for every filesystem category becomes a mask: an unreadable
    empty file or directory mounted over it.  Anything else routes its
    category, whose grants then bound what the supervisor may allow.

    *is_dir* (``os.path.isdir`` from the launcher; None in pure use) finds
    literal allow rules that name a directory: Landlock cannot allow a
    directory without what is beneath it, so such a rule routes too.
    *exists* (``os.path.exists``) finds paths that do not exist yet where
    the sandbox may create them.  A mask needs something to cover, so such
    a deny routes its categories; and Landlock can only grant what exists
    when the ruleset is made, so such an allow routes its category too,
    bounded by the nearest existing ancestor's tree.
    """
    known = fs_rights_for_abi(abi)
    handled = AccessFs(0)
    grants: dict[tuple[str, bool], tuple[AccessFs, str]] = {}
    masks: set[str] = set()
    routed: set[Category] = set()
    if Category.STAT in policy.enabled:
        routed.add(Category.STAT)  # no kernel layer mediates stat(2)
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
        rules = policy.rules_for(category)
        if any(r.action is Action.ALLOW and not _exact_allow(r, category, is_dir) for r in rules):
            routed.add(category)
        later = {
            r.pattern
            for r in rules
            if r.action is Action.ALLOW and _appears_later(r.pattern, policy, exists)
        }
        if later:
            routed.add(category)
        allowed: list[Rule] = []
        for index, rule in enumerate(rules):
            if rule.action is Action.ALLOW:
                allowed.append(rule)
                continue
            if not any(patterns.may_overlap(e.pattern, rule.pattern) for e in allowed):
                continue  # denied by default already
            target = _mask_target(rule, policy, category, index, exists) if can_mask else None
            if target is None:
                routed.add(category)
            else:
                masks.add(target)
        for rule in allowed:
            key = _bound(rule.pattern, category in routed, category in NAMED_IN_PARENT)
            if rule.pattern in later or (category in NAMED_IN_PARENT and exists is not None):
                key = _existing_bound(key, exists)
            old, origin = grants.get(key, (AccessFs(0), str(rule)))
            grants[key] = (old | (rights & known), origin)
    if Category.READ in policy.enabled and _grant_read_for_exec(grants):
        routed.add(Category.READ)
    if handled:
        handled |= ALWAYS_DENIED
    grant_list = tuple(
        PathGrant(path, rights, tree, origin)
        for (path, tree), (rights, origin) in grants.items()
        if rights
    )
    return handled, grant_list, tuple(sorted(masks)), frozenset(routed)


#: Categories whose Landlock rights are checked on the parent directory
#: (making or removing an entry), so a rule on one literal name cannot be a
#: Landlock rule: a file takes no directory rights, and a missing path none.
NAMED_IN_PARENT = frozenset({Category.CREATE, Category.DELETE})


def _exact_allow(rule: Rule, category: Category, is_dir: Callable[[str], bool] | None) -> bool:
    if patterns.tree_root(rule.pattern) is not None:
        return True
    if not patterns.is_literal(rule.pattern) or category in NAMED_IN_PARENT:
        return False
    return is_dir is None or not is_dir(rule.pattern)


def _appears_later(pattern: str, policy: Policy, exists: Callable[[str], bool] | None) -> bool:
    """Whether the path an allow rule grants on is missing now but could be
    created by the sandbox (a create rule reaches it, or create is off)."""
    if exists is None:
        return False
    root = patterns.tree_root(pattern)
    path = root if root is not None else patterns.literal_prefix(pattern)
    if exists(path):
        return False
    if Category.CREATE not in policy.enabled:
        return True
    return any(
        r.action is Action.ALLOW and patterns.may_overlap(r.pattern, path)
        for r in policy.rules_for(Category.CREATE)
    )


def _existing_bound(
    key: tuple[str, bool], exists: Callable[[str], bool] | None
) -> tuple[str, bool]:
    """*key* moved up to the nearest existing directory, as a tree: a grant
    on a missing path would be skipped when the ruleset is made."""
    path = key[0]
    if exists is None or exists(path):
        return key
    while path != "/" and not exists(path):
        path = path.rsplit("/", 1)[0] or "/"
    return path, True


def _bound(pattern: str, routed: bool, in_parent: bool) -> tuple[str, bool]:
    """The Landlock grant ``(path, tree)`` for an allow rule: exact for a
    literal or a tree; the literal prefix tree for a glob.  In a routed
    category a literal path is granted as a tree too, so that a directory
    allowed alone (which Landlock cannot grant without its contents) is
    still reachable for the supervisor to decide; for create and delete
    the right lives on the parent directory, so the parent's tree is the
    bound."""
    root = patterns.tree_root(pattern)
    if root is not None:
        return root, True
    if patterns.is_literal(pattern):
        if in_parent:
            return pattern.rsplit("/", 1)[0] or "/", True
        return pattern, routed
    # A glob's literal prefix ends before its first glob component, so the
    # parent of every match is at or beneath it.
    return patterns.literal_prefix(pattern), True


def _mask_target(
    rule: Rule,
    policy: Policy,
    category: Category,
    index: int,
    exists: Callable[[str], bool] | None = None,
) -> str | None:
    """The path a mask may stand for *rule*, or None when a mask would deny
    more than the policy says, or could not cover the path (missing, where
    the sandbox may create it)."""
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
    if exists is not None and not exists(path):
        creatable = any(
            r.action is Action.ALLOW and patterns.may_overlap(r.pattern, rule.pattern)
            for r in policy.rules_for(Category.CREATE)
        )
        if creatable and Category.CREATE in policy.enabled:
            return None  # nothing to mount over, and the sandbox could create it
    return path


def _grant_read_for_exec(grants: dict[tuple[str, bool], tuple[AccessFs, str]]) -> bool:
    """Landlock checks READ_FILE as well as EXECUTE when a file is executed
    (execve opens it for reading), so an exec grant with no read grant over
    it would allow nothing.  Add READ_FILE to such grants and return True:
    ``read`` is then routed, and the supervisor keeps plain reads there
    denied (SPEC: exec does not imply read)."""
    readable = [
        (path, tree) for (path, tree), (rights, _) in grants.items() if rights & AccessFs.READ_FILE
    ]
    widened = False
    for key, (rights, origin) in list(grants.items()):
        path = key[0]
        if not rights & AccessFs.EXECUTE or rights & AccessFs.READ_FILE:
            continue
        covered = any(
            rpath == path or (rtree and (rpath == "/" or path.startswith(rpath + "/")))
            for rpath, rtree in readable
        )
        if not covered:
            grants[key] = (rights | AccessFs.READ_FILE, origin)
            widened = True
    return widened


def compile_net(policy: Policy) -> NetPlan:
    """Reduce the network rules to port sets that Landlock and the filter
    hold; rules with addresses or hostnames, denies inside allowed ports
    and datagram rules for particular targets are routed."""
    connect_all, connect, connect_routed = _ports(policy, Category.NET_CONNECT)
    bind_all, bind, bind_routed = _ports(policy, Category.NET_BIND)
    routed = {Category.NET_CONNECT} if connect_routed else set()
    if bind_routed:
        routed.add(Category.NET_BIND)
    allow_udp = Category.NET_SEND not in policy.enabled
    for rule in policy.rules_for(Category.NET_SEND):
        if rule.pattern != "*!*":
            routed.add(Category.NET_SEND)
        allow_udp = rule.action is Action.ALLOW or Category.NET_SEND not in policy.enabled
    if Category.NET_SEND in routed:
        # The supervisor decides each datagram's destination (sendto,
        # sendmsg, sendmmsg, and connect on a datagram socket).
        allow_udp = True
    return NetPlan(connect_all, bind_all, connect, bind, allow_udp, frozenset(routed))


def _ports(policy: Policy, category: Category) -> tuple[bool, tuple[PortRange, ...], bool]:
    """(every port, the ports Landlock allows, routed) for *category*."""
    if category not in policy.enabled:
        return True, (), False
    ports: set[int] = set()
    everything = False
    routed = False
    allowed: list[frozenset[int] | None] = []
    for rule in policy.rules_for(category):
        host, _, port_text = rule.pattern.rpartition("!")
        span = _expand(port_text)
        if host != "*":
            routed = True
        if rule.action is Action.ALLOW:
            allowed.append(span)
            if span is None:
                everything = True
            else:
                ports |= span
        elif any(espan is None or span is None or espan & span for espan in allowed):
            routed = True  # a deny inside allowed ports
    return everything, _ranges(ports), routed


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
    policy: Policy,
    net: NetPlan,
    abi: int,
    can_mask: bool = False,
    is_dir: Callable[[str], bool] | None = None,
    exists: Callable[[str], bool] | None = None,
) -> LandlockPlan:
    """The Landlock ruleset for *policy* on a kernel with ABI *abi*."""
    handled_fs, grants, masks, routed = compile_fs(policy, abi, can_mask, is_dir, exists)
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
        routed=routed,
    )
