"""The compiled receiver's DirCache (supervisor/_fastpath.c), pure.

The receiver answers a read-only open without asking Python when the
cache says every child of the file's directory may be read, so a wrong
"yes" is a sandbox reading a denied file.  The cache is taught the way
fs.q_open teaches it (fs._q_teach after each allowed decision) and every
"yes" it gives is checked against a plan built afresh from the same rules,
and against last-match-wins itself.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.plan.notify import NotifyPlan
from stockade.policy.model import Action, Category, Rule
from stockade.policy.patterns import compile_pattern
from stockade.policy.rules import parse_line
from stockade.supervisor import fastpath, fs

_fastpath: Any = fastpath._fastpath

pytestmark = pytest.mark.skipif(
    _fastpath is None,
    reason="stockade.supervisor._fastpath is not built (no C compiler or Python headers "
    "at install): there is no compiled receiver to test",
)

READ = Category.READ


def rule(line: str) -> Rule:
    return parse_line(line).rule  # type: ignore[union-attr]


def plan_of(lines: list[str], on: bool = True) -> NotifyPlan:
    enabled = frozenset({READ}) if on else frozenset()
    return NotifyPlan([rule(x) for x in lines], enabled, frozenset({READ}), ())


def cache_for(plan: NotifyPlan) -> Any:
    """fastpath.dir_cache(plan), also when STOCKADE_FASTPATH=0 is set for
    the run (it turns off the receiver's use of the cache, not the cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastpath, "ENABLED", True)
        cache = fastpath.dir_cache(plan)
    assert cache is not None
    return cache


def session(plan: NotifyPlan, cache: Any) -> Any:
    # fs._q_teach takes the session's cache and plan only: the real
    # function runs, on what a session would hold.
    return SimpleNamespace(plan=plan, fast=cache)


def read(s: Any, path: str) -> bool:
    """Decide a read of *path* and teach the cache as fs.q_open does."""
    verdict = s.plan.decide(READ, path)
    if verdict.allow and s.fast is not None:
        fs._q_teach(s.fast, s.plan, path)
    return bool(verdict.allow)


# -- the constants C copies from Python ------------------------------------------


def test_constants_match_the_python_supervisor() -> None:
    assert _fastpath.NOT_QUICK == fs._NOT_QUICK
    assert _fastpath.VALID_OPEN_FLAGS == fs.VALID_OPEN_FLAGS
    assert _fastpath.QUICK_RESOLVE == fs._QUICK_RESOLVE
    assert _fastpath.STATE_EVENT == fastpath.STATE_EVENT
    assert _fastpath.STATE_RECEIVED == fastpath.STATE_RECEIVED
    assert _fastpath.STATE_TICK == fastpath.STATE_TICK
    assert len({fastpath.STATE_EVENT, fastpath.STATE_RECEIVED, fastpath.STATE_TICK}) == 3


def test_a_session_gets_no_cache_when_the_fast_path_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_of(["allow/read+/t/**"])
    monkeypatch.setattr(fastpath, "ENABLED", False)
    assert fastpath.dir_cache(plan) is None
    assert isinstance(fastpath.receiver(), fastpath.PollReceiver)
    monkeypatch.setattr(fastpath, "ENABLED", True)
    assert isinstance(fastpath.dir_cache(plan), _fastpath.DirCache)
    assert isinstance(fastpath.receiver(), _fastpath.Receiver)


# -- DirCache, directly ----------------------------------------------------------


def test_nothing_is_allowed_before_the_first_clear() -> None:
    """Until clear() gives the stops, no add is taken: the receiver must not
    answer from a cache that never learned where verdicts stop."""
    c = _fastpath.DirCache()
    for generation in (0, 1, 7):
        c.add(b"/t/a", generation, True)
    assert len(c) == 0
    assert not c.allows(b"/t/a")
    assert not c.allows(b"/t/a/b")
    c.clear(0, [])
    assert not c.allows(b"/t/a")  # what was refused before is not kept either
    c.add(b"/t/a", 0, True)
    assert c.allows(b"/t/a") and len(c) == 1


def test_an_add_of_another_generation_is_ignored() -> None:
    c = _fastpath.DirCache()
    c.clear(3, [])
    for stale in (0, 2, 4, 2**40):
        c.add(b"/t/a", stale, True)
    assert len(c) == 0 and not c.allows(b"/t/a")
    c.add(b"/t/a", 3, False)
    assert len(c) == 1 and c.allows(b"/t/a")


def test_clear_forgets_every_directory_and_takes_the_new_stops() -> None:
    c = _fastpath.DirCache()
    c.clear(0, [b"/t/a"])
    c.add(b"/t", 0, True)
    c.add(b"/u/v", 0, False)
    assert c.allows(b"/t/b") and not c.allows(b"/t/a")  # /t/a: a stop
    c.clear(1, [b"/t/b"])
    assert len(c) == 0
    for d in (b"/t", b"/t/a", b"/t/b", b"/u/v"):
        assert not c.allows(d), d
    c.add(b"/t", 1, True)
    assert c.allows(b"/t/a") and c.allows(b"/t/a/b")  # no longer a stop
    assert not c.allows(b"/t/b") and not c.allows(b"/t/b/c")  # now one


def test_children_do_not_go_down() -> None:
    c = _fastpath.DirCache()
    c.clear(0, [])
    c.add(b"/t/a", 0, False)
    assert c.allows(b"/t/a")
    assert not c.allows(b"/t/a/b")
    assert not c.allows(b"/t/a/b/c")
    assert not c.allows(b"/t")
    assert not c.allows(b"/t/ab")  # exact names: a prefix is not a parent
    c.add(b"/t/a", 0, True)  # the same directory, found to hold down its tree too
    assert len(c) == 1
    assert c.allows(b"/t/a/b/c")
    c.add(b"/t/a", 0, False)  # and it stays so
    assert c.allows(b"/t/a/b/c")


def test_a_tree_goes_down_to_the_next_stop() -> None:
    c = _fastpath.DirCache()
    c.clear(0, [b"/t/a/b", b"/t/c/d/e"])
    c.add(b"/t", 0, True)
    assert c.allows(b"/t")
    assert c.allows(b"/t/a")
    assert not c.allows(b"/t/a/b")  # a stop
    assert not c.allows(b"/t/a/b/c")  # beneath a stop
    assert not c.allows(b"/t/a/b/c/d/e")
    assert c.allows(b"/t/a/bb")  # a sibling of a stop
    assert c.allows(b"/t/c/d/f/g")
    assert not c.allows(b"/t/c/d/e/f")
    assert not c.allows(b"/tt/a")  # exact names
    # Below a stop, a directory taught in its own right holds again, and
    # its tree goes down.
    c.add(b"/t/a/b/c", 0, True)
    assert c.allows(b"/t/a/b/c") and c.allows(b"/t/a/b/c/d")
    assert not c.allows(b"/t/a/b")


def test_nothing_comes_down_from_or_into_a_child_of_the_root() -> None:
    """The plan decides children of "/" one by one, and a child of "/" has
    no verdict from its parent: "/" itself is never taught."""
    c = _fastpath.DirCache()
    c.clear(0, [])
    c.add(b"/t", 0, True)
    assert c.allows(b"/t") and c.allows(b"/t/a/b")
    assert not c.allows(b"/u")
    assert not c.allows(b"/tt")
    assert not c.allows(b"/u/t")
    with pytest.raises(ValueError):
        c.add(b"/", 0, True)
    assert not c.allows(b"/u")


def test_bad_directories_are_refused() -> None:
    c = _fastpath.DirCache()
    c.clear(0, [])
    for bad in (b"", b"/", b"t/a", b"a", b"/t\0a", b"/t/a\0", b"\0/t"):
        with pytest.raises(ValueError):
            c.add(bad, 0, True)
    with pytest.raises(TypeError):
        c.add("/t/a", 0, True)
    with pytest.raises(TypeError):
        c.add(b"/t/a", "0", True)
    assert len(c) == 0
    for bad in (b"", b"/", b"t", b"t/a", b"/t/", b"/t/a/"):
        with pytest.raises(ValueError):
            c.allows(bad)
    with pytest.raises(TypeError):
        c.allows("/t/a")
    with pytest.raises(TypeError):
        c.allows(None)
    with pytest.raises(TypeError):
        c.clear(0, None)
    with pytest.raises(TypeError):
        _fastpath.DirCache(1)
    with pytest.raises(TypeError):
        _fastpath.DirCache(size=1)


def test_odd_spellings_are_looked_up_without_harm() -> None:
    """allows() takes any absolute text without a trailing slash (the
    receiver only asks about normal paths); doubled slashes and dots are
    other names, never a way to a taught directory."""
    c = _fastpath.DirCache()
    c.clear(0, [b"/t/s"])
    c.add(b"/t", 0, True)
    assert not c.allows(b"//t")
    assert not c.allows(b"/t/s//a")  # a stop is not skipped
    assert not c.allows(b"/t/s/./a")
    assert not c.allows(b"/u/../t/x")  # /u is no tree: a lookup, no resolution


def test_len_counts_distinct_directories() -> None:
    c = _fastpath.DirCache()
    c.clear(0, [])
    names = [f"/t/{i}".encode() for i in range(50)]
    for i, name in enumerate(names):
        c.add(name, 0, i % 2 == 0)
        c.add(name, 0, False)
    assert len(c) == 50
    assert all(c.allows(name) for name in names)


def test_a_full_cache_empties_itself_and_stays_right() -> None:
    limit = 16384
    c = _fastpath.DirCache()
    c.clear(0, [b"/t/s"])
    names = [f"/t/d{i}".encode() for i in range(limit)]
    for name in names:
        c.add(name, 0, False)
    assert len(c) == limit
    c.add(names[7], 0, True)  # a known directory: nothing is dropped
    assert len(c) == limit
    assert c.allows(names[7] + b"/x")
    c.add(b"/t", 0, True)  # one more: emptied first
    assert len(c) == 1
    assert not c.allows(b"/t/s")
    assert c.allows(b"/t/d3") and c.allows(b"/t/d3/x")  # through /t's tree now
    assert not c.allows(b"/u/d3")
    # Another round, far past the limit, then the stops still hold.
    for i in range(2 * limit + 5):
        c.add(f"/u/v/{i}".encode(), 0, i % 3 == 0)
    assert 0 < len(c) <= limit
    assert not c.allows(b"/t/s") and not c.allows(b"/t/s/a")
    assert c.allows(f"/u/v/{2 * limit + 4}".encode())
    c.clear(1, [])
    assert len(c) == 0


# -- taught by the plan -------------------------------------------------------------


def test_a_taught_tree_answers_deeper_directories() -> None:
    """The cache is useful: one decision in /t/a lets the receiver answer
    opens anywhere beneath it."""
    plan = plan_of(["allow/read+/t/**"])
    s = session(plan, cache_for(plan))
    assert not s.fast.allows(b"/t/a")
    assert read(s, "/t/a/f")
    assert s.fast.allows(b"/t/a")
    assert s.fast.allows(b"/t/a/b/c")
    assert s.fast.allows(b"/t/a/b/c/d/e")
    assert not s.fast.allows(b"/t")  # a child of "/": decided in its own right only
    assert not s.fast.allows(b"/u/a")
    assert read(s, "/t/f")
    assert s.fast.allows(b"/t")
    assert not s.fast.allows(b"/u")


def test_a_glob_that_picks_keeps_its_directory_out() -> None:
    plan = plan_of(["allow/read+/t/**", "deny/read+/t/a/x*", "deny/read+/t/b/c/secret"])
    s = session(plan, cache_for(plan))
    assert read(s, "/t/a/f")
    assert not read(s, "/t/a/x1")
    assert not s.fast.allows(b"/t/a")
    assert read(s, "/t/c/f")
    assert s.fast.allows(b"/t/c") and s.fast.allows(b"/t/c/a/b")
    assert read(s, "/t/b/f")
    assert read(s, "/t/b/c/f")
    assert not read(s, "/t/b/c/secret")
    assert s.fast.allows(b"/t/b")  # /t/b/c itself may be read
    assert not s.fast.allows(b"/t/b/c")
    assert not s.fast.allows(b"/t/b/c/d")  # beneath a stop: not before it is decided
    assert read(s, "/t/b/c/d/f")
    assert s.fast.allows(b"/t/b/c/d")  # secret is no child of it
    assert s.fast.allows(b"/t/b/c/d/e")


def test_a_rule_change_empties_the_cache_and_refuses_old_lessons() -> None:
    plan = plan_of(["allow/read+/t/**"])
    s = session(plan, cache_for(plan))
    assert read(s, "/t/a/f")
    found = plan.allowed_directory(READ, "/t/a/f")
    assert found == ("/t/a", plan.generation, True)
    assert s.fast.allows(b"/t/a") and s.fast.allows(b"/t/a/b")
    old = plan.generation

    new = plan.replace_rules([rule("allow/read+/t/**"), rule("deny/read+/t/a/x*")])
    assert new != old
    assert len(s.fast) == 0
    assert not s.fast.allows(b"/t/a")
    # A worker that decided under the old rules teaches after the change.
    s.fast.add(found[0].encode(), found[1], found[2])
    assert len(s.fast) == 0
    assert not s.fast.allows(b"/t/a")
    assert not plan.decide(READ, "/t/a/x1").allow
    # Under the new rules, /t/a is never taught, and its tree comes from
    # nowhere: /t is a stop (the deny glob is filed under /t/a).
    assert read(s, "/t/a/f")
    assert not s.fast.allows(b"/t/a")
    assert read(s, "/t/b/f")
    assert s.fast.allows(b"/t/b")
    assert not s.fast.allows(b"/t/a")
    assert not s.fast.allows(b"/t/a/b")  # /t/a/b's children: still from /t/**, but untaught


def test_a_rule_change_reaches_a_runs_cache() -> None:
    """The session's plan is a run's (NotifyPlan.for_run): its cache
    follows the run's rules, not the plan it was made from."""
    base = plan_of(["allow/read+/t/**"])
    run = base.for_run("/tmp/run")
    s = session(run, cache_for(run))
    assert read(s, "/t/a/f")
    assert read(s, "/tmp/run/a/f")
    assert s.fast.allows(b"/t/a") and s.fast.allows(b"/tmp/run/a")
    base.replace_rules([rule("deny/read+/t/***")])  # another plan: not this run's
    assert s.fast.allows(b"/t/a")
    run.replace_rules([rule("deny/read+/t/a/***")])
    assert not s.fast.allows(b"/t/a")
    assert not read(s, "/t/a/f")
    assert read(s, "/tmp/run/a/f")  # the private tmp's rules stay
    assert s.fast.allows(b"/tmp/run/a")
    assert not s.fast.allows(b"/t/a")


def test_a_failed_clear_forgets_everything() -> None:
    """The change's watcher runs once the plan's new rules are in force: a
    clear() that fails (out of memory, stops that are not bytes) must
    still forget the old rules' directories, and allow nothing after."""
    c = _fastpath.DirCache()
    c.clear(0, [])
    c.add(b"/t/a", 0, True)
    with pytest.raises(TypeError):
        c.clear(1, [b"/t", "not bytes"])
    assert not c.allows(b"/t/a")
    for generation in (0, 1):  # neither the old rules nor the half-given new ones
        c.add(b"/t/a", generation, True)
    assert not c.allows(b"/t/a")
    assert len(c) == 0
    c.clear(1, [b"/t"])  # a clear that completes makes it useful again
    c.add(b"/t/a", 1, True)
    assert c.allows(b"/t/a")


def test_a_generation_out_of_range_is_refused() -> None:
    c = _fastpath.DirCache()
    with pytest.raises(OverflowError):
        c.add(b"/t/a", -1, True)
    c.clear(1, [])
    with pytest.raises(OverflowError):
        c.add(b"/t/b", 2**64 + 1, True)
    assert len(c) == 0


# -- soundness: every "yes" of the cache holds under the rules ----------------------

NAMES = ("a", "b", "c")
#: Children asked of every directory the cache allows: plain names, names
#: the deny globs below pick out, and names a glob might not expect (the
#: receiver opens any name, as bytes).
CHILDREN = (
    "a",
    "b",
    "c",
    "ab",
    "x",
    "x1",
    "xyz",
    "secretish",
    "zz",
    ".h",
    "x\ny",
    "\n",
    "é",
    "*",
    "[ab]",
    "\udcff",
)


def _dirs(depth: int) -> list[str]:
    out = ["/t"]
    level = ["/t"]
    for _ in range(depth):
        level = [f"{d}/{n}" for d in level for n in NAMES]
        out.extend(level)
    return out


#: Every directory asked about: /t down to four names beneath it, some
#: deeper ones, names the globs pick as directories, and others.
CHECKED = [
    *_dirs(4),
    "/t/a/b/c/a/b",
    "/t/c/c/c/c/c/c",
    "/t/b/a/c/b/a/x1",
    "/t/x1",
    "/t/a/x1",
    "/t/a/x1/b",
    "/t/secretish/a",
    "/t/b/secretish",
    "/u",
    "/u/a",
    "/u/a/b",
    "/tt/a",
]

PREFIXES = st.sampled_from(["", "/t", "/t/a", "/t/b", "/t/a/b", "/t/b/a", "/t/a/b/c", "/u"])
FORMS = st.sampled_from(
    [
        "",
        "/**",
        "/*",
        "/***",
        "/x*",
        "/?",
        "/a*",
        "/*ish",
        "/[ab]",
        "/**/x1",
        "/*/a",
        "/**/b/*",
        "/*/**",
        "/x1",
        "/a/x*",
        "/a*/b",
        "/.*",
        "/[*]",
        "/?*",
    ]
)


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    action = draw(st.sampled_from(["allow", "allow", "deny"]))
    category = draw(st.sampled_from(["read", "read", "read", "read", "write"]))
    pattern = (draw(PREFIXES) + draw(FORMS)) or "/"
    return f"{action}/{category}+{pattern}"


@st.composite
def rule_lists(draw: st.DrawFn) -> list[str]:
    """Rules, often under a broad allow (else most sets leave nothing for
    the cache to learn)."""
    broad = draw(st.sampled_from([[], ["allow/read+/t/**"], ["allow/read+/***"]]))
    return broad + draw(st.lists(rule_texts(), max_size=7))


@st.composite
def taught_paths(draw: st.DrawFn) -> str:
    top = draw(st.sampled_from(["/t", "/t", "/t", "/u", "/tmp/run"]))
    names = draw(st.lists(st.sampled_from([*NAMES, "x1", "secretish"]), min_size=0, max_size=6))
    return "/".join([top, *names])


def build(lines: list[str], on: bool, alias: bool, tmp: str | None) -> NotifyPlan:
    plan = plan_of(lines, on)
    if alias:  # /t/a is a symlink to /t/b/c: rules under /t/a match under /t/b/c too
        plan.resolve_rule_paths(lambda p: "/t/b/c" + p[4:] if f"{p}/".startswith("/t/a/") else p)
    if tmp is not None:
        plan = plan.for_run(tmp)
    return plan


def last_match(plan: NotifyPlan, path: str) -> bool:
    """Whether *path* may be read, by the rules' own definition."""
    allow = READ not in plan.enabled
    for r in plan.rules:
        if r.category is READ and compile_pattern(r.pattern).match(path):
            allow = r.action is Action.ALLOW
    return allow


def check_sound(plan: NotifyPlan, cache: Any, fresh: NotifyPlan, alias: bool) -> None:
    """Every directory the cache allows has every child allowed by
    *fresh*, a plan built from the same rules with no decision cached."""
    full = fresh._state.paths[READ]
    for d in CHECKED:
        if not cache.allows(d.encode()):
            continue
        for name in CHILDREN:
            path = f"{d}/{name}"
            verdict = fresh.decide(READ, path)
            assert verdict.allow, (d, name, verdict, fresh.rules)
            assert verdict.errno == 0
            assert full._decide_full(path).allow, (d, name)
            if not alias:  # an alias's rule matches under another name
                assert last_match(fresh, path), (d, name, fresh.rules)
            assert plan.decide(READ, path).allow, (d, name)


@settings(max_examples=300, deadline=None)
@given(
    rule_lists(),
    st.lists(taught_paths(), min_size=1, max_size=14),
    st.none() | rule_lists(),
    st.lists(taught_paths(), max_size=8),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, None, "/tmp/run", "/t/b"]),
    st.sampled_from([0, 0, 1, -1]),
)
def test_the_cache_never_allows_a_denied_child(
    lines: list[str],
    paths: list[str],
    change: list[str] | None,
    later: list[str],
    on: bool,
    alias: bool,
    tmp: str | None,
    everywhere: int,
) -> None:
    plan = build(lines, on, alias, tmp)
    s = session(plan, cache_for(plan))
    if everywhere:  # a file in every directory, parents first or children first
        paths = paths + [f"{d}/f" for d in CHECKED[::everywhere]]
    for path in paths:
        read(s, path)
        found = plan.allowed_directory(READ, path)
        if found is not None:  # what Python found, the receiver answers
            assert found[1] == plan.generation
            assert s.fast.allows(found[0].encode())
    check_sound(plan, s.fast, build(lines, on, alias, tmp), alias)
    if change is None:
        return
    # Lessons of the old rules that arrive after the change (a worker that
    # decided before it) are dropped; the cache then learns the new rules.
    stale = [plan.allowed_directory(READ, p) for p in paths if plan.decide(READ, p).allow]
    plan.replace_rules([rule(x) for x in change])
    assert len(s.fast) == 0
    for found in stale:
        if found is not None:
            s.fast.add(found[0].encode(), found[1], found[2])
    assert len(s.fast) == 0
    for path in later + paths:
        read(s, path)
    # The plan keeps the aliases it resolved for the old rules' patterns (a
    # new pattern has none until resolve_rule_paths runs again): the same
    # rules, uncached, are then the plan's own for a run.
    fresh = plan.for_run() if alias else build(change, on, alias, tmp)
    check_sound(plan, s.fast, fresh, alias)


@pytest.mark.parametrize(
    ("lines", "on", "taught"),
    [
        (["allow/read+/t/**", "deny/read+/t/a/x*"], True, True),
        (["deny/read+/t/a/x*"], False, True),
        (["allow/read+/t/***", "deny/read+/t/a/b/c/x1"], True, True),
        (["allow/read+/**", "deny/read+/t/**/x1"], True, True),
        # Filed under /t, the glob may pick a child anywhere beneath it.
        (["allow/read+/t/**", "deny/read+/t/*/a"], True, False),
        (["allow/read+/t/*", "allow/read+/t/a/**", "deny/read+/t/a/b/*ish"], True, True),
        (["allow/read+/t/a/***", "deny/read+/t/a/**/b/*", "allow/read+/t/a/b/**"], True, True),
        (["allow/read+/***", "deny/read+/t/[ab]"], True, True),
    ],
)
def test_every_directory_taught_in_order_is_sound(lines: list[str], on: bool, taught: bool) -> None:
    """Every directory of the tree decided, parents before children and
    then children before parents: the cache learns all it can."""
    plan = plan_of(lines, on)
    s = session(plan, cache_for(plan))
    for d in CHECKED + CHECKED[::-1]:
        for name in ("f", "x1"):
            read(s, f"{d}/{name}")
    assert (len(s.fast) > 0) == taught
    check_sound(plan, s.fast, plan_of(lines, on), False)
