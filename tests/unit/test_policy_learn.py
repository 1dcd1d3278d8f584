"""stockade learn: collapsing observed accesses into a policy (pure)."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.plan.notify import NotifyPlan
from stockade.policy.learn import (
    Access,
    LearnOptions,
    accesses_from_events,
    collapse,
    learned_policy,
)
from stockade.policy.model import DEFAULT_ON, Category, Rule
from stockade.policy.tomlfile import dump_toml, loads_toml

R, W, X, C, D, IO = (
    Category.READ,
    Category.WRITE,
    Category.EXEC,
    Category.CREATE,
    Category.DELETE,
    Category.IOCTL,
)
PROJ = "/home/u/proj"
SITE = f"{PROJ}/.venv/lib/python3.13/site-packages"
DIRS = {PROJ, f"{SITE}/requests", "/usr/lib/python3.13", "/home/u"}


def python_run() -> list[Access]:
    """What a Python script that imports modules, reads a config and writes
    one output file (plus scratch files) shows the supervisor."""
    out = [Access(X, "/usr/bin/python3.13"), Access(R, "/etc/ld.so.cache")]
    out += [Access(R, f"/usr/lib/python3.13/mod{i}.py") for i in range(300)]
    out += [Access(R, "/usr/lib/python3.13"), Access(R, "/usr/lib/x86_64-linux-gnu/libc.so.6")]
    out += [Access(R, f"{SITE}/requests/m{i}.py") for i in range(12)]
    out += [Access(R, f"{SITE}/certifi/core.py"), Access(R, f"{SITE}/idna/core.py")]
    out += [Access(R, f"{SITE}/urllib3/a.py"), Access(R, f"{SITE}/six.py")]
    out += [Access(R, PROJ), Access(R, f"{PROJ}/job.py"), Access(R, f"{PROJ}/config.ini")]
    out += [Access(R, "/proc/4242/status"), Access(R, "/proc/4242/fd")]
    out += [Access(R, "/sys/devices/system/cpu/online")]
    out += [Access(R, "/dev/null"), Access(W, "/dev/null"), Access(IO, "/dev/pts/3")]
    out += [Access(W, f"{PROJ}/out/result.json"), Access(C, f"{PROJ}/out/result.json")]
    for i in range(10):
        name = f"{PROJ}/cache/tmp{i:04x}"
        out += [Access(C, name), Access(W, name), Access(D, name)]
    out += [Access(W, "/tmp/stockade-tmp-x1/scratch"), Access(C, "/tmp/stockade-tmp-x1/scratch")]
    out += [Access(W, "pipe:[1234]"), Access(Category.STAT, "/etc/passwd")]
    out += [Access(Category.NET_CONNECT, "127.0.0.1!8080")]
    out += [Access(Category.NET_CONNECT, "127.0.0.1!8081")]
    out += [Access(Category.NET_CONNECT, "::1!443")]
    out += [Access(Category.NET_BIND, "127.0.0.1!0"), Access(Category.NET_BIND, "0.0.0.0!9000")]
    return out


OPTIONS = LearnOptions(ignore=("/tmp/stockade-tmp-x1",))


def decider(rules: list[Rule]) -> NotifyPlan:
    return NotifyPlan(rules, DEFAULT_ON, frozenset(), ())


def allowed(plan: NotifyPlan, access: Access) -> bool:
    if access.category.is_net:
        host, _, port = access.target.rpartition("!")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return plan.decide_net(access.category, family, host, int(port)).allow
    return plan.decide(access.category, access.target).allow


def test_a_python_run_collapses_to_a_short_policy_that_allows_it() -> None:
    accesses = python_run()
    rules = collapse(accesses, is_dir=DIRS.__contains__, options=OPTIONS)
    text = [str(r) for r in rules]
    plan = decider(rules)
    for access in accesses:
        if access.target.startswith("/") and not access.target.startswith("/tmp/stockade-tmp"):
            if access.category is not Category.STAT:
                assert allowed(plan, access), access
        elif access.category.is_net:
            assert allowed(plan, access), access
    assert len(rules) < 30, text
    # Trees where they belong.
    assert "allow/read+/usr/***" in text and "allow/exec+/usr/***" in text
    assert "allow/read+/proc/***" in text
    assert "allow/read+/sys/devices/system/cpu/***" in text
    assert "allow/ioctl+/dev/pts/***" in text
    assert f"allow/read+{PROJ}/***" in text  # listed, so its tree
    assert f"allow/create+{PROJ}/cache/***" in text  # scratch names fan in
    # Writes stay narrow.
    assert f"allow/write+{PROJ}/out/result.json" in text
    assert f"allow/create+{PROJ}/out/result.json" in text
    assert "allow/write+/dev/null" in text
    assert "allow/net/connect+127.0.0.1/32!8080-8081" in text
    assert "allow/net/connect+::1/128!443" in text
    assert "allow/net/bind+*!0,9000" in text
    # The executable is readable too (the kernel reads it to run it).
    assert plan.decide(R, "/usr/bin/python3.13").allow


def test_the_learned_policy_is_not_allow_everything() -> None:
    rules = collapse(python_run(), is_dir=DIRS.__contains__, options=OPTIONS)
    plan = decider(rules)
    for category, path in [
        (R, "/etc/shadow"),
        (R, "/home/u/.ssh/id_ed25519"),
        (R, "/root/.bashrc"),
        (W, f"{PROJ}/job.py"),
        (W, f"{PROJ}/config.ini"),
        (W, "/usr/bin/python3.13"),
        (C, f"{PROJ}/new.py"),
        (D, f"{PROJ}/job.py"),
        (X, f"{PROJ}/job.py"),
        (W, "/tmp/stockade-tmp-x1/scratch"),  # the private tmp comes back on its own
    ]:
        assert not plan.decide(category, path).allow, (category, path)
    assert not plan.decide_net(Category.NET_CONNECT, socket.AF_INET, "10.0.0.1", 8080).allow
    assert not plan.decide_net(Category.NET_CONNECT, socket.AF_INET, "127.0.0.1", 22).allow


def test_shallow_directories_are_allowed_alone() -> None:
    """Listing /home/u must not allow reading all of /home/u."""
    rules = collapse([Access(R, "/home/u"), Access(R, "/")], is_dir={"/home/u", "/"}.__contains__)
    assert [str(r) for r in rules] == ["allow/read+/", "allow/read+/home/u"]


def test_a_directory_made_and_removed_keeps_its_own_rule() -> None:
    """mkdir d; create 10 files in it; rm -rf d: the files fan in to
    d/***, and d itself keeps a create and a delete rule (Landlock's tree
    rights cover what is beneath d, not d)."""
    d = "/srv/work/tmpdir"
    accesses = [Access(C, d), Access(D, d)]
    for i in range(10):
        accesses += [Access(C, f"{d}/f{i}"), Access(W, f"{d}/f{i}"), Access(D, f"{d}/f{i}")]
    text = {str(r) for r in collapse(accesses)}
    assert {f"allow/create+{d}/***", f"allow/create+{d}", f"allow/delete+{d}"} <= text
    assert f"allow/delete+{d}/***" in text and f"allow/write+{d}/***" in text


def test_processes_ids_in_proc_writes_become_a_glob() -> None:
    rules = collapse([Access(W, "/proc/77/attr/current"), Access(W, "/proc/self")])
    assert {str(r) for r in rules} == {"allow/write+/proc/*/attr/current", "allow/write+/proc/self"}


def test_glob_characters_in_names_are_matched_literally() -> None:
    rules = collapse([Access(W, "/data/a*b?[c]")])
    plan = decider(rules)
    assert plan.decide(W, "/data/a*b?[c]").allow
    assert not plan.decide(W, "/data/aXXbY[c]").allow


def test_events_as_dicts_and_objects() -> None:
    class Ev:
        category = "exec"
        target = "/usr/bin/env"

    got = accesses_from_events(
        [{"category": "read", "target": "/etc/hosts"}, Ev(), {"category": "exit", "target": "1"}]
    )
    assert got == [Access(R, "/etc/hosts"), Access(X, "/usr/bin/env")]


def test_learned_policy_round_trips_through_toml() -> None:
    policy = learned_policy(python_run(), is_dir=DIRS.__contains__, options=OPTIONS)
    assert policy.private_tmp
    text = dump_toml(policy)
    assert 'profile = "none"' in text
    back = loads_toml(text, "learned.toml")
    assert back.rules == policy.rules and back.private_tmp


SEGMENTS = st.sampled_from(["a", "b", "c", "lib", "x.py", "y.py", "z", "[q]", "sp ace", "*"])


@st.composite
def access_lists(draw: st.DrawFn) -> list[Access]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        parts = draw(st.lists(SEGMENTS, min_size=1, max_size=6))
        root = draw(st.sampled_from(["/usr", "/home/u", "/srv/data", "/proc/12", "/dev/pts", ""]))
        cat = draw(st.sampled_from([R, W, X, C, D, IO]))
        out.append(Access(cat, root + "/" + "/".join(parts)))
    return out


@settings(max_examples=100, deadline=None)
@given(access_lists(), st.frozensets(st.sampled_from(["/home/u/a", "/srv/data/b", "/a"])))
def test_every_observed_access_is_allowed(accesses: list[Access], dirs: frozenset[str]) -> None:
    rules = collapse(accesses, is_dir=dirs.__contains__, options=LearnOptions(read_fanout=3))
    plan = decider(rules)
    for access in accesses:
        assert allowed(plan, access), (access, [str(r) for r in rules])
    # Nothing is ever collapsed into a tree of a shallow directory.
    special = (*LearnOptions().system_trees, "/proc", "/dev")
    for r in rules:
        if r.pattern.endswith("/***") and not r.pattern.startswith(special):
            assert r.pattern.count("/") - 1 >= 3, r
