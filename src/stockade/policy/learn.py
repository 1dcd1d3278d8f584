"""``stockade learn``: collapse observed accesses into a policy (pure).

The supervisor, in audit mode, reports every access a program made (an
event per decision: category and target).  :func:`collapse` turns that list
into allow rules a person can read and that still let the same program run
without a denial:

* **System trees.**  Reading or executing beneath ``/usr``, ``/lib*``,
  ``/bin`` or ``/sbin`` allows reading and executing the whole tree
  (``/usr/***``), as ``-r`` does: a program's libraries and interpreter
  modules change with every upgrade, these trees hold nothing private,
  and the kernel itself executes the dynamic loader and ``#!``
  interpreters found there, which no event shows.  Writes there stay
  literal.
* **Pseudo file systems.**  ``/proc`` paths name process ids that change
  from run to run: reading there allows ``/proc/***`` (as the default
  profile does), other access a ``/proc/*/...`` glob.  ``/sys`` reads
  allow the file's directory tree; ``/dev/pts/N`` becomes ``/dev/pts/***``
  and ``/dev/shm`` a tree; other devices stay literal.
* **Directories.**  Reading a directory (listing it) is allowed with what
  is beneath it (``DIR/***``): Landlock grants directory rights to trees
  only, so a rule for the directory alone would need the supervisor on
  every open.  The same holds for the metadata of a directory (``write``).
  A directory shallower than :attr:`LearnOptions.min_depth` (``/``,
  ``/home/user``) keeps a rule for itself alone instead, and its
  category goes to the supervisor.  Creating or deleting a directory
  stays literal.
* **Fan-out.**  Elsewhere, a directory at least :attr:`LearnOptions.min_depth`
  components deep with at least :attr:`LearnOptions.read_fanout` distinct
  entries read beneath it becomes a read tree, bottom up (a package's
  modules collapse into their ``site-packages`` tree, not into ``/home``);
  written, created or deleted names collapse likewise, with a higher
  threshold (:attr:`LearnOptions.write_fanout`), so that an output file
  stays one rule while a directory of temporary files becomes a tree.
* **Executables are read too**: the kernel reads a file to execute it.
* **Network.**  Each address keeps its own rule with the ports it used;
  ``bind`` rules name ports, not addresses.
* The private temporary directory of the learning run is left out; the
  policy asks for a private tmp of its own instead.

``stat`` is off by default, so stat events are ignored.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stockade.errors import PolicyError
from stockade.policy.model import Action, Category, Policy, Rule
from stockade.policy.patterns import escape_path, validate_pattern

__all__ = ["Access", "LearnOptions", "accesses_from_events", "collapse", "learned_policy"]


@dataclass(frozen=True)
class Access:
    """One observed access: a category and its target (an absolute path,
    or ``ADDR!PORT`` for the network)."""

    category: Category
    target: str


@dataclass(frozen=True)
class LearnOptions:
    """How far :func:`collapse` generalises."""

    system_trees: tuple[str, ...] = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
    #: No tree is made for a directory shallower than this (``/home/user``
    #: has depth 2 and is never collapsed into).
    min_depth: int = 3
    #: Distinct entries read beneath a directory that make it a read tree.
    read_fanout: int = 4
    #: Distinct names written, created or deleted that make it a tree.
    write_fanout: int = 8
    #: Paths left out entirely (the learning run's private tmp).
    ignore: tuple[str, ...] = ()


_PROC_PID = re.compile(r"/proc/[0-9]+(?=/|$)")
_FS_ORDER = (
    Category.READ,
    Category.EXEC,
    Category.WRITE,
    Category.CREATE,
    Category.DELETE,
    Category.IOCTL,
)
_WRITE_LIKE = (Category.WRITE, Category.CREATE, Category.DELETE)


def accesses_from_events(events: Iterable[Mapping[str, Any] | Any]) -> list[Access]:
    """Accesses from supervisor events (dicts or objects with ``category``
    and ``target``).  Events of unknown categories are skipped."""
    out: list[Access] = []
    for event in events:
        if isinstance(event, Mapping):
            category, target = event.get("category"), event.get("target")
        else:
            category, target = getattr(event, "category", None), getattr(event, "target", None)
        if not isinstance(category, str) or not isinstance(target, str):
            continue
        try:
            out.append(Access(Category(category), target))
        except ValueError:
            continue
    return out


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _under(path: str, root: str) -> bool:
    return root in ("/", path) or path.startswith(root + "/")


def _tree(path: str) -> str:
    return "/***" if path == "/" else escape_path(path) + "/***"


def collapse(
    accesses: Iterable[Access],
    *,
    is_dir: Callable[[str], bool] = lambda _path: False,
    options: LearnOptions | None = None,
) -> list[Rule]:
    """Allow rules covering every access in *accesses* (see the module
    docstring).  *is_dir* tells which targets are directories (the caller
    looks; this module touches nothing).  Rules come grouped by category,
    each pattern once; every access matches a rule of its category."""
    opts = options or LearnOptions()
    paths: dict[Category, set[str]] = defaultdict(set)
    net: dict[Category, set[str]] = defaultdict(set)
    for access in accesses:
        cat, target = access.category, access.target
        if cat is Category.STAT:
            continue
        if cat.is_net:
            net[cat].add(target)
            continue
        if not target.startswith("/") or "\0" in target:
            continue  # pipes, sockets, anonymous inodes: no path to allow
        if any(_under(target, root) for root in opts.ignore):
            continue
        paths[cat].add(target)
        if cat is Category.EXEC:
            paths[Category.READ].add(target)
        elif cat is Category.READ:
            # The kernel executes the dynamic loader and script interpreters
            # itself (no exec event shows them); they live in the system
            # trees, where reading implies executing, as -r does.
            root = next((r for r in opts.system_trees if _under(target, r)), None)
            if root is not None:
                paths[Category.EXEC].add(root)
    rules: list[Rule] = []
    for cat in _FS_ORDER:
        patterns = _collapse_paths(cat, paths.get(cat, set()), is_dir, opts)
        rules.extend(Rule(Action.ALLOW, cat, validate_pattern(p)) for p in sorted(patterns))
    for cat in (Category.NET_CONNECT, Category.NET_SEND, Category.NET_BIND):
        rules.extend(Rule(Action.ALLOW, cat, p) for p in _collapse_net(cat, net.get(cat, set())))
    return rules


def _collapse_paths(
    cat: Category, targets: set[str], is_dir: Callable[[str], bool], opts: LearnOptions
) -> set[str]:
    """Patterns for one category: special places first, then fan-out."""
    out: set[str] = set()
    trees: set[str] = set()  # directories whose tree is allowed
    rest: set[str] = set()
    for path in targets:
        special = _special(cat, path, opts)
        if special is not None:
            if special.endswith("/***") and "*" not in special[:-4]:
                trees.add(special[:-4] or "/")
            else:
                out.add(special)
        elif cat not in (Category.CREATE, Category.DELETE) and is_dir(path):
            if _depth(path) >= opts.min_depth:
                trees.add(path)
            else:
                # Too close to the root to allow all beneath it: the
                # directory alone, which the supervisor decides.
                rest.add(path)
        else:
            rest.add(path)
    fanout = opts.read_fanout if cat in (Category.READ, Category.EXEC) else opts.write_fanout
    if cat is not Category.IOCTL:
        trees |= _fan_in(rest | trees, trees, fanout, opts.min_depth)
    # Drop what a tree already covers, and trees inside trees.
    kept = {t for t in trees if not any(t != o and _under(t, o) for o in trees)}
    out |= {_tree(t) for t in kept}
    out |= {escape_path(p) for p in rest if not any(_under(p, t) for t in kept)}
    if cat in (Category.CREATE, Category.DELETE):
        # Landlock grants making and removing entries beneath a tree, not
        # the tree's own directory (that right is its parent's): a
        # directory the program made or removed itself keeps its own rule.
        out |= {escape_path(t) for t in kept if t in targets}
    return out


#: Directories whose entries come and go (a terminal per session, shared
#: memory objects per run): anything beneath them allows the tree.
_VOLATILE = ("/dev/pts", "/dev/shm")  # noqa: S108  # names to allow, not temporary files we use


def _special(cat: Category, path: str, opts: LearnOptions) -> str | None:
    """The pattern for a path in a place with its own rule, else None."""
    found: str | None = None
    if cat in (Category.READ, Category.EXEC):
        found = next((_tree(r) for r in opts.system_trees if _under(path, r)), None)
    if found is None and _under(path, "/proc"):
        found = "/proc/***" if cat is Category.READ else _PROC_PID.sub("/proc/*", escape_path(path))
    elif found is None and _under(path, "/sys") and cat is Category.READ:
        found = _tree(_parent(path))
    elif found is None:
        found = next((_tree(v) for v in _VOLATILE if path != v and _under(path, v)), None)
    return found


def _fan_in(paths: set[str], trees: set[str], fanout: int, min_depth: int) -> set[str]:
    """Directories (at least *min_depth* deep) with at least *fanout*
    distinct children among *paths*, bottom up: a directory made a tree
    counts as one child of its parent."""
    made: set[str] = set()
    current = set(paths)
    while True:
        children: dict[str, set[str]] = defaultdict(set)
        for path in current:
            if path != "/":
                children[_parent(path)].add(path)
        new = {
            d
            for d, kids in children.items()
            if len(kids) >= fanout and _depth(d) >= min_depth and d not in made and d not in trees
        }
        if not new:
            return made
        made |= new
        # Everything beneath a new tree folds into it.
        current = {p for p in current if not any(_under(p, d) and p != d for d in new)} | new


def _collapse_net(cat: Category, targets: set[str]) -> list[str]:
    """``ADDR!PORT`` targets as rules: one per address with its ports, or
    (bind) one rule with every port."""
    from stockade.policy.netspec import parse_net_pattern

    by_host: dict[str, set[int]] = defaultdict(set)
    for target in targets:
        host, sep, port = target.rpartition("!")
        if not sep or not port.isdigit():
            continue
        by_host["*" if cat is Category.NET_BIND else host].add(int(port))
    out: list[str] = []
    for host in sorted(by_host):
        ports = ",".join(str(p) for p in sorted(by_host[host]))
        try:
            out.append(str(parse_net_pattern(f"{host}!{ports}")))
        except PolicyError:
            continue  # not an address (an event this module does not know)
    return out


def learned_policy(
    accesses: Iterable[Access],
    *,
    is_dir: Callable[[str], bool] = lambda _path: False,
    options: LearnOptions | None = None,
    private_tmp: bool = True,
) -> Policy:
    """A complete policy from *accesses*: the ``none`` profile, the
    collapsed rules, and a private tmp."""
    from stockade.policy.builder import PolicyBuilder

    builder = PolicyBuilder("learn").profile("none")
    for rule in collapse(accesses, is_dir=is_dir, options=options):
        builder.rule(str(rule))
    if private_tmp:
        builder.set("private_tmp", True)
    return builder.build()
