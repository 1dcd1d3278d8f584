"""Round trips: rule lines, printed policies and TOML dumps read back equal."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.errors import PolicyError
from stockade.policy.builder import UNSHARE_NAMES, PolicyBuilder
from stockade.policy.model import Action, Bind, Category, Lock, NetPattern, Policy, Rlimit, Rule
from stockade.policy.netspec import parse_ports
from stockade.policy.patterns import is_literal, validate_pattern
from stockade.policy.rules import (
    AddRule,
    RemoveAll,
    RemoveLast,
    RuleCommand,
    SetCategory,
    SetLock,
    format_policy,
    parse_line,
    policy_from_rules,
)
from stockade.policy.sizes import RLIMIT_NAMES
from stockade.policy.tomlfile import dump_toml, loads_toml

LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"

# -- path patterns ------------------------------------------------------------------

# codec="utf-8" leaves out surrogates (undecodable file names): they are fine
# in a policy but not in TOML, and test_policy_tomlfile checks that dump_toml
# refuses them.
literal_char = st.characters(blacklist_characters="/\0*?[" + LINE_BREAKS, codec="utf-8")
piece = st.one_of(
    literal_char,
    literal_char,
    st.sampled_from(["*", "**", "?", "[a-z]", "[!x]", "[*]", "[]]", "[^.-]"]),
)


def _valid(raw: str) -> bool:
    try:
        return validate_pattern(raw) == raw
    except PolicyError:
        return False


components = st.lists(piece, min_size=1, max_size=5).map("".join)
fs_patterns = (
    st.builds(
        lambda cs, tree: "/" + "/".join(cs) + ("/***" if tree else ""),
        st.lists(components, min_size=1, max_size=4),
        st.booleans(),
    ).filter(_valid)
    | st.just("/***")
    | st.just("/")
)

# -- network patterns ---------------------------------------------------------------

port_sets = st.lists(
    st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda t: (min(t), max(t))),
    min_size=1,
    max_size=3,
).map(lambda rs: parse_ports(",".join(f"{a}-{b}" for a, b in rs)))


def _network(version: Literal[4, 6], bits: int) -> st.SearchStrategy[str]:
    return st.tuples(st.ip_addresses(v=version), st.integers(0, bits)).map(
        lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))
    )


hosts = st.one_of(
    st.just("*"),
    _network(4, 32),
    _network(6, 128),
    st.from_regex(r"([a-z0-9]{1,8}\.){0,2}[a-z][a-z0-9-]{0,6}[a-z0-9]", fullmatch=True),
)
net_patterns = st.builds(NetPattern, hosts, port_sets).map(str)

# -- commands ----------------------------------------------------------------------

fs_categories = st.sampled_from([c for c in Category if not c.is_net])
net_categories = st.sampled_from([c for c in Category if c.is_net])
actions = st.sampled_from(list(Action))
targets = st.one_of(st.tuples(fs_categories, fs_patterns), st.tuples(net_categories, net_patterns))


def _rule_command(kind: int, action: Action, target: tuple[Category, str]) -> RuleCommand:
    category, pattern = target
    if kind == 0:
        return AddRule(Rule(action, category, pattern))
    if kind == 1:
        return RemoveLast(action, category, pattern)
    return RemoveAll(action, category, pattern)


commands: st.SearchStrategy[RuleCommand] = st.one_of(
    st.builds(_rule_command, st.sampled_from([0, 0, 0, 1, 2]), actions, targets),
    st.builds(SetCategory, st.sampled_from(list(Category)), st.booleans()),
    st.builds(SetLock, st.sampled_from(list(Lock))),
)


@given(commands)
def test_valid_lines_parse_and_print_identically(cmd: RuleCommand) -> None:
    line = str(cmd)
    parsed = parse_line(line)
    assert parsed == cmd
    assert str(parsed) == line


@given(st.lists(commands, max_size=25))
def test_rules_format_parse_round_trip(cmds: list[RuleCommand]) -> None:
    policy = policy_from_rules([str(c) for c in cmds])
    printed = format_policy(policy)
    again = policy_from_rules(printed)
    assert again == policy
    assert format_policy(again) == printed


# -- whole policies through the builder, then TOML -------------------------------------

path_component = st.text(
    alphabet=st.characters(blacklist_characters="/\0:" + LINE_BREAKS, codec="utf-8"),
    min_size=1,
    max_size=6,
)
abs_paths = st.lists(path_component, min_size=0, max_size=3).map(lambda cs: "/" + "/".join(cs))
#: Where something is mounted or made: no ".." (refused there), not the root.
dest_paths = (
    st.lists(path_component.filter(lambda c: c != ".."), min_size=1, max_size=3)
    .map(lambda cs: "/" + "/".join(cs))
    .filter(lambda p: p.strip("/.") != "")
)
limits = st.builds(
    lambda name, a, b: Rlimit(name, *sorted((a, b), key=lambda v: (v is None, v or 0))),
    st.sampled_from(RLIMIT_NAMES),
    st.one_of(st.none(), st.integers(0, 1 << 40)),
    st.one_of(st.none(), st.integers(0, 1 << 40)),
)
env_names = st.text(
    alphabet=st.characters(blacklist_characters="=\0", codec="utf-8"),
    min_size=1,
    max_size=8,
)
env_values = st.text(
    alphabet=st.characters(blacklist_characters="\0", codec="utf-8"),
    max_size=8,
)

Op = Callable[[PolicyBuilder], object]


def _op(name: str, *args: object) -> Op:
    def run(b: PolicyBuilder) -> object:
        return getattr(b, name)(*args)

    run.__qualname__ = f"{name}{args!r}"
    return run


ops: st.SearchStrategy[Op] = st.one_of(
    # read/write/exec take any path (glob characters are literal there) ...
    st.builds(_op, st.sampled_from(["read", "write", "exec"]), abs_paths),
    # ... deny takes a plain path or a valid glob.
    st.builds(_op, st.just("deny"), abs_paths.filter(is_literal)),
    st.builds(_op, st.just("deny"), fs_patterns),
    st.builds(_op, st.just("rule"), commands.map(str)),
    st.builds(_op, st.just("net_allow"), st.sampled_from(["*", "*:443", "[::1]:80", "a.example"])),
    st.builds(_op, st.just("net_bind"), st.integers(0, 65535)),
    st.builds(_op, st.just("profile"), st.sampled_from(["default", "strict", "none"])),
    st.builds(_op, st.just("set"), st.just("memory"), st.integers(1, 1 << 50)),
    st.builds(_op, st.just("set"), st.just("max_procs"), st.integers(1, 100000)),
    st.builds(
        _op,
        st.just("set"),
        st.just("timeout"),
        st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False),
    ),
    st.builds(_op, st.just("set"), st.just("rlimit"), limits),
    st.builds(_op, st.just("set"), st.just("env"), st.tuples(env_names, env_values)),
    st.builds(
        _op,
        st.just("set"),
        st.sampled_from(["clean_env", "no_net", "pty", "no_aslr", "no_thp", "private_tmp"]),
        st.booleans(),
    ),
    st.builds(_op, st.just("set"), st.sampled_from(["cwd", "log", "root"]), abs_paths),
    st.builds(
        _op, st.just("set"), st.sampled_from(["tmpfs", "mkdir", "mkfile", "mkfifo"]), dest_paths
    ),
    st.builds(_op, st.just("set"), st.just("symlink"), st.tuples(path_component, dest_paths)),
    st.builds(_op, st.just("set"), st.just("link"), st.tuples(dest_paths, dest_paths)),
    st.builds(_op, st.just("set"), st.just("root"), st.just("tmpfs")),
    st.builds(_op, st.just("set"), st.just("unshare"), st.lists(st.sampled_from(UNSHARE_NAMES))),
    st.builds(
        _op, st.just("set"), st.just("bind"), st.builds(Bind, abs_paths, dest_paths, st.booleans())
    ),
    st.builds(
        _op,
        st.just("set"),
        st.just("hostname"),
        st.text(st.characters(categories=("L", "N", "P")), min_size=1, max_size=10),
    ),
    st.builds(_op, st.just("set"), st.just("ipc"), st.sampled_from(["@ctl", "/run/s.sock"])),
    st.builds(_op, st.just("set"), st.just("lock"), st.sampled_from([True, False, "exec"])),
    st.builds(_op, st.just("set"), st.just("cpus"), st.lists(st.integers(0, 255), max_size=4)),
)


@settings(max_examples=200)
@given(st.lists(ops, max_size=12))
def test_dump_load_round_trip(steps: list[Op]) -> None:
    b = PolicyBuilder("gen", relative_base="/home/gen")
    for step in steps:
        step(b)
    policy = b.build()
    text = dump_toml(policy)
    assert loads_toml(text, "dump.toml") == policy
    # And as rule lines, for the access part.
    assert policy_from_rules(policy.to_rules()) == Policy(
        rules=policy.rules, enabled=policy.enabled, lock=policy.lock
    )


@given(st.lists(ops, max_size=8))
def test_merge_reproduces_a_policy(steps: list[Op]) -> None:
    b = PolicyBuilder("gen", relative_base="/home/gen")
    for step in steps:
        step(b)
    policy = b.build()
    assert PolicyBuilder("again").merge(policy).build() == policy
