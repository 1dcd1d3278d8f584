"""The rule language (SPEC section 4)."""

from __future__ import annotations

import pytest

from stockade.errors import PolicyError
from stockade.policy.model import DEFAULT_ON, Action, Category, Lock, Policy, Rule
from stockade.policy.rules import (
    AddRule,
    RemoveAll,
    RemoveLast,
    SetCategory,
    SetLock,
    apply,
    format_policy,
    parse_line,
    policy_from_rules,
)

A, D = Action.ALLOW, Action.DENY


@pytest.mark.parametrize(
    ("line", "cmd"),
    [
        ("allow/read+/usr/***", AddRule(Rule(A, Category.READ, "/usr/***"))),
        ("deny/write+/etc/shadow", AddRule(Rule(D, Category.WRITE, "/etc/shadow"))),
        ("  allow/exec+/bin/***  ", AddRule(Rule(A, Category.EXEC, "/bin/***"))),
        ("allow/read+//usr//lib/", AddRule(Rule(A, Category.READ, "/usr/lib"))),
        (
            "allow/net/connect+127.0.0.1!80",
            AddRule(Rule(A, Category.NET_CONNECT, "127.0.0.1/32!80")),
        ),
        ("allow/net/bind+*!8000-8100", AddRule(Rule(A, Category.NET_BIND, "*!8000-8100"))),
        ("deny/net/send+example.com", AddRule(Rule(D, Category.NET_SEND, "example.com!*"))),
        ("allow/read-/usr/***", RemoveLast(A, Category.READ, "/usr/***")),
        ("deny/ioctl^/dev/***", RemoveAll(D, Category.IOCTL, "/dev/***")),
        ("allow/read+/a-b^c", AddRule(Rule(A, Category.READ, "/a-b^c"))),
        ("sandbox/stat:on", SetCategory(Category.STAT, True)),
        ("sandbox/net/connect:off", SetCategory(Category.NET_CONNECT, False)),
        ("lock:on", SetLock(Lock.ON)),
        ("lock:exec", SetLock(Lock.EXEC)),
        ("lock:off", SetLock(Lock.OFF)),
    ],
)
def test_parse_line(line: str, cmd: object) -> None:
    assert parse_line(line, "-c") == cmd


def test_unknown_category_message() -> None:
    with pytest.raises(PolicyError) as info:
        parse_line("allow/reed+/x", "-c")
    assert str(info.value) == (
        "-c: 'allow/reed+/x': unknown category 'reed'; expected one of read, write, exec, "
        "stat, create, delete, ioctl, net/connect, net/bind, net/send"
    )
    assert info.value.source == "-c"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "expected allow/CATEGORY+PATTERN"),
        ("permit/read+/x", "expected allow/CATEGORY+PATTERN"),
        ("allow", "expected allow/CATEGORY+PATTERN"),
        ("Allow/read+/x", "expected allow/CATEGORY+PATTERN"),
        ("allow/read", "expected '+', '-' or '^' and a pattern"),
        ("allow/reed", "unknown category 'reed'"),
        ("allow/net+*!80", "unknown category 'net'"),
        ("allow/read+", "expected a pattern after '+'"),
        ("allow/read+usr", "expected an absolute path"),
        ("allow/read+/a/../b", "'..' component"),
        ("allow/read+/a/[b", "unclosed '['"),
        ("allow/net/connect+127.0.0.1", "an address needs !PORTS"),
        ("allow/net/connect+*!70000", "bad port '70000'"),
        ("sandbox/read", "expected sandbox/CATEGORY:on"),
        ("sandbox/read:yes", "expected sandbox/read:on or sandbox/read:off"),
        ("sandbox/reed:on", "unknown category 'reed'"),
        ("lock:maybe", "expected lock:on, lock:off or lock:exec"),
        ("lock", "expected lock:on, lock:off or lock:exec"),
        ("stat", "'stat' is a control-socket command, not a rule"),
        ("stats", "control-socket command"),
        ("ping", "control-socket command"),
        ("version", "control-socket command"),
        ("prompt i", "control-socket command"),
    ],
)
def test_parse_errors(line: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_line(line, "job.toml")
    text = str(info.value)
    assert message in text
    assert text.startswith(f"job.toml: {line!r}: ")


def test_remove_last_and_all() -> None:
    lines = [
        "allow/read+/a/***",
        "allow/read+/b/***",
        "allow/read+/a/***",
        "deny/read+/a/***",
    ]
    p = policy_from_rules(lines)
    r = Rule(A, Category.READ, "/a/***")
    after_last = apply(p, RemoveLast(A, Category.READ, "/a/***"))
    assert after_last.rules == (
        r,
        Rule(A, Category.READ, "/b/***"),
        Rule(D, Category.READ, "/a/***"),
    )
    after_all = apply(p, RemoveAll(A, Category.READ, "/a/***"))
    assert after_all.rules == (Rule(A, Category.READ, "/b/***"), Rule(D, Category.READ, "/a/***"))
    # Removing what is not there is a no-op.
    assert apply(p, RemoveLast(A, Category.WRITE, "/a/***")) == p
    assert apply(p, RemoveAll(D, Category.READ, "/zzz")) == p


def test_removal_matches_canonical_spelling() -> None:
    p = policy_from_rules(
        ["allow/net/connect+127.0.0.1!80", "allow/read+/usr/", "allow/net/connect-127.0.0.1/32!80"]
    )
    p = apply(p, parse_line("allow/read-//usr"))
    assert p.rules == ()


def test_policy_from_rules_skips_comments_and_blanks() -> None:
    p = policy_from_rules(["# a comment", "", "   ", "  # indented", "allow/read+/x"])
    assert p.rules == (Rule(A, Category.READ, "/x"),)


def test_policy_from_rules_base_and_state() -> None:
    base = Policy(memory=5)
    p = policy_from_rules(["sandbox/stat:on", "sandbox/ioctl:off", "lock:exec"], base=base)
    assert p.memory == 5
    assert p.enabled == (DEFAULT_ON | {Category.STAT}) - {Category.IOCTL}
    assert p.lock is Lock.EXEC


def test_policy_from_rules_rejects_a_string() -> None:
    with pytest.raises(PolicyError, match="not one string"):
        policy_from_rules("allow/read+/x")


def test_policy_from_rules_names_source() -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_rules(["allow/read+/x", "allow/read+x"], source="rules.txt")
    assert str(info.value).startswith("rules.txt: 'allow/read+x': ")


def test_format_policy_order() -> None:
    p = policy_from_rules(
        [
            "allow/read+/usr/***",
            "sandbox/stat:on",
            "sandbox/write:off",
            "lock:on",
            "deny/read+/usr/secret",
            "sandbox/create:off",
        ]
    )
    assert format_policy(p) == [
        "sandbox/create:off",
        "sandbox/stat:on",
        "sandbox/write:off",
        "lock:on",
        "allow/read+/usr/***",
        "deny/read+/usr/secret",
    ]
    assert policy_from_rules(format_policy(p)) == p
    assert Policy.from_rules(p.to_rules()) == p


def test_format_empty_policy() -> None:
    assert format_policy(Policy()) == []


def test_commands_print_as_lines() -> None:
    for line in (
        "allow/read+/usr/***",
        "deny/net/bind-*!80",
        "allow/exec^/bin/***",
        "sandbox/stat:on",
        "lock:exec",
    ):
        assert str(parse_line(line)) == line
