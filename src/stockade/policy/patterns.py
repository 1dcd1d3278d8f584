"""Absolute path globs of the rule language (SPEC section 4).

Syntax, matched against a whole, already resolved absolute path:

=========  ==============================================================
``*``      any run of characters within one path component (never ``/``)
``**``     any run of characters across components (``/`` included)
``?``      one character other than ``/``
``[...]``  one character of a class (``[a-z]``, ``[!0-9]``/``[^0-9]``
           negates; a ``]`` first in the class is a member); never ``/``
``/***``   only as the final component: the directory itself *and*
           everything beneath it, so ``/usr/***`` matches ``/usr``,
           ``/usr/bin`` and ``/usr/a/b`` but not ``/usrx``
=========  ==============================================================

There is no backslash escape, because a backslash is an ordinary character
in a Linux path; a glob character is written literally as a one-member class
(``[*]``, ``[?]``, ``[[]``), which :func:`escape_path` produces.

A pattern is validated once (:func:`validate_pattern`) into one canonical
spelling: duplicate slashes collapse and a trailing slash goes.  ``.`` and
``..`` components are refused rather than resolved: the sandbox matches
paths after the kernel has resolved them, so such a pattern could never
match, and silently resolving ``..`` lexically would disagree with the
kernel whenever a symlink is involved.

Everything here is pure string work; nothing touches the filesystem.
"""

from __future__ import annotations

import functools
import re

from stockade._record import field, record
from stockade.errors import PolicyError

__all__ = [
    "Matcher",
    "compile_pattern",
    "escape_path",
    "is_literal",
    "literal_prefix",
    "may_overlap",
    "tree_root",
    "validate_pattern",
]

#: Characters that make a pattern a glob rather than one literal path.
GLOB_CHARS = frozenset("*?[")

#: The final component that means "this directory and everything beneath".
TREE_SUFFIX = "/***"

# The rule language is line based (``-c``, TOML ``rules``, the control
# socket), and rule lines are stripped, so a pattern can carry neither a line
# break nor trailing whitespace.  These are the characters str.splitlines()
# breaks on.
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")

_DUPLICATE_SLASHES = re.compile(r"//+")


def _error(pattern: str, why: str) -> PolicyError:
    return PolicyError(f"bad pattern {pattern!r}: {why}")


def validate_pattern(pattern: str) -> str:
    """Check a path pattern and return its canonical spelling.

    Duplicate slashes collapse and a trailing ``/`` is dropped (except for
    ``/`` itself).  Raises :class:`~stockade.errors.PolicyError` when the
    pattern is not absolute, contains NUL or a line break, ends in
    whitespace, has a ``.`` or ``..`` component, or has bad glob syntax
    (an unclosed ``[``, ``/`` in a class, ``***`` anywhere but a final
    ``/***``).
    """
    if not isinstance(pattern, str):
        raise PolicyError(f"bad pattern {pattern!r}: expected a string")
    if not pattern.startswith("/"):
        raise _error(pattern, "expected an absolute path (starting with '/')")
    if "\0" in pattern:
        raise _error(pattern, "contains a NUL character")
    if any(c in _LINE_BREAKS for c in pattern):
        raise _error(
            pattern, "contains a line break, which a rule line cannot carry; use '?' for it"
        )
    canonical = _DUPLICATE_SLASHES.sub("/", pattern)
    if len(canonical) > 1:
        canonical = canonical.rstrip("/") or "/"
    if canonical[-1].isspace():
        raise _error(
            pattern,
            "ends in whitespace, which is stripped from rule lines; "
            f"write the last character as a class, like '[{canonical[-1]}]'",
        )
    for part in canonical.split("/"):
        if part in (".", ".."):
            raise _error(
                pattern,
                f"has a {part!r} component; paths are matched after resolution, "
                "so it could never match: spell the resolved path",
            )
    # Translating checks the glob syntax.  Compiling (the slow part, and
    # only needed to match) is left for later unless the pattern has a
    # character class: only the regex engine knows every bad range.
    source = _translate(canonical, pattern)
    if "[" in canonical:
        _compile(source)
    return canonical


@record(frozen=True)
class Matcher:
    """A compiled pattern.  ``match(path)`` tests one resolved absolute path.

    Paths come from the sandbox, so matching must not be steered into
    exponential work: a backtracking regular expression with three or more
    unbounded wildcards (``/**a*a*b``) takes seconds on a path of a few
    thousand characters.  Such patterns are matched by :class:`_Glob`, a
    state-set simulation linear in the path's length; the others keep the
    regular expression (at worst quadratic, in C: milliseconds).
    """

    pattern: str
    _regex: re.Pattern[str] = field(repr=False, compare=False)
    _glob: _Glob | None = field(default=None, repr=False, compare=False)

    def match(self, path: str) -> bool:
        """True when *path* (absolute, resolved, normalised) matches."""
        if self._glob is not None:
            return self._glob.match(path)
        return self._regex.fullmatch(path) is not None


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Matcher:
    """Validate and compile *pattern*; compiled patterns are cached.

    Raises :class:`~stockade.errors.PolicyError` as :func:`validate_pattern`.
    """
    canonical = validate_pattern(pattern)
    glob = _Glob(canonical) if _wildcard_runs(canonical) >= _RISKY_RUNS else None
    return Matcher(canonical, _regex(canonical, canonical), glob)


def is_literal(pattern: str) -> bool:
    """True when *pattern* has no glob character, so it names one path."""
    return not any(c in GLOB_CHARS for c in pattern)


def tree_root(pattern: str) -> str | None:
    """The directory of a ``LITERAL/***`` pattern, else ``None``.

    ``/***`` gives ``/``.  A kernel layer (Landlock) can enforce exactly
    these patterns as a rule on a directory hierarchy.
    """
    if pattern == TREE_SUFFIX:
        return "/"
    if pattern.endswith(TREE_SUFFIX):
        root = pattern[: -len(TREE_SUFFIX)]
        if root and is_literal(root):
            return root
    return None


def literal_prefix(pattern: str) -> str:
    """The longest leading path of *pattern* free of glob characters.

    ``/usr/lib/*.so`` gives ``/usr/lib``, ``/usr/***`` gives ``/usr``, a
    literal pattern gives itself, and ``/*`` gives ``/``.  Every path the
    pattern matches lies at or beneath this path.
    """
    if is_literal(pattern):
        return pattern
    parts: list[str] = []
    for part in pattern.split("/")[1:]:
        if not is_literal(part):
            break
        parts.append(part)
    return "/" + "/".join(parts)


def may_overlap(a: str, b: str) -> bool:
    """False only when *a* and *b* provably match disjoint sets of paths.

    Conservative: ``True`` means "perhaps".  A literal pattern is tested
    exactly against the other; otherwise two patterns whose literal prefixes
    are not on one path (neither is an ancestor-or-self of the other) are
    disjoint, because every match lies beneath its pattern's prefix.
    """
    if is_literal(a):
        return compile_pattern(b).match(a)
    if is_literal(b):
        return compile_pattern(a).match(b)
    pa, pb = literal_prefix(a), literal_prefix(b)
    return _is_path_prefix(pa, pb) or _is_path_prefix(pb, pa)


def escape_path(path: str) -> str:
    """A pattern matching exactly the literal *path* and nothing else.

    Glob characters become one-member classes (``*`` -> ``[*]``), and so
    does trailing whitespace, which rule lines would otherwise lose.  The
    path is not validated; pass the result to :func:`validate_pattern`.
    """
    out = "".join(f"[{c}]" if c in GLOB_CHARS else c for c in path)
    if out and out[-1].isspace():
        out = f"{out[:-1]}[{out[-1]}]"
    return out


def _is_path_prefix(prefix: str, path: str) -> bool:
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


def _regex(canonical: str, shown: str) -> re.Pattern[str]:
    """The compiled regex of a canonical pattern; *shown* is what error
    messages quote."""
    return _compile(_translate(canonical, shown))


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> re.Pattern[str]:
    # DOTALL: a file name may contain a newline, and ** must cross it too.
    return re.compile(source, re.DOTALL)


@functools.lru_cache(maxsize=4096)
def _translate(canonical: str, shown: str) -> str:
    """Translate a canonical pattern to regex source; *shown* is what error
    messages quote."""
    body = canonical
    tree = body.endswith(TREE_SUFFIX)
    if tree:
        body = body[: -len(TREE_SUFFIX)]
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "*":
            j = i
            while j < n and body[j] == "*":
                j += 1
            if j - i > 2:
                raise _error(shown, "'***' is only valid as a final '/***' component")
            out.append(".*" if j - i == 2 else "[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            cls, i = _char_class(body, i, shown)
            out.append(cls)
        else:
            out.append(re.escape(c))
            i += 1
    if tree:
        # "/***" alone is the root and everything under it; "X/***" is X
        # itself or anything below X, never a sibling such as "Xy".
        out.append("/.*" if not body else "(?:/.*)?")
    return "".join(out)


def _char_class(text: str, start: int, shown: str) -> tuple[str, int]:
    """Translate the class opening at ``text[start]``; return (regex, end)."""
    i = start + 1
    negate = i < len(text) and text[i] in "!^"
    if negate:
        i += 1
    members_start = i
    if i < len(text) and text[i] == "]":
        i += 1  # a leading "]" is a member, not the end
    while i < len(text) and text[i] != "]":
        i += 1
    if i >= len(text):
        raise _error(shown, "unclosed '['; write '[[]' for a literal '['")
    members = text[members_start:i]
    items: list[str] = []
    spans_slash = False
    k = 0
    while k < len(members):
        lo = members[k]
        if lo == "/":
            raise _error(shown, "a character class never matches '/'; remove it from the class")
        if k + 2 < len(members) and members[k + 1] == "-":
            hi = members[k + 2]
            if lo > hi:
                raise _error(shown, f"bad class range '{lo}-{hi}': expected low-high")
            spans_slash = spans_slash or lo <= "/" <= hi
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            k += 3
        else:
            items.append(re.escape(lo))
            k += 1
    joined = "".join(items)
    if negate:
        return f"[^{joined}/]", i + 1
    # A range such as "+-0" includes "/"; the look-ahead keeps the class
    # within one component without rewriting the user's range.
    return (f"(?!/)[{joined}]" if spans_slash else f"[{joined}]"), i + 1


#: Patterns with this many unbounded wildcard runs are matched by _Glob.
_RISKY_RUNS = 3


def _wildcard_runs(canonical: str) -> int:
    """How many ``*`` or ``**`` runs *canonical* has (a final ``/***``
    counts as one)."""
    return len(re.findall(r"\*+", canonical))


class _Glob:
    """A pattern as a list of one-character steps, matched by simulating
    every position of the pattern at once: the work is at most the path's
    length times the pattern's, whatever the input.

    Steps: a literal character, ``?`` (any but ``/``), a class (a compiled
    one-character expression from :func:`_char_class`), ``*`` (a loop on
    any but ``/``) and ``**`` (a loop on anything).  A final ``/***`` is an
    accepting state that also accepts ``/`` followed by anything.
    """

    __slots__ = ("_steps", "_tree")

    _LIT, _ONE, _CLASS, _STAR, _DSTAR = range(5)

    def __init__(self, canonical: str) -> None:
        body = canonical
        self._tree = body.endswith(TREE_SUFFIX)
        if self._tree:
            body = body[: -len(TREE_SUFFIX)]
        steps: list[tuple[int, str | re.Pattern[str]]] = []
        i, n = 0, len(body)
        while i < n:
            c = body[i]
            if c == "*":
                j = i
                while j < n and body[j] == "*":
                    j += 1
                steps.append((self._DSTAR if j - i == 2 else self._STAR, ""))
                i = j
            elif c == "?":
                steps.append((self._ONE, ""))
                i += 1
            elif c == "[":
                cls, i = _char_class(body, i, canonical)
                steps.append((self._CLASS, re.compile(cls, re.DOTALL)))
            else:
                steps.append((self._LIT, c))
                i += 1
        self._steps = tuple(steps)

    def _close(self, states: set[int]) -> set[int]:
        """Add the states reached by letting wildcards match nothing."""
        steps, end = self._steps, len(self._steps)
        out = set(states)
        for start in sorted(states):
            k = start
            while k < end and steps[k][0] >= self._STAR:
                k += 1
                out.add(k)
        return out

    def match(self, path: str) -> bool:
        steps, end = self._steps, len(self._steps)
        rest = end + 1  # after a final "/***": anything goes
        states = self._close({0})
        for c in path:
            nxt: set[int] = set()
            for k in states:
                if k == rest:
                    nxt.add(rest)
                    continue
                if k == end:
                    if self._tree and c == "/":
                        nxt.add(rest)
                    continue
                kind, arg = steps[k]
                if kind == self._LIT:
                    if c == arg:
                        nxt.add(k + 1)
                elif kind == self._ONE:
                    if c != "/":
                        nxt.add(k + 1)
                elif kind == self._CLASS:
                    assert isinstance(arg, re.Pattern)
                    if arg.fullmatch(c) is not None:
                        nxt.add(k + 1)
                elif kind == self._DSTAR or c != "/":
                    nxt.add(k)
            if not nxt:
                return False
            states = self._close(nxt)
        if self._tree:
            return end in states or rest in states
        return end in states
