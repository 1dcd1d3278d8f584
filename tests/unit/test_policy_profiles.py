"""Built-in profiles."""

from __future__ import annotations

import pytest

from stockade.errors import PolicyError
from stockade.policy.builder import PolicyBuilder
from stockade.policy.model import Action, Category, Policy, Rlimit, Rule
from stockade.policy.patterns import compile_pattern
from stockade.policy.profiles import PROFILES, get_profile, list_profiles

A = Action.ALLOW


def allowed(policy: Policy, category: Category, path: str) -> bool:
    """Last matching rule wins; no match denies (the category is on)."""
    verdict = False
    for rule in policy.rules_for(category):
        if compile_pattern(rule.pattern).match(path):
            verdict = rule.action is Action.ALLOW
    return verdict


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_builds(name: str) -> None:
    PolicyBuilder("t", "/w").profile(name).build()


def test_list_profiles_sorted_with_summaries() -> None:
    names = [p.name for p in list_profiles()]
    assert names == sorted(names)
    assert all(p.summary and p.describe() is not None for p in list_profiles())


def test_get_profile_unknown() -> None:
    with pytest.raises(PolicyError, match="unknown profile 'x'; expected one of default, none"):
        get_profile("x")


def test_default_profile() -> None:
    p = PolicyBuilder("t", "/home/me/proj").profile("default").build()
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"):
        assert allowed(p, Category.READ, d + "/x")
        assert allowed(p, Category.EXEC, d + "/x")
        assert not allowed(p, Category.WRITE, d + "/x")
    assert allowed(p, Category.READ, "/proc/self/status")
    assert allowed(p, Category.READ, "/sys/devices/system/cpu/online")
    assert not allowed(p, Category.READ, "/sys/kernel/debug")
    for dev in ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/ptmx", "/dev/pts/3"):
        assert allowed(p, Category.READ, dev)
        assert allowed(p, Category.WRITE, dev)
        assert not allowed(p, Category.EXEC, dev)
        assert not allowed(p, Category.DELETE, dev)
    assert allowed(p, Category.CREATE, "/dev/shm/seg")
    for dev in ("/dev/random", "/dev/urandom"):
        assert allowed(p, Category.READ, dev)
        assert not allowed(p, Category.WRITE, dev)
    assert not allowed(p, Category.READ, "/dev/sda")
    assert not allowed(p, Category.READ, "/home/me/other")
    for cat in (Category.READ, Category.WRITE, Category.CREATE, Category.DELETE):
        assert allowed(p, cat, "/home/me/proj/file")
    assert p.private_tmp


def test_strict_profile() -> None:
    p = PolicyBuilder("t", "/home/me").profile("strict").build()
    assert allowed(p, Category.EXEC, "/usr/bin/python3")
    assert allowed(p, Category.READ, "/etc/ld.so.cache")
    assert allowed(p, Category.READ, "/etc/ld.so.conf.d/x.conf")
    assert not allowed(p, Category.READ, "/etc/shadow")
    assert not allowed(p, Category.READ, "/etc/hosts")
    assert not allowed(p, Category.READ, "/home/me/x")
    assert allowed(p, Category.WRITE, "/dev/null")
    assert not allowed(p, Category.WRITE, "/dev/urandom")
    assert p.private_tmp and p.clean_env
    assert p.rlimits == (Rlimit("core", 0, 0), Rlimit("nofile", 1024, 1024))
    assert p.max_procs == 64


def test_none_profile_is_empty_but_suppresses_default() -> None:
    assert PolicyBuilder("t", "/w").profile("none").build() == Policy()


def test_later_options_refine_a_profile() -> None:
    p = PolicyBuilder("t", "/w").profile("strict").set("max_procs", 8).read("/data").build()
    assert p.max_procs == 8
    assert p.rules[-1] == Rule(A, Category.EXEC, "/data/***")


def test_describe() -> None:
    lines = get_profile("default").describe()
    assert "read /usr" in lines
    assert "write <current directory>" in lines
    assert "private_tmp = True" in lines
