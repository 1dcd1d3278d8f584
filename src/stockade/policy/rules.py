"""The rule language (SPEC section 4): parse lines, apply them, print them.

A line parses to one :data:`RuleCommand`:

==================================  =====================================
``allow/CATEGORY+PATTERN``          :class:`AddRule` (also ``deny/``)
``allow/CATEGORY-PATTERN``          :class:`RemoveLast`: the last equal rule
``allow/CATEGORY^PATTERN``          :class:`RemoveAll`: every equal rule
``sandbox/CATEGORY:on|off``         :class:`SetCategory`
``lock:on|off|exec``                :class:`SetLock`
==================================  =====================================

Patterns are stored canonical (:func:`~stockade.policy.patterns.validate_pattern`
for paths, ``str(NetPattern)`` for network targets), so that removing a
rule finds it however it was spelled, and so that :func:`format_policy`
prints lines which parse back to an equal policy.

:func:`apply` does not enforce ``lock``: a policy being built from its
lines is not yet running, and refusing changes to a locked, running policy
is the control socket's decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import assert_never

from stockade._record import record, replace
from stockade.errors import PolicyError
from stockade.policy.model import DEFAULT_ON, Action, Category, Lock, Policy, Rule
from stockade.policy.netspec import parse_net_pattern
from stockade.policy.patterns import validate_pattern

__all__ = [
    "AddRule",
    "RemoveAll",
    "RemoveLast",
    "RuleCommand",
    "SetCategory",
    "SetLock",
    "apply",
    "format_policy",
    "parse_line",
    "policy_from_rules",
]

#: Commands of the control protocol (SPEC section 7) that are not rules.
CONTROL_COMMANDS = frozenset({"stat", "stats", "ping", "version", "prompt", "quit", "exit"})

_CATEGORIES = ", ".join(c.value for c in Category)
_FORMS = (
    "expected allow/CATEGORY+PATTERN, deny/CATEGORY+PATTERN (or -PATTERN, ^PATTERN), "
    "sandbox/CATEGORY:on|off or lock:on|off|exec"
)
_OPERATORS = "+-^"


@record(frozen=True)
class AddRule:
    """``allow|deny/CATEGORY+PATTERN``: append a rule."""

    rule: Rule

    def __str__(self) -> str:
        return str(self.rule)


@record(frozen=True)
class RemoveLast:
    """``allow|deny/CATEGORY-PATTERN``: remove the last equal rule, if any."""

    action: Action
    category: Category
    pattern: str

    def __str__(self) -> str:
        return f"{self.action}/{self.category}-{self.pattern}"


@record(frozen=True)
class RemoveAll:
    """``allow|deny/CATEGORY^PATTERN``: remove every equal rule."""

    action: Action
    category: Category
    pattern: str

    def __str__(self) -> str:
        return f"{self.action}/{self.category}^{self.pattern}"


@record(frozen=True)
class SetCategory:
    """``sandbox/CATEGORY:on|off``: whether an unmatched access is denied."""

    category: Category
    on: bool

    def __str__(self) -> str:
        return f"sandbox/{self.category}:{'on' if self.on else 'off'}"


@record(frozen=True)
class SetLock:
    """``lock:on|off|exec``."""

    lock: Lock

    def __str__(self) -> str:
        return f"lock:{self.lock}"


RuleCommand = AddRule | RemoveLast | RemoveAll | SetCategory | SetLock


def _category(text: str, line: str, source: str) -> Category:
    try:
        return Category(text)
    except ValueError:
        raise PolicyError(
            f"unknown category {text!r}; expected one of {_CATEGORIES}", source, repr(line)
        ) from None


def canonical_pattern(category: Category, pattern: str) -> str:
    """The stored spelling of *pattern* for *category*.

    Raises :class:`~stockade.errors.PolicyError` (without a source) for a
    bad path or network pattern.
    """
    if category.is_net:
        return str(parse_net_pattern(pattern))
    return validate_pattern(pattern)


def parse_line(line: str, source: str = "rules") -> RuleCommand:
    """Parse one rule-language line (surrounding whitespace is ignored).

    Raises :class:`~stockade.errors.PolicyError` naming *source*, the line
    and what was expected; control-socket commands such as ``ping`` are
    refused, as they are not rules.
    """
    text = line.strip()
    word = text.split(maxsplit=1)[0] if text else ""
    if word in CONTROL_COMMANDS:
        raise PolicyError(f"{word!r} is a control-socket command, not a rule", source, repr(line))
    head, slash, rest = text.partition("/")
    if head == "lock" or text.startswith("lock:"):
        return _parse_lock(text, line, source)
    if head == "sandbox" and slash:
        return _parse_sandbox(rest, line, source)
    if head not in ("allow", "deny") or not slash:
        raise PolicyError(_FORMS, source, repr(line))
    action = Action(head)
    cut = next((i for i, c in enumerate(rest) if c in _OPERATORS), -1)
    if cut < 0:
        # Name the category first: "allow/reed" is a typo before it is a
        # missing pattern.
        _category(rest, line, source)
        raise PolicyError(
            "expected '+', '-' or '^' and a pattern after the category", source, repr(line)
        )
    category = _category(rest[:cut], line, source)
    op, pattern = rest[cut], rest[cut + 1 :]
    if not pattern:
        raise PolicyError(f"expected a pattern after {op!r}", source, repr(line))
    try:
        pattern = canonical_pattern(category, pattern)
    except PolicyError as err:
        raise PolicyError(err.message, source, repr(line)) from None
    if op == "+":
        return AddRule(Rule(action, category, pattern))
    if op == "-":
        return RemoveLast(action, category, pattern)
    return RemoveAll(action, category, pattern)


def _parse_lock(text: str, line: str, source: str) -> SetLock:
    _, colon, state = text.partition(":")
    try:
        if colon:
            return SetLock(Lock(state))
    except ValueError:
        pass
    raise PolicyError("expected lock:on, lock:off or lock:exec", source, repr(line))


def _parse_sandbox(rest: str, line: str, source: str) -> SetCategory:
    name, colon, state = rest.rpartition(":")
    if not colon:
        raise PolicyError(
            "expected sandbox/CATEGORY:on or sandbox/CATEGORY:off", source, repr(line)
        )
    category = _category(name, line, source)
    if state not in ("on", "off"):
        raise PolicyError(
            f"expected sandbox/{category}:on or sandbox/{category}:off", source, repr(line)
        )
    return SetCategory(category, state == "on")


def apply(policy: Policy, cmd: RuleCommand) -> Policy:
    """Return *policy* changed by one command.

    Removing a rule that is not there changes nothing.
    """
    match cmd:
        case AddRule(rule):
            return replace(policy, rules=(*policy.rules, rule))
        case RemoveLast(action, category, pattern):
            target = Rule(action, category, pattern)
            for i in range(len(policy.rules) - 1, -1, -1):
                if policy.rules[i] == target:
                    return replace(policy, rules=policy.rules[:i] + policy.rules[i + 1 :])
            return policy
        case RemoveAll(action, category, pattern):
            target = Rule(action, category, pattern)
            return replace(policy, rules=tuple(r for r in policy.rules if r != target))
        case SetCategory(category, on):
            enabled = policy.enabled | {category} if on else policy.enabled - {category}
            return replace(policy, enabled=enabled)
        case SetLock(lock):
            return replace(policy, lock=lock)
        case _:
            assert_never(cmd)


def is_comment(line: str) -> bool:
    """True for a blank line or one whose first non-blank character is ``#``."""
    text = line.strip()
    return not text or text.startswith("#")


def policy_from_rules(
    lines: Iterable[str], source: str = "rules", base: Policy | None = None
) -> Policy:
    """Apply rule lines in order to *base* (an empty default policy if None).

    Blank lines and ``#`` comments are skipped.  Raises
    :class:`~stockade.errors.PolicyError` naming *source* and the bad line.
    """
    if isinstance(lines, str):
        raise PolicyError("expected a list of rule lines, not one string", source)
    policy = Policy() if base is None else base
    for line in lines:
        if not isinstance(line, str):
            raise PolicyError(f"expected a rule line as a string (got {line!r})", source)
        if not is_comment(line):
            policy = apply(policy, parse_line(line, source))
    return policy


def format_policy(policy: Policy) -> list[str]:
    """Print the access part of *policy* as rule lines.

    First ``sandbox/CATEGORY:on|off`` for each category whose state differs
    from :data:`~stockade.policy.model.DEFAULT_ON`, sorted by name; then
    ``lock:`` unless it is off; then every rule in order.  The lines parse
    back (:func:`policy_from_rules`) to a policy with equal ``rules``,
    ``enabled`` and ``lock``.
    """
    lines = [
        str(SetCategory(c, c in policy.enabled))
        for c in sorted(Category, key=lambda c: c.value)
        if (c in policy.enabled) != (c in DEFAULT_ON)
    ]
    if policy.lock is not Lock.OFF:
        lines.append(str(SetLock(policy.lock)))
    lines.extend(str(r) for r in policy.rules)
    return lines
