"""Sizes, durations and resource limits as users write them.

Sizes are binary: ``K``, ``M``, ``G`` and ``T`` are powers of 1024, with an
optional ``B`` or ``iB`` and in any case (``512M``, ``512mb``, ``512MiB``);
a plain number is bytes.  A decimal (``1.5G``) is allowed and rounded down
to whole bytes.  Durations are seconds, or carry ``s``, ``m`` or ``h``.
"""

from __future__ import annotations

import math
import re

from stockade.errors import PolicyError
from stockade.policy.model import Rlimit

__all__ = [
    "BYTE_RLIMITS",
    "RLIMIT_NAMES",
    "format_rlimit_value",
    "format_size",
    "make_rlimit",
    "parse_duration",
    "parse_rlimit",
    "parse_size",
]

#: setrlimit(2) resources by their lowercase name without ``RLIMIT_``.
RLIMIT_NAMES: tuple[str, ...] = (
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
)

#: Resources measured in bytes, which accept a size suffix.
BYTE_RLIMITS: frozenset[str] = frozenset(
    {"as", "core", "data", "fsize", "memlock", "msgqueue", "rss", "stack"}
)

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SUFFIXES = (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SIZE = re.compile(rf"({_NUMBER})\s*(?:([kmgt])(?:i?b)?|b)?", re.ASCII | re.IGNORECASE)
_DURATION = re.compile(rf"({_NUMBER})\s*([smh]?)", re.ASCII | re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}

# RLIM_INFINITY is the all-ones 64-bit value, so a finite limit stays below it;
# sizes use the same bound, as cgroup files and setrlimit(2) both take a u64.
_MAX_VALUE = (1 << 64) - 2

_SIZE_EXPECTED = 'expected a size like "512M"'
_DURATION_EXPECTED = 'expected seconds like 30, 1.5 or "2m"'


def _size(text: str) -> int | None:
    """Bytes for a size text, or None if it is not one.  Zero is allowed."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        return None
    unit = _UNITS[(m.group(2) or "").lower()]
    from fractions import Fraction  # exact decimals; imported only when needed

    return math.floor(Fraction(m.group(1)) * unit)


def parse_size(text: str | int) -> int:
    """Parse a size (``512M``, ``1.5G``, ``4096``) into bytes, > 0.

    An ``int`` is taken as bytes.  Raises
    :class:`~stockade.errors.PolicyError` saying what was expected.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise PolicyError(f"{_SIZE_EXPECTED} (got {text!r})")
    value = text if isinstance(text, int) else _size(text)
    if value is None:
        raise PolicyError(f"{_SIZE_EXPECTED} (got {text!r})")
    if value <= 0:
        raise PolicyError(f"{_SIZE_EXPECTED}, more than 0 bytes (got {text!r})")
    if value > _MAX_VALUE:
        raise PolicyError(f"{_SIZE_EXPECTED}, below 16E (got {text!r})")
    return value


def format_size(n: int) -> str:
    """The shortest exact spelling of *n* bytes: ``512M``, ``1536K``, ``1000``."""
    if n > 0:
        for suffix, unit in _SUFFIXES:
            if n % unit == 0:
                return f"{n // unit}{suffix}"
    return str(n)


def parse_duration(value: str | float) -> float:
    """Parse seconds: a number, or text with an ``s``, ``m`` or ``h`` suffix.

    The result is finite and > 0.  Raises
    :class:`~stockade.errors.PolicyError` saying what was expected.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PolicyError(f"{_DURATION_EXPECTED} (got {value!r})")
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m is None:
            raise PolicyError(f"{_DURATION_EXPECTED} (got {value!r})")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise PolicyError(f"{_DURATION_EXPECTED}, finite and more than 0 (got {value!r})")
    return seconds


def _rlimit_name(name: str) -> str:
    short = name.strip().lower()
    short = short.removeprefix("rlimit_")
    if short not in RLIMIT_NAMES:
        raise PolicyError(f"unknown rlimit {name!r}; expected one of {', '.join(RLIMIT_NAMES)}")
    return short


def _rlimit_value(name: str, text: str, whole: str) -> int | None:
    part = text.strip().lower()
    if part in ("unlimited", "infinity"):
        return None
    value: int | None = None
    if part.isascii() and part.isdigit():
        value = int(part)
    elif name in BYTE_RLIMITS:
        value = _size(part)
    if value is None:
        size = ', a size like "64M"' if name in BYTE_RLIMITS else ""
        raise PolicyError(
            f"bad value {whole!r} for rlimit {name}: expected an integer{size}, "
            "'unlimited' or SOFT:HARD"
        )
    if value > _MAX_VALUE:
        raise PolicyError(f"bad value {whole!r} for rlimit {name}: expected below 2**64-1")
    return value


def make_rlimit(name: str, value: int | str | None) -> Rlimit:
    """An :class:`Rlimit` from a resource name and ``VALUE`` or ``SOFT:HARD``.

    *name* may carry an ``RLIMIT_`` prefix and any case.  ``None``,
    ``"unlimited"`` and ``"infinity"`` mean no limit.  Raises
    :class:`~stockade.errors.PolicyError` for an unknown name, a bad value
    or a soft limit above the hard one.
    """
    short = _rlimit_name(name)
    if value is None:
        return Rlimit(short, None, None)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PolicyError(
            f"bad value {value!r} for rlimit {short}: expected an integer or a string"
        )
    text = str(value)
    if isinstance(value, int) and value < 0:
        raise PolicyError(f"bad value {text!r} for rlimit {short}: expected 0 or more")
    soft_text, sep, hard_text = text.partition(":")
    soft = _rlimit_value(short, soft_text, text)
    hard = _rlimit_value(short, hard_text, text) if sep else soft
    if hard is not None and (soft is None or soft > hard):
        raise PolicyError(f"bad value {text!r} for rlimit {short}: expected SOFT <= HARD")
    return Rlimit(short, soft, hard)


def parse_rlimit(text: str) -> Rlimit:
    """Parse ``NAME=VALUE`` or ``NAME=SOFT:HARD`` (``nofile=256``, ``as=1G``).

    Raises :class:`~stockade.errors.PolicyError` as :func:`make_rlimit`.
    """
    name, sep, value = text.partition("=")
    if not sep:
        raise PolicyError(f"bad rlimit {text!r}: expected NAME=VALUE or NAME=SOFT:HARD")
    return make_rlimit(name, value)


def format_rlimit_value(limit: Rlimit) -> str:
    """The ``VALUE`` or ``SOFT:HARD`` text that :func:`make_rlimit` reads back."""

    def one(v: int | None) -> str:
        return "unlimited" if v is None else str(v)

    if limit.soft == limit.hard:
        return one(limit.soft)
    return f"{one(limit.soft)}:{one(limit.hard)}"
