"""TOML policy files (SPEC section 5): read with tomllib, written by hand.

Every option of SPEC section 2 is a key of the same name with underscores
(``read = ["/usr"]``, ``net_allow = [...]``, ``memory = "512M"``,
``rules = [...]``, ``[rlimit] nofile = 256``, ``[env] LANG = "C"``); see
:data:`~stockade.policy.builder.OPTION_ORDER` for the full list.  Keys are
applied in that fixed order, whatever their order in the file: ``profile``,
``read``, ``write``, ``exec``, ``deny``, ``net_allow``, ``net_bind``,
``rules``, then the scalar options.  Relative paths are errors, since a
file may be used from any directory.

A file that configures no filesystem access gets the ``default`` profile,
as the same options would on the command line.  :func:`dump_toml`
therefore always writes ``profile = "none"`` and the complete rule list: a
dumped policy states everything and nothing is added when it is read back.
"""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

from stockade._record import fields
from stockade.errors import PolicyError, errno_name
from stockade.policy.builder import PolicyBuilder
from stockade.policy.model import Policy, Rlimit
from stockade.policy.rules import format_policy
from stockade.policy.sizes import format_rlimit_value, format_size

__all__ = ["apply_toml", "dump_toml", "load_toml", "loads_toml"]


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        name = errno_name(err.errno) if err.errno is not None else "error"
        raise PolicyError(f"cannot read the policy file: {name} ({err.strerror})", path) from None
    except UnicodeDecodeError as err:
        raise PolicyError(f"invalid TOML: not UTF-8 text at byte {err.start}", path) from None
    except tomllib.TOMLDecodeError as err:
        # The decoder's message ends in "(at line L, column C)".
        raise PolicyError(f"invalid TOML: {err}", path) from None


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"invalid TOML: {err}", source) from None


def apply_toml(builder: PolicyBuilder, path: str) -> None:
    """Apply the policy file *path* to *builder*, at this point of its options.

    For ``--config`` on a command line: errors name the file (not the
    command line), relative paths in the file are errors, and the file
    counts as a filesystem option only if it configures filesystem access.
    Raises :class:`~stockade.errors.PolicyError` naming the file, the key
    and what was expected, or the line of a TOML syntax error.
    """
    data = _read(path)
    with builder.scoped(path):
        builder.apply_options(data)


def load_toml(path: str) -> Policy:
    """Read the policy file *path*.

    Raises :class:`~stockade.errors.PolicyError` naming the file, the key
    and what was expected, or the line of a TOML syntax error.
    """
    return PolicyBuilder(path).apply_options(_read(path)).build()


def loads_toml(text: str, source: str = "<string>") -> Policy:
    """Read a policy from TOML *text*; errors name *source* as the file."""
    return PolicyBuilder(source).apply_options(_parse(text, source)).build()


def _str(value: str) -> str:
    """A TOML basic string.

    JSON string escapes are all valid TOML escapes; ``ensure_ascii=False``
    because JSON would write astral characters as surrogate pairs, which
    TOML forbids, and DEL must be escaped in TOML but not in JSON.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError(f"cannot write {value!r} as TOML: it is not valid Unicode text") from None
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PolicyError(f"cannot write {value!r} as a TOML policy value")
        return repr(value)
    if isinstance(value, str):
        return _str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise PolicyError(f"cannot write {value!r} as a TOML policy value")


def _rlimit_value(limit: Rlimit) -> str:
    if limit.soft == limit.hard and limit.soft is not None:
        return str(limit.soft)
    return _str(format_rlimit_value(limit))


# Fields written by hand below, or carried by the rule lines.
_SPECIAL = frozenset({"rules", "enabled", "lock", "rlimits", "env", "binds", "unshare"})


def dump_toml(policy: Policy) -> str:
    """Write *policy* as a TOML policy file that :func:`load_toml` reads back
    to an equal policy.

    The file always has ``profile = "none"`` and the full ``rules`` list
    (including ``sandbox/`` and ``lock:`` lines), then every other option
    that differs from its default.  Raises
    :class:`~stockade.errors.PolicyError` for text TOML cannot carry.
    """
    lines = [
        "# stockade policy (SPEC section 5); every access rule is listed, so no",
        "# profile is added when this file is read.",
        'profile = "none"',
    ]
    rules = format_policy(policy)
    if rules:
        lines.append("rules = [")
        lines.extend(f"    {_str(r)}," for r in rules)
        lines.append("]")
    else:
        lines.append("rules = []")
    defaults = Policy()
    for f in fields(Policy):
        value = getattr(policy, f.name)
        if f.name in _SPECIAL or value == getattr(defaults, f.name):
            continue
        if f.name == "memory":
            value = format_size(value)
        lines.append(f"{f.name} = {_value(value)}")
    if policy.unshare:
        lines.append(f"unshare = {_value(sorted(policy.unshare))}")
    if policy.binds:
        lines.append(f"bind = {_value([str(b) for b in policy.binds])}")
    if policy.rlimits:
        lines.append("")
        lines.append("[rlimit]")
        lines.extend(f"{r.name} = {_rlimit_value(r)}" for r in policy.rlimits)
    if policy.env:
        lines.append("")
        lines.append("[env]")
        lines.extend(f"{_str(k)} = {_str(v)}" for k, v in policy.env)
    return "\n".join(lines) + "\n"
