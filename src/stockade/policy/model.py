"""What is allowed: the policy model.

A :class:`Policy` is frozen, comparable and hashable.  It is built from any
front end (command line, TOML, rule lines, keyword arguments) and prints
back as rule lines (:meth:`Policy.to_rules`) that parse to an equal policy.

Filesystem and network access is an ordered list of :class:`Rule`; for one
access the last matching rule of its category wins, and with no match a
category that is on denies.  Everything that is not access (limits,
environment, namespaces) is a plain field.
"""

from __future__ import annotations

import enum

from stockade._record import record


class Action(enum.StrEnum):
    """What a rule does when it matches."""

    ALLOW = "allow"
    DENY = "deny"


class Category(enum.StrEnum):
    """A kind of access, as named in the rule language (SPEC section 4)."""

    READ = "read"
    WRITE = "write"
    EXEC = "exec"
    STAT = "stat"
    CREATE = "create"
    DELETE = "delete"
    IOCTL = "ioctl"
    NET_CONNECT = "net/connect"
    NET_BIND = "net/bind"
    NET_SEND = "net/send"

    @property
    def is_net(self) -> bool:
        return self.value.startswith("net/")


FS_CATEGORIES: frozenset[Category] = frozenset(c for c in Category if not c.is_net)
NET_CATEGORIES: frozenset[Category] = frozenset(c for c in Category if c.is_net)

#: Categories that are on unless a policy turns them off.  ``stat`` is off:
#: no kernel layer mediates stat(2), and hiding metadata costs a supervisor
#: round trip per call, so it is opt-in (``sandbox/stat:on``).
DEFAULT_ON: frozenset[Category] = frozenset(Category) - {Category.STAT}


class Lock(enum.StrEnum):
    """``lock:`` states of the rule language."""

    OFF = "off"
    ON = "on"
    EXEC = "exec"


@record(frozen=True, order=True)
class PortRange:
    """An inclusive range of ports, ``first <= last``."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def is_all(self) -> bool:
        return self.first == 0 and self.last == 65535


@record(frozen=True)
class NetPattern:
    """A network rule's target.

    ``host`` is ``"*"`` (any address), an IP network in CIDR notation
    (``127.0.0.0/8``, ``::1/128``), or a hostname.  ``ports`` is a tuple of
    sorted, non-overlapping ranges.
    """

    host: str
    ports: tuple[PortRange, ...]

    @property
    def any_host(self) -> bool:
        return self.host == "*"

    @property
    def all_ports(self) -> bool:
        return len(self.ports) == 1 and self.ports[0].is_all

    def __str__(self) -> str:
        ports = "*" if self.all_ports else ",".join(str(p) for p in self.ports)
        return f"{self.host}!{ports}"


@record(frozen=True)
class Rule:
    """One ``allow/CATEGORY+PATTERN`` or ``deny/CATEGORY+PATTERN`` line.

    For filesystem categories ``pattern`` is an absolute glob (see
    :mod:`stockade.policy.patterns`); for network categories it is the
    canonical text of a :class:`NetPattern`.
    """

    action: Action
    category: Category
    pattern: str

    def __str__(self) -> str:
        return f"{self.action}/{self.category}+{self.pattern}"


@record(frozen=True, order=True)
class Rlimit:
    """A setrlimit(2) resource by its lowercase name (``nofile``).

    ``None`` means ``RLIM_INFINITY``.
    """

    name: str
    soft: int | None
    hard: int | None


@record(frozen=True)
class Bind:
    """``--bind SRC:DST[:ro]``."""

    src: str
    dst: str
    readonly: bool = False

    def __str__(self) -> str:
        return f"{self.src}:{self.dst}" + (":ro" if self.readonly else "")


@record(frozen=True)
class Policy:
    """A complete sandbox policy.  Build one with :meth:`from_rules`,
    :meth:`from_toml`, or :class:`stockade.Sandbox` keyword arguments.
    """

    rules: tuple[Rule, ...] = ()
    #: Categories that deny when no rule matches.
    enabled: frozenset[Category] = DEFAULT_ON
    lock: Lock = Lock.OFF

    # Limits.
    memory: int | None = None
    max_procs: int | None = None
    timeout: float | None = None
    rlimits: tuple[Rlimit, ...] = ()

    # Environment of the command.
    env: tuple[tuple[str, str], ...] = ()
    clean_env: bool = False
    cwd: str | None = None

    # Namespaces and mounts (enforced by the namespace layer).
    unshare: frozenset[str] = frozenset()
    #: In a user namespace, appear as uid/gid 0 instead of the caller's ids.
    map_root: bool = False
    root: str | None = None
    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[str, ...] = ()
    #: Entries made inside a ``root = "tmpfs"`` before the command starts:
    #: directories, empty files and FIFOs (absolute paths), and symbolic
    #: and hard links as ``(target, path)`` pairs, like ``ln [-s] TARGET PATH``.
    mkdir: tuple[str, ...] = ()
    mkfile: tuple[str, ...] = ()
    mkfifo: tuple[str, ...] = ()
    symlink: tuple[tuple[str, str], ...] = ()
    link: tuple[tuple[str, str], ...] = ()
    hostname: str | None = None
    no_net: bool = False

    # Process hardening knobs.
    no_aslr: bool = False
    no_thp: bool = False
    cpus: tuple[int, ...] = ()

    #: Give the command a private, empty temporary directory (removed at the
    #: end), writable, with ``TMPDIR`` pointing at it; bound over ``/tmp`` when
    #: a mount namespace is in use.
    private_tmp: bool = False

    # Run settings that policy files may also carry (SPEC section 5).
    log: str | None = None
    ipc: str | None = None
    pty: bool = False

    def rules_for(self, category: Category) -> tuple[Rule, ...]:
        """The rules of one category, in order."""
        return tuple(r for r in self.rules if r.category is category)

    def to_rules(self) -> list[str]:
        """Render the policy as rule-language lines (access rules only)."""
        from stockade.policy.rules import format_policy

        return format_policy(self)

    @classmethod
    def from_rules(cls, lines: list[str] | tuple[str, ...], source: str = "rules") -> Policy:
        """Build a policy from rule-language lines.

        Raises :class:`stockade.PolicyError` naming the bad line.
        """
        from stockade.policy.rules import policy_from_rules

        return policy_from_rules(lines, source=source)

    @classmethod
    def from_toml(cls, path: str) -> Policy:
        """Read a TOML policy file (SPEC section 5).

        Raises :class:`stockade.PolicyError` naming the file, the key and
        what was expected.
        """
        from stockade.policy.tomlfile import load_toml

        return load_toml(path)
