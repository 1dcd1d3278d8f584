"""Options to policy: the one place every front end goes through.

The command line, :class:`stockade.Sandbox` keyword arguments and TOML files
all call a :class:`PolicyBuilder` in the order the user gave things, so that
later options refine earlier ones, and then :meth:`PolicyBuilder.build`.
Each call validates at once and raises :class:`~stockade.errors.PolicyError`
naming the builder's source and the option key.

Access options map to rules (``P`` is the normalised path; ``/`` gives the
tree pattern ``/***``):

==================  ======================================================
``read P``          ``allow/read+P/***``, ``allow/exec+P/***`` (SPEC: read
                    "and executing")
``write P``         ``allow/{read,exec,write,create,delete,ioctl}+P/***``
``exec P``          ``allow/exec+P/***``
``deny P``          ``deny/{read,write,exec,create,delete,ioctl}+P/***``;
                    P may be a glob (``/home/*/.ssh/***``), and one that
                    already ends in ``**`` or ``/***`` is used as it is
``net_allow SPEC``  ``allow/net/connect+PATTERN``; ``*`` (any address, any
                    port) also adds ``allow/net/send+*!*``
``net_bind PORTS``  ``allow/net/bind+*!PORTS``
==================  ======================================================

``read``, ``write`` and ``exec`` take a path, not a glob: glob characters in
it are matched literally (``/data/[x]`` is that directory).  Only ``deny``
accepts a glob, as SPEC section 2 says.

Paths must be absolute.  With ``relative_base`` (the command line passes
the current directory) a relative path is taken relative to it; paths are
normalised lexically with :func:`os.path.normpath`.

If at :meth:`~PolicyBuilder.build` no filesystem option was given at all
(no read, write, exec or deny, no rule of a filesystem category, no
profile, no root, no bind), the ``default`` profile is applied first
(SPEC section 2).  A TOML file counts by what it contains, exactly as the
same options on the command line would; the ``none`` profile states "no
filesystem access" explicitly.

Scalar options: a later value wins.  ``rlimit`` is per resource (a later
value for one resource wins), ``env`` per name, and ``unshare`` and
``cpus`` accumulate.  ``bind`` and ``tmpfs`` append in order.  Implied
namespaces (``root`` needs mount and user namespaces) and the access a bind
grants at its destination are derived by the launcher, not written into
the policy, so that a policy prints back exactly as given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Self, cast

from stockade._record import field, fields, record, replace
from stockade.errors import PolicyError
from stockade.policy.model import (
    FS_CATEGORIES,
    Action,
    Bind,
    Category,
    Lock,
    NetPattern,
    Policy,
    Rlimit,
    Rule,
)
from stockade.policy.netspec import parse_net_allow, parse_ports
from stockade.policy.patterns import escape_path, is_literal, validate_pattern
from stockade.policy.profiles import get_profile
from stockade.policy.rules import (
    AddRule,
    RemoveAll,
    RemoveLast,
    RuleCommand,
    SetCategory,
    SetLock,
    apply,
    format_policy,
    is_comment,
    parse_line,
)
from stockade.policy.sizes import (
    format_rlimit_value,
    make_rlimit,
    parse_duration,
    parse_rlimit,
    parse_size,
)

__all__ = ["LIST_OPTIONS", "OPTION_ORDER", "SCALAR_OPTIONS", "UNSHARE_NAMES", "PolicyBuilder"]

#: Namespaces ``unshare`` accepts; ``all`` means every one of them.
UNSHARE_NAMES: tuple[str, ...] = ("user", "mount", "pid", "net", "uts", "ipc", "cgroup", "time")

#: Options that take a list; they are applied first, in this order, by
#: :meth:`PolicyBuilder.apply_options`.
LIST_OPTIONS: tuple[str, ...] = (
    "read",
    "write",
    "exec",
    "deny",
    "net_allow",
    "net_bind",
    "rules",
)

#: Options :meth:`PolicyBuilder.set` takes, in the order
#: :meth:`PolicyBuilder.apply_options` applies them.
SCALAR_OPTIONS: tuple[str, ...] = (
    "no_net",
    "unshare",
    "map_root",
    "root",
    "bind",
    "tmpfs",
    "mkdir",
    "mkfile",
    "mkfifo",
    "symlink",
    "link",
    "hostname",
    "domainname",
    "time_offset",
    "proc_subset_pid",
    "memory",
    "max_procs",
    "timeout",
    "rlimit",
    "env",
    "clean_env",
    "cwd",
    "ipc",
    "lock",
    "log",
    "pty",
    "no_aslr",
    "no_thp",
    "cpus",
    "private_tmp",
)

#: Every key of an options mapping (TOML file, keyword arguments), in the
#: order they are applied: the profile, access lists, rules, then scalars.
OPTION_ORDER: tuple[str, ...] = ("profile", *LIST_OPTIONS, *SCALAR_OPTIONS)

_READ = (Category.READ, Category.EXEC)
_WRITE = (
    Category.READ,
    Category.EXEC,
    Category.WRITE,
    Category.CREATE,
    Category.DELETE,
    Category.IOCTL,
)
_EXEC = (Category.EXEC,)
_DENY = (
    Category.READ,
    Category.WRITE,
    Category.EXEC,
    Category.CREATE,
    Category.DELETE,
    Category.IOCTL,
)

_BOOL_OPTIONS = frozenset(
    {
        "no_net",
        "map_root",
        "clean_env",
        "pty",
        "no_aslr",
        "no_thp",
        "private_tmp",
        "proc_subset_pid",
    }
)

# sun_path is 108 bytes; a path needs its terminating NUL, and an abstract
# name gives its first byte to the leading NUL.
_SUN_PATH_MAX = 107
# The kernel's __NEW_UTS_LEN.
_HOSTNAME_MAX = 64
# The clocks a time namespace offsets, in the order Policy.time_offset keeps.
_TIME_CLOCKS = ("monotonic", "boottime")
# 31 years: beyond any uptime, within the kernel's KTIME_SEC_MAX / 2 (4.6e9).
_TIME_OFFSET_MAX = 10**9


def _int_text(text: str) -> object:
    """An integer written in *text*, or the text itself (refused later)."""
    try:
        return int(text, 10)
    except ValueError:
        return text


@record()
class _State:
    """What the effects accumulate; turned into a Policy at the end."""

    policy: Policy = field(default_factory=Policy)
    scalars: dict[str, object] = field(default_factory=dict)
    rlimits: dict[str, Rlimit] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    unshare: set[str] = field(default_factory=set)
    binds: list[Bind] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    #: mkdir, mkfile, mkfifo, symlink, link: entries of a tmpfs root, in order.
    entries: dict[str, list[object]] = field(default_factory=dict)
    cpus: set[int] = field(default_factory=set)

    def to_policy(self) -> Policy:
        return replace(
            self.policy,
            rlimits=tuple(sorted(self.rlimits.values())),
            env=tuple(self.env.items()),
            unshare=frozenset(self.unshare),
            binds=tuple(self.binds),
            tmpfs=tuple(self.tmpfs),
            # Entry keys are Policy fields.
            **{key: tuple(items) for key, items in self.entries.items()},
            cpus=tuple(sorted(self.cpus)),
            **self.scalars,  # keys are Policy fields, checked by set()
        )


_Effect = Callable[[_State], None]

# Policy fields that merge() carries as rule lines, and fields whose
# option has another name.
_MERGED_AS_RULES = frozenset({"rules", "enabled", "lock"})
_FIELD_OPTIONS = {"rlimits": "rlimit", "binds": "bind"}


def _is_fs_command(cmd: RuleCommand) -> bool:
    match cmd:
        case AddRule(rule):
            return rule.category in FS_CATEGORIES
        case RemoveLast(_, category, _) | RemoveAll(_, category, _) | SetCategory(category, _):
            return category in FS_CATEGORIES
        case _:
            return False


class PolicyBuilder:
    """Accumulate options in the user's order and build a :class:`Policy`.

    *source* names the front end in error messages (``"job.toml"``,
    ``"command line"``).  *relative_base*, when given, is the directory
    relative paths are taken against; otherwise they are errors.
    *key_names* renames option keys in error messages (the command line
    may map ``"rules"`` to ``"-c"``).  Every method raises
    :class:`~stockade.errors.PolicyError` for a bad value, naming the
    source and the key.
    """

    def __init__(
        self,
        source: str,
        relative_base: str | None = None,
        *,
        key_names: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self.relative_base = relative_base
        self.key_names: Mapping[str, str] = dict(key_names or {})
        self._effects: list[_Effect] = []
        self._fs_given = False

    # -- errors and paths -----------------------------------------------

    def _error(self, key: str, message: str) -> PolicyError:
        return PolicyError(message, self.source, self.key_names.get(key, key))

    @contextmanager
    def _naming(self, key: str, prefix: str = "") -> Iterator[None]:
        """Give an error from a pure parser (or a nested option) this
        builder's source and *key*."""
        try:
            yield
        except PolicyError as err:
            raise self._error(key, prefix + err.message) from None

    @contextmanager
    def scoped(self, source: str, relative_base: str | None = None) -> Iterator[Self]:
        """Temporarily name another source (a policy file inside a command line).

        Within the block errors name *source*, relative paths follow
        *relative_base*, and keys are not renamed.
        """
        saved = (self.source, self.relative_base, self.key_names)
        self.source, self.relative_base, self.key_names = source, relative_base, {}
        try:
            yield self
        finally:
            self.source, self.relative_base, self.key_names = saved

    def _path(self, key: str, value: object) -> str:
        """An absolute, normalised path from a user's path argument."""
        if not isinstance(value, str):
            raise self._error(key, f"expected a path as a string (got {value!r})")
        if not value:
            raise self._error(key, "empty path: expected an absolute path")
        if "\0" in value:
            raise self._error(key, f"path {value!r} contains a NUL character")
        path = value
        if not path.startswith("/"):
            if self.relative_base is None:
                raise self._error(key, f"relative path {value!r}: expected an absolute path")
            # Plain string work on purpose: pathlib would hide the lexical
            # normalisation below.
            path = os.path.join(self.relative_base, path)
        path = os.path.normpath(path)
        # POSIX lets normpath keep exactly two leading slashes; Linux gives
        # them no meaning.
        return "/" + path.lstrip("/")

    def _destination(self, key: str, value: object) -> str:
        """A path inside the sandbox where something is mounted or made:
        absolute, without ``..`` (never taken relative to a directory of
        the host, never climbing out of where it is made)."""
        if isinstance(value, str) and not value.startswith("/"):
            raise self._error(key, f"relative destination {value!r}: expected an absolute path")
        if isinstance(value, str) and ".." in value.split("/"):
            raise self._error(key, f"destination {value!r} contains '..': expected a plain path")
        return self._path(key, value)

    def _tree(self, key: str, value: object) -> str:
        """The ``P/***`` pattern for a literal path argument."""
        path = self._path(key, value)
        pattern = "/***" if path == "/" else escape_path(path) + "/***"
        with self._naming(key):
            return validate_pattern(pattern)

    def _add(self, cmd: RuleCommand) -> None:
        if _is_fs_command(cmd):
            self._fs_given = True

        def effect(state: _State) -> None:
            state.policy = apply(state.policy, cmd)

        self._effects.append(effect)

    def _add_rules(self, categories: tuple[Category, ...], pattern: str, action: Action) -> None:
        for category in categories:
            self._add(AddRule(Rule(action, category, pattern)))

    # -- access -----------------------------------------------------------

    def read(self, path: str) -> Self:
        """Allow reading and executing *path* and everything beneath it."""
        self._add_rules(_READ, self._tree("read", path), Action.ALLOW)
        return self

    def write(self, path: str) -> Self:
        """Allow reading, executing, writing, creating, deleting and ioctl
        under *path*."""
        self._add_rules(_WRITE, self._tree("write", path), Action.ALLOW)
        return self

    def exec(self, path: str) -> Self:
        """Allow executing under *path*."""
        self._add_rules(_EXEC, self._tree("exec", path), Action.ALLOW)
        return self

    def deny(self, path: str) -> Self:
        """Deny all access to a path and everything beneath it, or to a glob."""
        if isinstance(path, str) and path and not is_literal(path):
            pattern = path
            if not pattern.startswith("/") and self.relative_base is not None:
                pattern = escape_path(self._path("deny", self.relative_base)) + "/" + pattern
            with self._naming("deny"):
                pattern = validate_pattern(pattern)
                # "All access" includes what lies beneath a matching directory:
                # denying only "/home/*/.ssh" itself would leave its files open.
                if not pattern.endswith(("/***", "**")):
                    pattern = validate_pattern(pattern + "/***")
        else:
            pattern = self._tree("deny", path)
        self._add_rules(_DENY, pattern, Action.DENY)
        return self

    def rule(self, line: str) -> Self:
        """Apply one rule-language line (SPEC section 4)."""
        if not isinstance(line, str):
            raise self._error("rules", f"expected a rule line as a string (got {line!r})")
        if is_comment(line):
            return self
        try:
            cmd = parse_line(line, self.source)
        except PolicyError as err:
            raise self._error("rules", f"{line.strip()!r}: {err.message}") from None
        self._add(cmd)
        return self

    def profile(self, name: str) -> Self:
        """Apply the built-in profile *name* at this point."""
        with self._naming("profile"):
            prof = get_profile(name)
        self._fs_given = True
        steps: dict[str, Callable[[str], Self]] = {
            "read": self.read,
            "write": self.write,
            "exec": self.exec,
            "deny": self.deny,
            "rule": self.rule,
        }
        for kind, arg in prof.steps:
            steps[kind](arg)
        if prof.write_cwd:
            cwd = self._path("profile", self._current_directory())
            if cwd != "/":
                self.write(cwd)
        for key, value in prof.options:
            self.set(key, value)
        return self

    def _current_directory(self) -> str:
        if self.relative_base is not None:
            return self.relative_base
        try:
            return os.getcwd()  # the one allowed look at the process
        except OSError as err:
            raise self._error(
                "profile", f"cannot find the current directory: {err.strerror}"
            ) from None

    def net_allow(self, spec: str) -> Self:
        """Allow outbound connections to *spec* (SPEC section 2 forms)."""
        if not isinstance(spec, str):
            raise self._error("net_allow", f'expected a string like "host:443" (got {spec!r})')
        with self._naming("net_allow"):
            target = parse_net_allow(spec)
        self._add(AddRule(Rule(Action.ALLOW, Category.NET_CONNECT, str(target))))
        if target.any_host and target.all_ports:
            # Unrestricted networking includes datagrams to anywhere.
            self._add(AddRule(Rule(Action.ALLOW, Category.NET_SEND, str(target))))
        return self

    def net_bind(self, ports: str | int) -> Self:
        """Allow listening on *ports* (``N``, ``N-M``, ``N,M``, ``*``)."""
        with self._naming("net_bind"):
            target = NetPattern("*", parse_ports(ports))
        self._add(AddRule(Rule(Action.ALLOW, Category.NET_BIND, str(target))))
        return self

    # -- scalar options -----------------------------------------------------

    def set(self, key: str, value: object) -> Self:
        """Set one scalar option (see :data:`SCALAR_OPTIONS`)."""
        handler = self._SETTERS.get(key)
        if handler is None:
            raise self._error(
                key, f"unknown option; expected one of {', '.join(sorted(SCALAR_OPTIONS))}"
            )
        handler(self, key, value)
        return self

    def _scalar(self, key: str, value: object) -> None:
        def effect(state: _State) -> None:
            state.scalars[key] = value

        self._effects.append(effect)

    def _set_bool(self, key: str, value: object) -> None:
        if not isinstance(value, bool):
            raise self._error(key, f"expected true or false (got {value!r})")
        self._scalar(key, value)

    def _set_memory(self, key: str, value: object) -> None:
        # The parsers check the type themselves and say what they expected.
        with self._naming(key):
            self._scalar(key, parse_size(cast("str | int", value)))

    def _set_timeout(self, key: str, value: object) -> None:
        with self._naming(key):
            self._scalar(key, parse_duration(cast("str | float", value)))

    def _set_max_procs(self, key: str, value: object) -> None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            number = int(value)
        if number is None or number <= 0:
            raise self._error(key, f"expected a positive integer (got {value!r})")
        self._scalar(key, number)

    def _set_rlimit(self, key: str, value: object) -> None:
        with self._naming(key):
            if isinstance(value, Rlimit):
                limit = make_rlimit(value.name, format_rlimit_value(value))
            elif isinstance(value, str):
                limit = parse_rlimit(value)
            elif (
                isinstance(value, tuple)
                and len(value) == 2
                and isinstance(value[0], str)
                and isinstance(value[1], (int, str))
            ):
                limit = make_rlimit(value[0], value[1])
            else:
                raise PolicyError(f'expected NAME=VALUE like "nofile=256" (got {value!r})')

        def effect(state: _State) -> None:
            state.rlimits[limit.name] = limit

        self._effects.append(effect)

    def _set_env(self, key: str, value: object) -> None:
        if isinstance(value, str):
            name, sep, text = value.partition("=")
            if not sep:
                raise self._error(key, f"expected K=V (got {value!r})")
        elif (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], str)
        ):
            name, text = value
        else:
            raise self._error(key, f"expected K=V or a (name, value) pair (got {value!r})")
        if not name or "=" in name or "\0" in name or "\0" in text:
            raise self._error(
                key,
                f"bad variable {value!r}: expected a non-empty name without '=', "
                "and no NUL characters",
            )

        def effect(state: _State) -> None:
            state.env[name] = text

        self._effects.append(effect)

    def _set_unshare(self, key: str, value: object) -> None:
        names: list[object]
        if isinstance(value, str):
            names = [n.strip() for n in value.split(",")]
        elif isinstance(value, (list, tuple, set, frozenset)):
            names = list(value)
        else:
            raise self._error(key, f"expected a list of namespaces (got {value!r})")
        chosen: set[str] = set()
        for name in names:
            if name == "all":
                chosen.update(UNSHARE_NAMES)
            elif isinstance(name, str) and name in UNSHARE_NAMES:
                chosen.add(name)
            else:
                raise self._error(
                    key,
                    f"unknown namespace {name!r}; expected one of "
                    f"{', '.join(UNSHARE_NAMES)} or all",
                )

        def effect(state: _State) -> None:
            state.unshare |= chosen

        self._effects.append(effect)

    def _set_root(self, key: str, value: object) -> None:
        self._fs_given = True
        self._scalar(key, "tmpfs" if value == "tmpfs" else self._path(key, value))

    def _set_bind(self, key: str, value: object) -> None:
        self._fs_given = True
        if isinstance(value, Bind):
            src, dst, readonly = value.src, value.dst, value.readonly
        elif isinstance(value, str):
            parts = value.split(":")
            readonly = False
            if len(parts) > 1 and parts[-1] in ("ro", "rw"):
                readonly = parts.pop() == "ro"
            if len(parts) > 2 or not all(parts):
                raise self._error(
                    key, f"expected SRC:DST[:ro] (got {value!r}); paths cannot contain ':'"
                )
            src, dst = parts[0], parts[-1]
        else:
            raise self._error(key, f"expected SRC:DST[:ro] (got {value!r})")
        bind = Bind(self._path(key, src), self._destination(key, dst), bool(readonly))
        if ":" in bind.src or ":" in bind.dst:
            # SRC:DST[:ro] could not carry it, so the policy could not be printed.
            raise self._error(key, f"bind {value!s}: paths cannot contain ':'")

        def effect(state: _State) -> None:
            state.binds.append(bind)

        self._effects.append(effect)

    def _set_tmpfs(self, key: str, value: object) -> None:
        path = self._destination(key, value)

        def effect(state: _State) -> None:
            state.tmpfs.append(path)

        self._effects.append(effect)

    def _set_entry(self, key: str, value: object) -> None:
        """mkdir, mkfile, mkfifo: a path; symlink, link: a (target, path) pair."""
        item: object
        if key in ("symlink", "link"):
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 2
                or not all(isinstance(v, str) for v in value)
            ):
                raise self._error(
                    key, f'expected a [TARGET, PATH] pair like ["/usr/bin", "/bin"] (got {value!r})'
                )
            target, where = value
            if key == "link":
                target = self._destination(key, target)
            elif not target or "\0" in target:
                raise self._error(key, f"expected a non-empty link target (got {target!r})")
            item = (target, self._destination(key, where))
        else:
            item = self._destination(key, value)
        if item == "/" or (isinstance(item, tuple) and item[1] == "/"):
            raise self._error(key, "the root itself cannot be made; name a path beneath it")

        def effect(state: _State) -> None:
            state.entries.setdefault(key, []).append(item)

        self._effects.append(effect)

    def _set_domainname(self, key: str, value: object) -> None:
        self._set_hostname(key, value, "domain name")

    def _set_time_offset(self, key: str, value: object) -> None:
        expected = (
            "expected SECONDS (both clocks) or monotonic=SECONDS,boottime=SECONDS, "
            f"whole seconds within +-{_TIME_OFFSET_MAX}"
        )
        offsets: dict[str, object] = {}
        if isinstance(value, int) and not isinstance(value, bool):
            offsets = dict.fromkeys(_TIME_CLOCKS, value)
        elif isinstance(value, (list, tuple)) and len(value) == len(_TIME_CLOCKS):
            offsets = dict(zip(_TIME_CLOCKS, value, strict=True))
        elif isinstance(value, Mapping):
            offsets = {str(k): v for k, v in value.items()}
        elif isinstance(value, str) and "=" not in value:
            offsets = dict.fromkeys(_TIME_CLOCKS, _int_text(value.strip()))
        elif isinstance(value, str):
            for part in value.split(","):
                name, _, number = part.partition("=")
                if name.strip() in offsets:
                    raise self._error(key, f"{name.strip()} given twice in {value!r}")
                offsets[name.strip()] = _int_text(number.strip())
        else:
            raise self._error(key, f"{expected} (got {value!r})")
        unknown = set(offsets) - set(_TIME_CLOCKS)
        if unknown:
            raise self._error(key, f"unknown clock {sorted(unknown)[0]!r} in {value!r}; {expected}")
        numbers = [offsets.get(clock, 0) for clock in _TIME_CLOCKS]
        for n in numbers:
            if not isinstance(n, int) or isinstance(n, bool) or abs(n) > _TIME_OFFSET_MAX:
                raise self._error(key, f"{expected} (got {value!r})")
        self._scalar(key, (numbers[0], numbers[1]))

    def _set_hostname(self, key: str, value: object, what: str = "hostname") -> None:
        if (
            not isinstance(value, str)
            or not 0 < len(value.encode("utf-8", "surrogateescape")) <= _HOSTNAME_MAX
            or not value.isprintable()
            or any(c.isspace() for c in value)
        ):
            raise self._error(
                key,
                f"expected a {what} of 1 to {_HOSTNAME_MAX} printable characters "
                f"without spaces (got {value!r})",
            )
        self._scalar(key, value)

    def _set_cwd(self, key: str, value: object) -> None:
        self._scalar(key, self._path(key, value))

    def _set_log(self, key: str, value: object) -> None:
        # "-" is standard error (SPEC: --log -), not a file named "-".
        self._scalar(key, "-" if value == "-" else self._path(key, value))

    def _set_ipc(self, key: str, value: object) -> None:
        if isinstance(value, str) and value.startswith("@"):
            name = value[1:]
            if not name or "\0" in name:
                raise self._error(key, f"expected @NAME with a non-empty name (got {value!r})")
            address = value
            size = len(name.encode("utf-8", "surrogateescape"))
        else:
            address = self._path(key, value)
            size = len(address.encode("utf-8", "surrogateescape"))
        if size > _SUN_PATH_MAX:
            raise self._error(
                key, f"socket address {value!r} is {size} bytes; expected at most {_SUN_PATH_MAX}"
            )
        self._scalar(key, address)

    def _set_lock(self, key: str, value: object) -> None:
        if isinstance(value, bool):
            lock = Lock.ON if value else Lock.OFF
        elif isinstance(value, str) and value in set(Lock):
            lock = Lock(value)
        else:
            raise self._error(key, f'expected true, false or "exec" (got {value!r})')
        self._add(SetLock(lock))

    def _set_cpus(self, key: str, value: object) -> None:
        cpus: set[int] = set()
        if isinstance(value, str):
            with self._naming(key, "bad CPU list: "):
                for r in parse_ports(value):
                    cpus.update(range(r.first, r.last + 1))
        elif isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value
        ):
            cpus.update(value)
        else:
            raise self._error(key, f"expected a list of CPU numbers like [0, 1] (got {value!r})")

        def effect(state: _State) -> None:
            state.cpus |= cpus

        self._effects.append(effect)

    _SETTERS: Mapping[str, Callable[[PolicyBuilder, str, object], None]] = {
        "memory": _set_memory,
        "max_procs": _set_max_procs,
        "timeout": _set_timeout,
        "rlimit": _set_rlimit,
        "env": _set_env,
        "unshare": _set_unshare,
        "root": _set_root,
        "bind": _set_bind,
        "tmpfs": _set_tmpfs,
        **dict.fromkeys(("mkdir", "mkfile", "mkfifo", "symlink", "link"), _set_entry),
        "hostname": _set_hostname,
        "domainname": _set_domainname,
        "time_offset": _set_time_offset,
        "cwd": _set_cwd,
        "log": _set_log,
        "ipc": _set_ipc,
        "lock": _set_lock,
        "cpus": _set_cpus,
        **dict.fromkeys(_BOOL_OPTIONS, _set_bool),
    }

    # -- many options at once ---------------------------------------------------

    def apply_options(self, options: Mapping[str, object]) -> Self:
        """Apply an options mapping (a TOML document, keyword arguments).

        Keys are applied in :data:`OPTION_ORDER`, whatever their order in
        the mapping: ``profile``, ``read``, ``write``, ``exec``, ``deny``,
        ``net_allow``, ``net_bind``, ``rules``, then the scalar options.
        List options take lists; ``rlimit`` and ``env`` take tables
        (mappings) or lists of ``NAME=VALUE`` texts.
        """
        for key in options:
            if key not in OPTION_ORDER:
                raise self._error(
                    key, f"unknown key; expected one of {', '.join(sorted(OPTION_ORDER))}"
                )
        for key in OPTION_ORDER:
            if key in options:
                self._apply_option(key, options[key])
        return self

    def _apply_option(self, key: str, value: object) -> None:
        if key == "profile":
            if not isinstance(value, str):
                raise self._error(key, f"expected a profile name (got {value!r})")
            self.profile(value)
        elif key in LIST_OPTIONS:
            method: Callable[[str], Self] = getattr(self, "rule" if key == "rules" else key)
            allowed: tuple[type, ...] = (str, int) if key == "net_bind" else (str,)
            items = self._list(key, value, allowed)
            for item in items:
                method(item)  # type: ignore[arg-type]  # net_bind also takes int
        elif key in ("rlimit", "env"):
            if isinstance(value, Mapping):
                for name, item in value.items():
                    self._apply_table_item(key, name, item)
            else:
                for item in self._list(key, value, (str,)):
                    self.set(key, item)
        elif key in ("bind", "tmpfs", "mkdir", "mkfile", "mkfifo"):
            for item in self._list(key, value, (str, Bind) if key == "bind" else (str,)):
                self.set(key, item)
        elif key in ("symlink", "link"):
            for item in self._list(key, value, (list, tuple)):
                self.set(key, item)
        else:
            self.set(key, value)

    def _apply_table_item(self, key: str, name: object, item: object) -> None:
        if not isinstance(name, str):
            raise self._error(key, f"expected names as strings (got {name!r})")
        sub = f"{key}.{name}"
        if key == "env":
            if not isinstance(item, str):
                raise self._error(sub, f"expected a string (got {item!r})")
            with self._naming(sub):
                self.set(key, (name, item))
            return
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise self._error(sub, f'expected an integer or a string like "64M" (got {item!r})')
        with self._naming(sub):
            self.set(key, (name, item))

    def _list(self, key: str, value: object, allowed: tuple[type, ...]) -> list[object]:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, allowed) and not isinstance(v, bool) for v in value
        ):
            kinds = " or ".join(
                {str: "strings", int: "integers", Bind: "binds", list: "[TARGET, PATH] pairs"}.get(
                    t, t.__name__
                )
                for t in allowed
                if t is not tuple
            )
            raise self._error(key, f"expected a list of {kinds} (got {value!r})")
        return list(value)

    def merge(self, policy: Policy) -> Self:
        """Apply a complete *policy* at this point, as if its options were given.

        Its ``sandbox/``, ``lock:`` and access rules are appended; every
        other field that differs from the default is set, so later options
        still refine it.  A policy is a complete statement of access (one
        without filesystem rules allows no files), so it always counts as a
        filesystem option and the default profile is not added.  (For
        ``--config``, :func:`stockade.policy.tomlfile.apply_toml` applies
        the file's own options instead, so a file that says nothing about
        files leaves the default profile to apply as it would on the command
        line.)
        """
        self._fs_given = True
        for line in format_policy(policy):
            self.rule(line)
        defaults = Policy()
        for f in fields(Policy):
            value = getattr(policy, f.name)
            if f.name in _MERGED_AS_RULES or value == getattr(defaults, f.name):
                continue
            key = _FIELD_OPTIONS.get(f.name, f.name)
            if isinstance(value, tuple) and key != "cpus":
                for item in value:
                    self.set(key, item)
            else:
                self.set(key, value)
        return self

    # -- the result ---------------------------------------------------------------

    def build(self) -> Policy:
        """The policy of every option given so far.

        Applies the ``default`` profile first when no filesystem option was
        given at all.
        """
        effects = self._effects
        if not self._fs_given:
            default = PolicyBuilder(self.source, self.relative_base)
            default.profile("default")
            effects = [*default._effects, *effects]
        state = _State()
        for effect in effects:
            effect(state)
        return state.to_policy()
