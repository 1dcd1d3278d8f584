"""What the supervisor decides, and which system calls reach it.

Pure: no system calls happen here (hostname rules resolve through a
resolver the caller passes in, see below).  :func:`compile_notify` turns a
policy into a :class:`NotifyPlan`, or ``None`` when every rule is enforced
by the kernel layers (DESIGN decision 1: a static rule that Landlock, a
mount mask or BPF expresses exactly never costs a round trip).

Which categories go to the supervisor
=====================================

The Landlock compiler (:mod:`stockade.plan.landlock`) marks a category
*routed* when Landlock cannot hold its rules exactly:

* an allow rule with a glob other than a trailing ``/***``;
* a ``create`` or ``delete`` rule for one name (not a tree): Landlock
  checks those rights on the parent directory, so it cannot grant them
  for one entry;
* a deny inside a tree an earlier rule allowed that a mount mask cannot
  carry (a glob, a deny of only some categories, a later allow inside it,
  or no mount namespace);
* ``stat`` when it is on: no kernel layer mediates stat(2) at all;
* ``read`` when an exec rule has no read rule over it: the kernel opens a
  file for reading to execute it, so Landlock must grant ``READ_FILE``
  there, and the supervisor then keeps plain reads of it denied;
* network rules naming an address, a CIDR or a hostname, a deny inside
  allowed ports, and any ``net/send`` rule other than ``*!*``.

For a routed category Landlock stays on as an **outer bound**: it grants
the literal prefix tree of each allow rule (``/usr/lib/*.so`` grants
``/usr/lib/***``; a literal path grants itself and, if it is a directory,
what is beneath it) and the union of the ports of each allow rule,
whatever its address.  Every path or port the supervisor can allow lies in
that bound (a last matching allow rule matches only beneath its own
prefix), so Landlock never denies what the supervisor allows, and it still
denies everything else for calls that do not reach the supervisor (an
operation the supervisor continues, a system call nobody thought of).
Rules changed at run time can therefore only narrow what Landlock grants;
a control socket that may widen them must compile with every category
routed and unbounded (not done yet: the control socket is refused).

Also trapped, whenever the category concerned is *restricted* (on, and not
allowing everything with a final ``/***`` or ``*!*`` rule), because no
kernel layer mediates them:

* the mode, owner, time and xattr family (:data:`METADATA_SYSCALLS`),
  decided as ``write`` on the target (Landlock up to ABI 7 only asks for
  ownership; for root, the main filter already refuses the chmod calls);
* ``connect``, and sends that carry an address (``sendto`` with a
  destination, ``sendmsg``, ``sendmmsg``), to a UNIX socket by path:
  decided as ``write`` on the socket's path, the meaning Landlock gives
  to making one (``MAKE_SOCK``) and the permission the kernel itself asks
  (write on the socket inode).  Abstract sockets are scoped by Landlock;
  inet addresses follow the network rules (``connect`` on a datagram
  socket fixes the destination of every later send, so it is decided as
  ``net/send``);
* ``listen``, decided as ``net/bind``: listening on an unbound socket
  binds an ephemeral port that Landlock never sees.

And whenever a category acting on content (read, write, exec, ioctl,
stat) is routed and one of its rules reaches where names can be made
(create or delete allowed): ``link``, ``linkat`` and ``rename*``.  The supervisor's
rules follow names, and a new name for the same inode (which Landlock
allows inside one writable tree) must not grant what the old name did
not; :meth:`NotifyPlan.decide_move` says whether it would.

The category of each system call
================================

See :data:`SYSCALLS_BY_CATEGORY`.  Choices worth a word:

* ``open``/``openat`` are trapped by their flags: an access mode other
  than ``O_WRONLY`` for read, ``O_WRONLY|O_RDWR|O_TRUNC`` for write,
  ``O_CREAT`` and ``O_TMPFILE`` for create, ``O_PATH`` for stat.
  ``openat2`` passes its flags in memory that BPF cannot read, so it is
  always trapped.
* An ``O_PATH`` open, ``chdir``/``fchdir``, ``readlink``, ``access``,
  ``statfs``, ``getxattr``/``listxattr`` and ``inotify_add_watch`` reveal
  metadata, not content: they are ``stat``.
* Calls on a descriptor (``fstat``, ``ftruncate``, ``fchdir`` excepted)
  act on something whose opening was decided already and are not trapped;
  ``fchmod``, ``fchown``, ``fsetxattr`` and ``fremovexattr`` are, since
  opening a file (even read-only) grants no right to change its metadata.
* ``bind`` is also ``create`` (binding a UNIX socket by path makes a file);
  ``rename*`` is ``delete`` of the source and ``create`` (and ``write``, if
  it replaces a file) of the target; ``link*`` and ``symlink*`` are
  ``create``.
* ``ioctl`` is decided on the path of the descriptor, for device files only
  (as Landlock's ``IOCTL_DEV``).

Decisions
=========

:meth:`NotifyPlan.decide` applies SPEC section 4: the last matching rule of
the category wins, and with no match a category that is on denies.  Every
path a pattern matches lies at or beneath the pattern's literal prefix, so
rules are filed by that prefix: a decision looks up the path's ancestors
(a few dict lookups, whatever the number of rules), tries the rules found
there from the last back, and only globs run a matcher.  A path's
candidates from above it are its parent directory's, worked out once per
directory: often one verdict holds for every child of a directory (under
``allow/read+/usr/**`` with no rule filed beneath ``/usr``), and a new
path there (``find`` opens nothing but new ones) costs one lookup of its
parent.  Decisions are cached per category and path; the cache belongs to the compiled rule set,
which :meth:`NotifyPlan.replace_rules` swaps as a whole, so a change of
rules can never be answered from a stale cache, and the generation counter
says which rule set decided.  ``bench/notify_decide.py`` measures it.

Hostnames in network rules are resolved **by the supervisor**, at decision
time, with forward lookups cached for :data:`HOSTNAME_TTL` seconds (never
reverse DNS, which the owner of an address controls).  Resolving at plan
time would freeze a snapshot of names whose addresses rotate (CDNs), deny
connections the program legitimately makes after the rotation, and make
planning do network I/O.  A hostname that does not resolve makes an allow
rule match nothing and a deny rule match every address on its ports: fail
closed.
"""

from __future__ import annotations

import errno
import functools
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from stockade._record import record
from stockade.errors import PolicyError
from stockade.kernel import syscalls
from stockade.kernel.bpf import BPF_JGE, BPF_JSET, OFF_ARCH, OFF_NR, Program, arg_hi, arg_lo
from stockade.kernel.seccomp import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_USER_NOTIF,
)
from stockade.policy import patterns
from stockade.policy.model import (
    FS_CATEGORIES,
    NET_CATEGORIES,
    Action,
    Category,
    Policy,
    Rule,
)

if TYPE_CHECKING:
    import ipaddress

    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "AUDIT_CATEGORIES",
    "METADATA_SYSCALLS",
    "SYSCALLS_BY_CATEGORY",
    "UNIX_PATH_SYSCALLS",
    "NotifyPlan",
    "Trap",
    "Verdict",
    "build_notify_program",
    "compile_notify",
    "implicit_rules",
    "private_tmp_rules",
]

# open(2) flags on x86_64 (include/uapi/asm-generic/fcntl.h).
O_ACCMODE = 0o3
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_TRUNC = 0o1000
O_PATH = 0o10000000
#: ``__O_TMPFILE`` alone: ``O_TMPFILE`` also carries ``O_DIRECTORY``, which
#: plain directory opens set too.
O_TMPFILE_BIT = 0o20000000

_OPENS = ("open", "openat", "openat2")
_RENAMES = ("rename", "renameat", "renameat2")

#: Mode, owner, time and extended-attribute changes: Landlock (ABI 7) has
#: no right for them; decided as ``write`` on the target.
METADATA_SYSCALLS: tuple[str, ...] = (
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
    "file_setattr",
)  # fmt: skip

#: Calls that may reach a UNIX socket by path: decided as ``write`` on it.
UNIX_PATH_SYSCALLS: tuple[str, ...] = ("connect", "sendto", "sendmsg", "sendmmsg")

_STATS: tuple[str, ...] = (
    *_OPENS,  # O_PATH
    "stat", "lstat", "newfstatat", "statx", "statfs",
    "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "chdir", "fchdir",
    "getxattr", "lgetxattr", "fgetxattr", "getxattrat",
    "listxattr", "llistxattr", "flistxattr", "listxattrat",
    "file_getattr", "inotify_add_watch",
)  # fmt: skip

_CREATES: tuple[str, ...] = (
    *_OPENS, "creat", "mkdir", "mkdirat", "mknod", "mknodat",
    "symlink", "symlinkat", "link", "linkat", *_RENAMES, "bind",
)  # fmt: skip

#: The system calls that reach the supervisor for each routed category.
SYSCALLS_BY_CATEGORY: dict[Category, tuple[str, ...]] = {
    Category.READ: _OPENS,
    Category.STAT: _STATS,
    Category.EXEC: ("execve", "execveat"),
    Category.WRITE: (*_OPENS, "creat", "truncate", *_RENAMES, *METADATA_SYSCALLS),
    Category.CREATE: _CREATES,
    Category.DELETE: ("unlink", "unlinkat", "rmdir", *_RENAMES),
    Category.IOCTL: ("ioctl",),
    Category.NET_CONNECT: ("connect",),
    Category.NET_BIND: ("bind", "listen"),
    Category.NET_SEND: ("connect", "sendto", "sendmsg", "sendmmsg"),
}

#: Categories that act on an inode's content or metadata, whatever its
#: name: a link or rename must not gain any of them (decide_move).
_CONTENT_CATEGORIES = (
    Category.READ,
    Category.WRITE,
    Category.EXEC,
    Category.IOCTL,
    Category.STAT,
)
#: Calls that give an inode a new name.
_NAMING_SYSCALLS = ("link", "linkat", *_RENAMES)

#: What ``audit`` routes: every category a program's behaviour shows, for
#: ``stockade learn``.  ``stat`` is left out: it is off by default, so a
#: learned policy needs no stat rule.
AUDIT_CATEGORIES: frozenset[Category] = frozenset(Category) - {Category.STAT}

#: Flags that make an ``open``/``openat`` concern each category.
_OPEN_FLAGS: dict[Category, int] = {
    Category.WRITE: O_WRONLY | O_RDWR | O_TRUNC,
    Category.CREATE: O_CREAT | O_TMPFILE_BIT,
    Category.STAT: O_PATH,
}
#: Where the flags are in ``seccomp_data.args``.
_FLAGS_ARG = {"open": 1, "openat": 2}
#: ``sendto(fd, buf, len, flags, dest_addr, addrlen)``: only a send with an
#: address can reach a new destination.
_POINTER_ARG = {"sendto": 4}

#: How long a hostname's addresses are trusted, in seconds.
HOSTNAME_TTL = 60.0
#: How long a failed lookup is remembered.
HOSTNAME_FAILURE_TTL = 10.0
#: Cached decisions per category; the cache is emptied when full.
CACHE_LIMIT = 16384


@record(frozen=True)
class Verdict:
    """One decision: whether the access is allowed, the rule that decided
    (the last matching one; ``None`` when the category's default did), and
    the errno to fail the call with (0 when allowed)."""

    allow: bool
    rule: Rule | None
    errno: int


ALLOW = Verdict(True, None, 0)
DENY = Verdict(False, None, errno.EACCES)


@record(frozen=True)
class Trap:
    """One system call the notify filter sends to the supervisor.

    With ``flags_arg`` set, only when the low word of that argument has a
    bit of ``flags``, or (with ``reads``) when its access mode is not
    ``O_WRONLY``; with ``pointer_arg`` set, only when that argument is not
    NULL; otherwise always.
    """

    name: str
    flags_arg: int | None = None
    flags: int = 0
    reads: bool = False
    pointer_arg: int | None = None

    @property
    def nr(self) -> int:
        return syscalls.nr(self.name)

    @property
    def always(self) -> bool:
        return self.flags_arg is None and self.pointer_arg is None

    def traps(self, args: tuple[int, ...]) -> bool:
        """Whether a call with *args* reaches the supervisor (what the
        program computes, for tests and for the supervisor's own checks)."""
        if self.flags_arg is not None:
            flags = args[self.flags_arg] & 0xFFFFFFFF
            return bool(flags & self.flags) or (self.reads and flags & O_ACCMODE != O_WRONLY)
        if self.pointer_arg is not None:
            return args[self.pointer_arg] != 0
        return True


# -- compiled rules -----------------------------------------------------------


#: (rule index, the glob's matcher or None when filing alone decides).
_Entry = tuple[int, "Callable[[str], bool] | None"]


class _PathRules:
    """The rules of one filesystem category, indexed by literal prefix.

    Every path a pattern matches lies at or beneath its literal prefix
    (:func:`~stockade.policy.patterns.literal_prefix`), so a path can only
    be matched by the rules filed under one of its ancestors (or itself):
    a handful of dict lookups finds them, whatever the number of rules.
    A ``DIR/***`` rule filed under an ancestor always matches, and literal
    rules are looked up by the path itself, so only globs run a regular
    expression.  Candidates are tried from the last rule back; the first
    that matches decides.
    """

    __slots__ = (
        "_children",
        "_exact",
        "_index",
        "_parents",
        "_shapes",
        "_subtree",
        "_verdicts",
        "cache",
        "default",
    )

    def __init__(self, rules: list[Rule], on: bool, aliases: dict[str, str]) -> None:
        self.default = DENY if on else ALLOW
        self.cache: dict[str, Verdict] = {}
        self._children: dict[str, Verdict | tuple[_Entry, ...]] = {}
        self._subtree: dict[str, Verdict] = {}
        self._verdicts = [_verdict_of(r) for r in rules]
        index: dict[str, list[_Entry]] = {}
        exact: dict[str, list[_Entry]] = {}
        shapes: dict[_Entry, tuple[int, str]] = {}
        for i, rule in enumerate(rules):
            pattern = rule.pattern
            spellings = [pattern]
            alias = aliases.get(pattern)
            if alias is not None and alias != pattern:
                spellings.append(alias)
            for spelling in spellings:
                literal, key, match = _filing(spelling)
                (exact if literal else index).setdefault(key, []).append((i, match))
                shape = _shape(spelling)
                if shape is not None:
                    shapes[(i, match)] = shape
        self._index = {k: tuple(v) for k, v in index.items()}
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._shapes = shapes
        self._parents = _parents_of(self._index, self._exact)

    def fresh(self) -> _PathRules:
        """The same rules with empty caches of their own (the tables are
        never changed once built, so they are shared)."""
        copy = _PathRules.__new__(_PathRules)
        copy.default = self.default
        copy.cache = {}
        copy._children = {}
        copy._subtree = {}
        copy._verdicts = self._verdicts
        copy._index = self._index
        copy._exact = self._exact
        copy._shapes = self._shapes
        copy._parents = self._parents
        return copy

    def below(self, extra: list[Rule]) -> _PathRules:
        """These rules with *extra* beneath them: any of these that matches
        decides before any of *extra* (among *extra*, the last decides).

        The extra rules get negative numbers, -len(extra) up to -1: they
        sort below every rule here, and, their verdicts being appended,
        ``_verdicts[i]`` finds them from the end.  So nothing filed here
        is renumbered, and the tables are copied, not rebuilt."""
        copy = self.fresh()
        verdicts = list(self._verdicts)
        index = dict(self._index)
        exact = dict(self._exact)
        shapes = dict(self._shapes)
        for j, rule in enumerate(extra):
            verdicts.append(_verdict_of(rule))
            literal, key, match = _filing(rule.pattern)
            table = exact if literal else index
            entry = (j - len(extra), match)
            table[key] = (*table.get(key, ()), entry)
            shape = _shape(rule.pattern)
            if shape is not None:
                shapes[entry] = shape
        copy._verdicts = verdicts
        copy._index = index
        copy._exact = exact
        copy._shapes = shapes
        copy._parents = _parents_of(index, exact)
        return copy

    def decide(self, path: str) -> Verdict:
        found = self.cache.get(path)
        if found is not None:
            return found
        cut = path.rfind("/")
        if 0 < cut < len(path) - 1 and path[0] == "/":
            parent = path[:cut]
            kids = self._children.get(parent)
            if kids is None:
                kids = self._children_of(parent)
            if kids.__class__ is Verdict:
                cache = self.cache
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[path] = kids
                return kids
            return self._decide_child(path, kids)  # type: ignore[arg-type]
        return self._decide_full(path)

    def _decide_child(self, path: str, kids: tuple[_Entry, ...]) -> Verdict:
        """:meth:`_decide_full` for *path*, a child of a directory whose
        candidates from above are *kids* (see :meth:`_children_of`)."""
        candidates = list(kids)
        entries = self._exact.get(path)
        if entries:
            candidates.extend(entries)
        entries = self._index.get(path)
        if entries:
            candidates.extend(entries)
        return self._settle(path, candidates)

    def _settle(self, path: str, candidates: list[_Entry]) -> Verdict:
        """The verdict of the last rule among *candidates* that matches
        *path* (the default if none does), cached for *path*."""
        verdict = self.default
        if candidates:
            candidates.sort(key=_first, reverse=True)
            for i, match in candidates:
                if match is None or match(path):
                    verdict = self._verdicts[i]
                    break
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[path] = verdict
        return verdict

    def _children_of(self, parent: str) -> Verdict | tuple[_Entry, ...]:
        """What decides a child ``parent + "/" + name`` (*name* not empty,
        without ``/``), cached per *parent*: the verdict of every such
        child when one verdict holds for all of them, else the candidates
        that :meth:`_decide_full` would find above the child (filed under
        ``/``, under each prefix of *parent* that ends before a ``/``,
        and under *parent* itself), those that can match no child dropped
        and those that a later one matching every child hides cut off.

        One verdict holds when no rule is filed under a child's path (no
        key's parent is *parent*: only then would a child's own table
        entries join the candidates) and the last candidate left matches
        every child, or none is left (the default).  A candidate matches
        every child when it needs no matcher (a ``DIR/***`` filed above),
        or when it is ``K/**`` with *parent* at or beneath ``K``, or
        ``K/*`` with *parent* ``K``.  ``K/*``, and any ``K/G`` whose last
        component ``G`` is a glob without ``**`` (``K/*.pem``), matches
        no child of another parent (a child has a ``/`` after *parent*,
        which G cannot match), and is dropped there.  Any other glob may
        match some children only, and is kept.

        A directory ``G/name`` that no key has as parent, inside a ``G``
        whose one verdict came from a tree, a ``K/**`` or the default
        (:attr:`_subtree`), has that verdict for its children too: their
        candidates are ``G``'s children's (``G/name`` itself is no key),
        and each still matches every child, or none (``K/*`` with K above
        ``G/name``).  A verdict from ``K/*`` does not go down."""
        parents = self._parents
        cut = parent.rfind("/")
        if cut > 0 and parent not in parents:
            inherited = self._subtree.get(parent[:cut])
            if inherited is not None:
                self._remember(parent, inherited, True)
                return inherited
        get = self._index.get
        above: list[_Entry] = []
        entries = get("/")
        if entries:
            above.extend(entries)
        end = parent.find("/", 1)
        while end >= 0:
            entries = get(parent[:end])
            if entries:
                above.extend(entries)
            end = parent.find("/", end + 1)
        entries = get(parent)
        if entries:
            above.extend(entries)
        above.sort(key=_first, reverse=True)
        kept: list[_Entry] = []
        every = False
        shapes = self._shapes
        for entry in above:
            if entry[1] is None:
                every = True
            else:
                shape = shapes.get(entry)
                if shape is not None:
                    kind, k = shape
                    if kind == _BENEATH:
                        every = not k or parent == k or parent.startswith(k + "/")
                    elif parent != k:
                        continue  # K/* or K/G matches no child of another directory
                    elif kind == _CHILD:
                        every = True
                    # K/G, with parent K: may match some children only; kept
            kept.append(entry)
            if every:
                break
        if parent in parents:
            self._remember(parent, tuple(kept), False)
            return tuple(kept)
        if not kept:
            self._remember(parent, self.default, True)
            return self.default
        if every and len(kept) == 1:
            verdict = self._verdicts[kept[0][0]]
            shape = shapes.get(kept[0])
            self._remember(parent, verdict, shape is None or shape[0] == _BENEATH)
            return verdict
        self._remember(parent, tuple(kept), False)
        return tuple(kept)

    def _remember(self, parent: str, kids: Verdict | tuple[_Entry, ...], down: bool) -> None:
        children = self._children
        if len(children) >= CACHE_LIMIT:
            children.clear()
            self._subtree.clear()
        children[parent] = kids
        if down:
            self._subtree[parent] = kids  # type: ignore[assignment]

    def _decide_full(self, path: str) -> Verdict:
        get = self._index.get
        candidates: list[_Entry] = []
        entries = self._exact.get(path)
        if entries:
            candidates.extend(entries)
        entries = get("/")
        if entries:
            candidates.extend(entries)
        start = 1
        while start < len(path):
            end = path.find("/", start)
            if end < 0:
                end = len(path)
            entries = get(path[:end])
            if entries:
                candidates.extend(entries)
            start = end + 1
        return self._settle(path, candidates)


def _first(entry: _Entry) -> int:
    return entry[0]


#: Shapes of a glob that say which children of a directory it can match:
#: ``K/**`` (anything beneath K), ``K/*`` (every child of K), and ``K/G``,
#: G a glob without ``**`` (some children of K, and nothing else: none of
#: ``*``, ``?`` and ``[...]`` matches a ``/``).
_BENEATH, _CHILD, _NAMES = 0, 1, 2


@functools.lru_cache(maxsize=4096)
def _shape(pattern: str) -> tuple[int, str] | None:
    """``(_BENEATH, K)`` for ``K/**``, ``(_CHILD, K)`` for ``K/*``,
    ``(_NAMES, K)`` for ``K/G`` (K literal, maybe empty: ``/**``, ``/*``;
    G a glob without ``**``), else None."""
    head, _, tail = pattern.rpartition("/")
    if not patterns.is_literal(head) or not tail or patterns.is_literal(tail):
        return None
    if tail != "**" and "**" in tail:
        return None  # crosses components
    if patterns.compile_pattern(pattern).pattern != pattern:
        return None  # not canonical (rules are): K would not be what matches
    if tail == "**":
        return _BENEATH, head
    return (_CHILD if tail == "*" else _NAMES), head


def _parents_of(*tables: dict[str, tuple[_Entry, ...]]) -> frozenset[str]:
    """The parent (text before the last ``/``) of every key filed."""
    return frozenset(key[: key.rfind("/")] for table in tables for key in table)


@functools.lru_cache(maxsize=4096)
def _filing(pattern: str) -> tuple[bool, str, Callable[[str], bool] | None]:
    """Where :class:`_PathRules` files *pattern*: ``(literal, key, matcher)``.
    Cached: every run of a sandbox files the same patterns again."""
    root = patterns.tree_root(pattern)
    if root is not None:
        return False, root, None
    if patterns.is_literal(pattern):
        return True, pattern, None
    return False, patterns.literal_prefix(pattern), patterns.compile_pattern(pattern).match


#: Verdicts by rule identity (the rule is kept, so the id stays its own):
#: each run of a sandbox builds its tables from the same rule objects.
_VERDICTS: dict[int, tuple[Rule, Verdict]] = {}


def _verdict_of(rule: Rule) -> Verdict:
    known = _VERDICTS.get(id(rule))
    if known is not None and known[0] is rule:
        return known[1]
    if rule.action is Action.ALLOW:
        verdict = Verdict(True, rule, 0)
    else:
        verdict = Verdict(False, rule, errno.EACCES)
    if len(_VERDICTS) >= CACHE_LIMIT:
        _VERDICTS.clear()
    _VERDICTS[id(rule)] = (rule, verdict)
    return verdict


@record(frozen=True)
class _NetRule:
    rule: Rule
    allow: bool
    #: ``None`` for any address; a network; or a hostname to resolve.
    network: IPNetwork | None
    hostname: str | None
    ports: tuple[tuple[int, int], ...]
    verdict: Verdict

    def has_port(self, port: int) -> bool:
        return any(first <= port <= last for first, last in self.ports)


class _NetRules:
    """The rules of one network category, last first."""

    __slots__ = ("cache", "default", "has_hostnames", "packed", "rules")

    def __init__(self, rules: list[Rule], on: bool) -> None:
        from stockade.policy.netspec import parse_net_pattern

        self.default = DENY if on else ALLOW
        self.cache: dict[tuple[IPAddress, int], Verdict] = {}
        #: The same decisions keyed by the address as the kernel packs it
        #: (decide_net_packed): no parsing on the supervisor's hot path.
        self.packed: dict[tuple[bytes, int], Verdict] = {}
        out = []
        for rule in reversed(rules):
            pat = parse_net_pattern(rule.pattern)
            network: IPNetwork | None = None
            hostname: str | None = None
            if not pat.any_host:
                if _is_address(pat.host):
                    import ipaddress

                    network = ipaddress.ip_network(pat.host)
                else:
                    hostname = pat.host
            out.append(
                _NetRule(
                    rule,
                    rule.action is Action.ALLOW,
                    network,
                    hostname,
                    tuple((p.first, p.last) for p in pat.ports),
                    _verdict_of(rule),
                )
            )
        self.rules = tuple(out)
        self.has_hostnames = any(r.hostname is not None for r in out)

    def fresh(self) -> _NetRules:
        """The same rules with empty caches of their own."""
        copy = _NetRules.__new__(_NetRules)
        copy.default = self.default
        copy.cache = {}
        copy.packed = {}
        copy.rules = self.rules
        copy.has_hostnames = self.has_hostnames
        return copy


def _is_address(host: str) -> bool:
    return ":" in host or host[:1].isdigit()


class _Compiled:
    """One generation of rules, compiled; replaced as a whole."""

    __slots__ = ("enabled", "generation", "net", "paths", "rules")

    def __init__(
        self,
        rules: tuple[Rule, ...],
        enabled: frozenset[Category],
        generation: int,
        aliases: dict[str, str],
    ) -> None:
        self.rules = rules
        self.enabled = enabled
        self.generation = generation
        by_cat: dict[Category, list[Rule]] = {c: [] for c in Category}
        for rule in rules:
            by_cat[rule.category].append(rule)
        self.paths = {c: _PathRules(by_cat[c], c in enabled, aliases) for c in FS_CATEGORIES}
        self.net = {c: _NetRules(by_cat[c], c in enabled) for c in NET_CATEGORIES}

    def fresh(self) -> _Compiled:
        """The same generation with empty caches of its own."""
        copy = _Compiled.__new__(_Compiled)
        copy.rules = self.rules
        copy.enabled = self.enabled
        copy.generation = self.generation
        copy.paths = {c: rules.fresh() for c, rules in self.paths.items()}
        copy.net = {c: rules.fresh() for c, rules in self.net.items()}
        return copy

    def below(self, extra: tuple[Rule, ...], rules: tuple[Rule, ...]) -> _Compiled | None:
        """The same generation, with the filesystem rules *extra* beneath
        every rule (see :meth:`_PathRules.below`); *rules* is the whole
        list for :attr:`rules`.  None if *extra* has a network rule."""
        by_cat: dict[Category, list[Rule]] = {}
        for rule in extra:
            if rule.category not in self.paths:
                return None
            by_cat.setdefault(rule.category, []).append(rule)
        copy = self.fresh()
        copy.rules = rules
        for category, added in by_cat.items():
            copy.paths[category] = copy.paths[category].below(added)
        return copy


Resolver = Callable[[str], "frozenset[IPAddress]"]


def getaddrinfo_resolver(hostname: str) -> frozenset[IPAddress]:
    """Every address *hostname* resolves to (``getaddrinfo``); raises
    ``OSError`` when it does not resolve."""
    import ipaddress
    import socket

    infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    out: set[IPAddress] = set()
    for _family, _type, _proto, _name, sockaddr in infos:
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        out.add(_unmapped(addr))
    return frozenset(out)


def _unmapped(addr: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) as the IPv4 address
    it reaches, so that an inet6 socket cannot slip past IPv4 rules."""
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped if mapped is not None else addr


class NotifyPlan:
    """What the supervisor decides, and which system calls reach it.

    ``categories`` are the categories whose every system call is trapped;
    ``syscalls`` the numbers the notify filter traps (``traps`` says under
    which argument conditions); ``audit`` asks the supervisor for an event
    for every decision (``stockade learn``).  :meth:`decide` and
    :meth:`decide_net` answer for any category, routed or not, with the
    policy's exact semantics, so a handler that performs an operation
    itself can check every category the operation involves.

    Thread safety: decisions may be asked from many threads at once; a
    :meth:`replace_rules` is atomic (one attribute assignment).
    """

    def __init__(
        self,
        rules: Iterable[Rule],
        enabled: frozenset[Category],
        categories: frozenset[Category],
        traps: tuple[Trap, ...],
        *,
        audit: bool = False,
        resolver: Resolver | None = None,
        implicit: tuple[Rule, ...] = (),
    ) -> None:
        self.categories = categories
        self.traps = traps
        self.syscalls = frozenset(t.nr for t in traps)
        self.audit = audit
        self._resolver: Resolver = resolver or getaddrinfo_resolver
        self._hosts: dict[str, tuple[float, frozenset[IPAddress] | None]] = {}
        self._aliases: dict[str, str] = {}
        self._implicit = implicit
        self._state = _Compiled((*implicit, *rules), enabled, 0, self._aliases)
        self._watchers: list[Callable[[int], None]] = []

    # -- rules ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped by every change of rules."""
        return self._state.generation

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in force, implicit ones (binds, tmpfs) first."""
        return self._state.rules

    @property
    def enabled(self) -> frozenset[Category]:
        return self._state.enabled

    def replace_rules(
        self, rules: Iterable[Rule], enabled: frozenset[Category] | None = None
    ) -> int:
        """Put *rules* (and *enabled*, if given) in force; returns the new
        generation.  Decisions made from now on never come from the old
        rules' cache.  Raises :class:`~stockade.errors.PolicyError` for a
        bad pattern, leaving the old rules in force."""
        old = self._state
        self._state = _Compiled(
            (*self._implicit, *rules),
            old.enabled if enabled is None else enabled,
            old.generation + 1,
            self._aliases,
        )
        generation = self._state.generation
        for watcher in self._watchers:
            watcher(generation)
        return generation

    def watch(self, changed: Callable[[int], None]) -> None:
        """Call *changed* with the new generation after every change of
        rules (a cache of decisions kept outside the plan empties itself)."""
        self._watchers.append(changed)

    def add_implicit_rules(self, rules: Iterable[Rule]) -> int:
        """Allow rules that come from the launch rather than the policy (a
        private tmp directory made at launch); they go before the policy's
        rules, which may refine them.  Returns the new generation."""
        extra = tuple(rules)
        current = self._state.rules[len(self._implicit) :]
        self._implicit = (*self._implicit, *extra)
        return self.replace_rules(current)

    def for_run(self, private_tmp: str | None = None) -> NotifyPlan:
        """A plan for one run of a sandbox: the same rules, traps and
        resolved prefixes, with caches of its own, plus allow rules for the
        run's private tmp directory *private_tmp* (made at launch, so no
        policy names it; Landlock grants it every right, and so must the
        supervisor: ``chmod``/``utimensat`` there are decided as write)."""
        # Built without __init__: the traps and the rules' tables are this
        # plan's (never changed in place, only replaced), so a run without
        # extra rules shares them and pays only for empty caches.
        run = NotifyPlan.__new__(NotifyPlan)
        run.categories = self.categories
        run.traps = self.traps
        run.syscalls = self.syscalls
        run.audit = self.audit
        run._resolver = self._resolver
        run._hosts = {}
        run._aliases = dict(self._aliases)
        run._watchers = []
        state = self._state
        if private_tmp is None:
            run._implicit = self._implicit
            run._state = state.fresh()
        else:
            # The private tmp's allow rules go beneath the policy's (which
            # may refine them) and beneath the other implicit ones (allow
            # rules too: which of two allows decides changes nothing but
            # the rule an event names).
            extra = private_tmp_rules(private_tmp)
            run._implicit = (*self._implicit, *extra)
            policy_rules = state.rules[len(self._implicit) :]
            rules = (*run._implicit, *policy_rules)
            below = state.below(extra, rules)
            run._state = (
                below
                if below is not None
                else _Compiled(rules, state.enabled, state.generation, run._aliases)
            )
        return run

    def resolve_rule_paths(self, realpath: Callable[[str], str]) -> int:
        """Let each rule also match under its resolved literal prefix.

        Landlock opens a rule's path and follows its symlinks, so
        ``allow/read+/lib/***`` with ``/lib -> usr/lib`` covers
        ``/usr/lib``; the supervisor sees resolved paths, so the rule must
        match there too.  *realpath* (``os.path.realpath`` from the
        launcher) is called once per distinct prefix; the rule keeps its
        place and its name.  Returns the new generation.
        """
        aliases: dict[str, str] = {}
        for rule in self._state.rules:
            if rule.category.is_net or rule.pattern in aliases:
                continue
            prefix = patterns.literal_prefix(rule.pattern)
            real = realpath(prefix)
            if real != prefix and real.startswith("/"):
                rest = rule.pattern[len(prefix) :]
                alias = patterns.escape_path(real) + rest
                if real == "/" and rest.startswith("/"):
                    alias = rest
                try:
                    aliases[rule.pattern] = patterns.validate_pattern(alias)
                except PolicyError:
                    continue  # a target name no pattern can spell only loses the alias
        self._aliases.clear()
        self._aliases.update(aliases)
        current = self._state.rules[len(self._implicit) :]
        return self.replace_rules(current)

    # -- decisions -----------------------------------------------------------

    def decide(self, category: Category, path: str) -> Verdict:
        """The verdict for *category* access to *path*.

        *path* is absolute and resolved in the sandbox's view (no ``..``,
        no symlink but possibly the last component when the call does not
        follow it).  The last matching rule wins; with none, an enabled
        category denies (EACCES) and a disabled one allows.
        """
        return self._state.paths[category].decide(path)

    def allowed_directory(self, category: Category, path: str) -> tuple[str, int, bool] | None:
        """``(parent, generation, tree)`` when :meth:`decide` has found that
        one verdict, allow, holds for *category* access to every child of
        *path*'s parent directory (``parent`` is its path) under the rules
        of that generation; ``tree`` when it also holds down the parent's
        tree, to the next of :meth:`stops`.  None otherwise.  Call it after
        deciding *path*: it only reads what deciding worked out."""
        state = self._state
        cut = path.rfind("/")
        if cut <= 0:
            return None
        parent = path[:cut]
        rules = state.paths[category]
        kids = rules._children.get(parent)
        if kids.__class__ is Verdict and kids.allow:
            return parent, state.generation, parent in rules._subtree
        return None

    def stops(self, category: Category) -> tuple[int, frozenset[str]]:
        """``(generation, stops)``: the directories where a verdict that
        holds for every child of a directory stops going down (the parent
        of each path a rule of *category* is filed under).  A directory
        that is not a stop, and not a child of ``/``, has its parent's
        such verdict (see :meth:`allowed_directory`)."""
        state = self._state
        return state.generation, state.paths[category]._parents

    def decide_move(self, source: str, target: str, source_is_dir: bool = False) -> Verdict:
        """Whether an inode may get the name *target* besides (link) or
        instead of (rename) *source*, as far as its content goes.

        A new name must not grant what the old one did not: for every
        enabled category that acts on content or metadata (read, write,
        exec, ioctl, stat), allowed at *target* must mean allowed at
        *source*.  A directory carries its whole tree, which one path
        cannot stand for: it may move only when no rule of those
        categories reaches beneath either name.  The answer is EXDEV, as
        Landlock gives for a refused link, so ``mv`` falls back to a copy
        whose every open is decided.  Creating and deleting the names
        themselves are separate decisions (create at *target*, delete at
        *source*).
        """
        state = self._state
        for category in _CONTENT_CATEGORIES:
            if category not in state.enabled:
                continue
            at_source = state.paths[category].decide(source)
            if at_source.allow:
                continue
            if state.paths[category].decide(target).allow:
                return Verdict(False, at_source.rule, errno.EXDEV)
        if source_is_dir:
            for rule in state.rules:
                if rule.category not in _CONTENT_CATEGORIES or rule.category not in state.enabled:
                    continue
                for name in (source, target):
                    beneath = patterns.escape_path(name.rstrip("/")) + "/**"
                    if patterns.may_overlap(rule.pattern, beneath):
                        return Verdict(False, rule, errno.EXDEV)
        return ALLOW

    def decide_net(self, category: Category, family: int, address: str, port: int) -> Verdict:
        """The verdict for *category* access to an inet *address* and *port*.

        IPv4-mapped IPv6 addresses are decided as the IPv4 address they
        reach.  Hostname rules are resolved here (see the module
        docstring), so call this from a worker, never the receiver.
        *family* (``AF_INET``/``AF_INET6``) is implied by *address*; it is
        part of the signature so that callers pass what the call named.
        """
        import ipaddress

        state = self._state.net[category]
        if not state.rules:
            return state.default
        addr = _unmapped(ipaddress.ip_address(address))
        key = (addr, port)
        if not state.has_hostnames:
            found = state.cache.get(key)
            if found is not None:
                return found
        verdict = state.default
        for nr in state.rules:
            if nr.has_port(port) and self._address_matches(nr, addr):
                verdict = nr.verdict
                break
        if not state.has_hostnames:
            if len(state.cache) >= CACHE_LIMIT:
                state.cache.clear()
            state.cache[key] = verdict
        return verdict

    def decide_net_packed(self, category: Category, packed: bytes, port: int) -> Verdict:
        """:meth:`decide_net` for an address in network byte order (4 or 16
        bytes, as in a sockaddr), cached on those bytes: the supervisor's
        connect and send path decides without making an address object."""
        state = self._state.net[category]
        if not state.rules:
            return state.default
        key = (packed, port)
        if not state.has_hostnames:
            found = state.packed.get(key)
            if found is not None:
                return found
        import ipaddress

        address = ipaddress.ip_address(packed)
        family = 2 if address.version == 4 else 10  # AF_INET, AF_INET6
        verdict = self.decide_net(category, family, str(address), port)
        if not state.has_hostnames:
            if len(state.packed) >= CACHE_LIMIT:
                state.packed.clear()
            state.packed[key] = verdict
        return verdict

    def _address_matches(self, rule: _NetRule, addr: IPAddress) -> bool:
        if rule.network is not None:
            return addr.version == rule.network.version and addr in rule.network
        if rule.hostname is None:
            return True
        addrs = self._lookup(rule.hostname)
        if addrs is None:
            return not rule.allow  # fail closed: an unresolved deny denies
        return addr in addrs

    def _lookup(self, hostname: str) -> frozenset[IPAddress] | None:
        now = time.monotonic()
        cached = self._hosts.get(hostname)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            addrs: frozenset[IPAddress] | None = self._resolver(hostname)
            ttl = HOSTNAME_TTL
        except OSError:
            addrs, ttl = None, HOSTNAME_FAILURE_TTL
        self._hosts[hostname] = (now + ttl, addrs)
        return addrs

    def __repr__(self) -> str:
        cats = ",".join(sorted(c.value for c in self.categories))
        names = ",".join(sorted(t.name for t in self.traps))
        return f"NotifyPlan(categories={{{cats}}}, syscalls={{{names}}}, audit={self.audit})"


# -- compiling ----------------------------------------------------------------


def restricted(policy: Policy, category: Category) -> bool:
    """True when *category* is on and its rules do not end by allowing
    everything (``/***``, or ``*!*`` for the network)."""
    if category not in policy.enabled:
        return False
    everything = "*!*" if category.is_net else "/***"
    verdict = False
    for rule in policy.rules_for(category):
        if rule.pattern == everything:
            verdict = rule.action is Action.ALLOW
        elif rule.action is Action.DENY:
            verdict = False
    return not verdict


def implicit_rules(policy: Policy) -> tuple[Rule, ...]:
    """The access binds and tmpfs mounts grant at their destination (SPEC
    section 2), and a private root's ``/dev`` nodes and ``/tmp``, as allow
    rules: Landlock grants them without a rule, so the supervisor must
    too."""
    from stockade.plan.landlock import CATEGORY_RIGHTS

    readonly = (Category.READ, Category.EXEC)
    out: list[Rule] = []
    mounts = [(b.dst, b.readonly) for b in policy.binds] + [(t, False) for t in policy.tmpfs]
    if policy.root is not None and policy.private_tmp:
        mounts.append(("/tmp", False))  # noqa: S108  # the private root's own tmpfs
    for dst, ro in mounts:
        tree = patterns.escape_path(dst.rstrip("/")) + "/***" if dst != "/" else "/***"
        for category in readonly if ro else tuple(CATEGORY_RIGHTS):
            out.append(Rule(Action.ALLOW, category, patterns.validate_pattern(tree)))
    if policy.root is not None:
        from stockade.plan.rootfs import DEV_NODES

        for name, categories in DEV_NODES:
            out.extend(Rule(Action.ALLOW, c, f"/dev/{name}") for c in categories)
    return tuple(out)


def _names_can_move(policy: Policy, routed: frozenset[Category]) -> bool:
    """Whether a link or rename could give a file a name that a routed
    content category treats differently: only where names can be made
    (create or delete allowed), since Landlock refuses the rest."""
    movable = [
        r
        for r in policy.rules
        if r.action is Action.ALLOW
        and r.category in (Category.CREATE, Category.DELETE)
        and r.category in policy.enabled
    ]
    if not movable and {Category.CREATE, Category.DELETE} <= policy.enabled:
        return False
    return any(
        rule.category in routed
        and rule.category in _CONTENT_CATEGORIES
        and (not movable or any(patterns.may_overlap(m.pattern, rule.pattern) for m in movable))
        for rule in policy.rules
    )


def private_tmp_rules(path: str) -> tuple[Rule, ...]:
    """Allow rules for a private tmp directory: every filesystem category
    but stat, as Landlock grants it (``launch/spawn.py``)."""
    from stockade.plan.landlock import CATEGORY_RIGHTS

    tree = patterns.validate_pattern(patterns.escape_path(path.rstrip("/") or "/") + "/***")
    return tuple(Rule(Action.ALLOW, c, tree) for c in CATEGORY_RIGHTS)


def _merge(traps: dict[str, Trap], trap: Trap) -> None:
    old = traps.get(trap.name)
    if old is None or trap.always:
        traps[trap.name] = trap
    elif old.always:
        return
    elif old.flags_arg is not None and trap.flags_arg == old.flags_arg:
        traps[trap.name] = Trap(
            trap.name, old.flags_arg, old.flags | trap.flags, old.reads or trap.reads
        )
    elif old.pointer_arg is None or trap.pointer_arg != old.pointer_arg:
        traps[trap.name] = Trap(trap.name)


def _traps_for(category: Category) -> list[Trap]:
    out = []
    for name in SYSCALLS_BY_CATEGORY[category]:
        if name in _FLAGS_ARG and category is Category.READ:
            out.append(Trap(name, _FLAGS_ARG[name], reads=True))
        elif name in _FLAGS_ARG and category in _OPEN_FLAGS:
            out.append(Trap(name, _FLAGS_ARG[name], _OPEN_FLAGS[category]))
        elif name in _POINTER_ARG:
            out.append(Trap(name, pointer_arg=_POINTER_ARG[name]))
        else:
            out.append(Trap(name))
    return out


def compile_notify(
    policy: Policy,
    routed: frozenset[Category],
    *,
    audit: bool = False,
    observe: frozenset[Category] = frozenset(),
    resolver: Resolver | None = None,
) -> NotifyPlan | None:
    """The supervisor's part of *policy*, or ``None`` when it has none.

    *routed* are the categories the kernel layers cannot hold exactly
    (from :func:`stockade.plan.landlock.compile_landlock` and
    :func:`~stockade.plan.landlock.compile_net`).  *observe* adds
    categories routed only so that the supervisor sees them (``on_event``
    callbacks, exec events for ``--log``); *audit* routes every category
    of :data:`AUDIT_CATEGORIES` and asks for an event per decision.
    """
    categories = set(routed) | set(observe)
    if audit:
        categories |= AUDIT_CATEGORIES
    traps: dict[str, Trap] = {}
    for category in sorted(categories, key=lambda c: c.value):
        for trap in _traps_for(category):
            _merge(traps, trap)
    if _names_can_move(policy, routed):
        # A rule the supervisor holds follows names; a link or rename makes
        # a new name for the same inode, which Landlock allows inside one
        # writable tree (decide_move).
        for name in _NAMING_SYSCALLS:
            _merge(traps, Trap(name))
    if restricted(policy, Category.WRITE):
        for name in METADATA_SYSCALLS:
            _merge(traps, Trap(name))
        for name in UNIX_PATH_SYSCALLS:
            _merge(traps, Trap(name, pointer_arg=_POINTER_ARG.get(name)))
    if restricted(policy, Category.NET_BIND):
        _merge(traps, Trap("listen"))
    if not traps:
        return None
    return NotifyPlan(
        policy.rules,
        policy.enabled,
        frozenset(categories),
        tuple(sorted(traps.values(), key=lambda t: t.nr)),
        audit=audit,
        resolver=resolver,
        implicit=implicit_rules(policy),
    )


# -- the notify filter --------------------------------------------------------


def build_notify_program(plan: NotifyPlan) -> bytes:
    """The notify filter: ``SECCOMP_RET_USER_NOTIF`` for each trap, allow
    for everything else.

    It is installed after the main filter, whose KILL and ERRNO verdicts
    take precedence over USER_NOTIF; it still repeats the arch and x32
    checks so that it is correct on its own (a foreign call number could
    otherwise alias a trapped one).  The trapped calls are searched as a
    balanced tree on their number, as in :mod:`stockade.plan.filter`.
    """
    from stockade.plan.filter import _tree  # the same search, one place

    p = Program()
    kill = SECCOMP_RET_KILL_PROCESS
    allow = SECCOMP_RET_ALLOW
    notif = SECCOMP_RET_USER_NOTIF
    p.load(OFF_ARCH)
    arch_ok = p.new_label("arch_ok")
    p.jeq(syscalls.AUDIT_ARCH, arch_ok, 0)
    p.ret(kill)
    p.label(arch_ok)
    p.load(OFF_NR)
    not_x32 = p.new_label("not_x32")
    p.jump(BPF_JGE, syscalls.X32_SYSCALL_BIT, 0, not_x32)
    p.ret(kill)
    p.label(not_x32)

    def emit(trap: Trap) -> Callable[[], None]:
        def run() -> None:
            if trap.flags_arg is not None:
                p.load(arg_lo(trap.flags_arg))
                yes = p.new_label("yes")
                if trap.flags:
                    p.jump(BPF_JSET, trap.flags, yes, 0)
                if trap.reads:
                    p.and_(O_ACCMODE)
                    p.jeq(O_WRONLY, 0, yes)
                p.ret(allow)
                p.label(yes)
                p.ret(notif)
            elif trap.pointer_arg is not None:
                p.load(arg_lo(trap.pointer_arg))
                yes = p.new_label("yes")
                p.jeq(0, 0, yes)
                p.load(arg_hi(trap.pointer_arg))
                p.jeq(0, 0, yes)
                p.ret(allow)
                p.label(yes)
                p.ret(notif)
            else:
                p.ret(notif)

        return run

    entries: list[tuple[int, Callable[[], None]]] = [(t.nr, emit(t)) for t in plan.traps]
    entries.sort(key=lambda e: e[0])
    _tree(p, entries, allow)
    return p.assemble()
