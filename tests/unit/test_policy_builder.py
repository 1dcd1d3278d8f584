"""PolicyBuilder: options to policy, and the default profile."""

from __future__ import annotations

import re

import pytest

from stockade.errors import PolicyError
from stockade.policy.builder import OPTION_ORDER, SCALAR_OPTIONS, PolicyBuilder
from stockade.policy.model import Action, Bind, Category, Lock, Policy, Rlimit, Rule
from stockade.policy.profiles import PROFILES

A, D = Action.ALLOW, Action.DENY
R, W, X = Category.READ, Category.WRITE, Category.EXEC
C, DEL, IO = Category.CREATE, Category.DELETE, Category.IOCTL


def rules(*triples: tuple[Action, Category, str]) -> tuple[Rule, ...]:
    return tuple(Rule(a, c, p) for a, c, p in triples)


def explicit() -> PolicyBuilder:
    """A builder with the ``none`` profile, so the default does not apply."""
    return PolicyBuilder("test").profile("none")


# -- access mappings ---------------------------------------------------------


def test_read_maps_to_read_and_exec() -> None:
    p = explicit().read("/usr").build()
    assert p.rules == rules((A, R, "/usr/***"), (A, X, "/usr/***"))


def test_write_maps_to_six_categories() -> None:
    p = explicit().write("/tmp/job/").build()
    assert p.rules == rules(*((A, c, "/tmp/job/***") for c in (R, X, W, C, DEL, IO)))


def test_exec_maps_to_exec() -> None:
    assert explicit().exec("/opt/bin").build().rules == rules((A, X, "/opt/bin/***"))


def test_root_directory_is_the_tree_pattern() -> None:
    assert explicit().read("/").build().rules == rules((A, R, "/***"), (A, X, "/***"))


def test_deny_literal_path_is_a_tree() -> None:
    p = explicit().deny("/etc/shadow").build()
    assert p.rules == rules(*((D, c, "/etc/shadow/***") for c in (R, W, X, C, DEL, IO)))


def test_deny_glob_covers_what_lies_beneath() -> None:
    p = explicit().deny("/home/*/.ssh").build()
    assert {r.pattern for r in p.rules} == {"/home/*/.ssh/***"}
    assert len(p.rules) == 6
    # A glob already reaching everything beneath is kept as it is.
    assert {r.pattern for r in explicit().deny("/data/**").build().rules} == {"/data/**"}
    assert {r.pattern for r in explicit().deny("/data/*/***").build().rules} == {"/data/*/***"}


def test_read_path_glob_characters_are_literal() -> None:
    p = explicit().read("/data/[x]").build()
    assert p.rules[0].pattern == "/data/[[]x]/***"


def test_net_allow_and_bind() -> None:
    p = explicit().net_allow("127.0.0.1:8080").net_bind("8000-8100").net_bind(9000).build()
    assert p.rules == rules(
        (A, Category.NET_CONNECT, "127.0.0.1/32!8080"),
        (A, Category.NET_BIND, "*!8000-8100"),
        (A, Category.NET_BIND, "*!9000"),
    )


@pytest.mark.parametrize("spec", ["*", "*:*"])
def test_net_allow_everything_also_allows_send(spec: str) -> None:
    p = explicit().net_allow(spec).build()
    assert p.rules == rules((A, Category.NET_CONNECT, "*!*"), (A, Category.NET_SEND, "*!*"))


def test_net_allow_any_host_some_ports_does_not_allow_send() -> None:
    p = explicit().net_allow("*:443").build()
    assert p.rules == rules((A, Category.NET_CONNECT, "*!443"))


def test_order_is_kept_and_rules_refine() -> None:
    p = (
        explicit()
        .read("/usr")
        .rule("allow/read-/usr/***")
        .rule("# a comment")
        .rule("deny/exec+/usr/bin/su")
        .build()
    )
    assert p.rules == rules((A, X, "/usr/***"), (D, X, "/usr/bin/su"))


# -- paths ---------------------------------------------------------------------


def test_relative_path_without_base_is_an_error() -> None:
    with pytest.raises(PolicyError) as info:
        PolicyBuilder("job.toml").read("data")
    assert str(info.value) == "job.toml: read: relative path 'data': expected an absolute path"


def test_relative_path_with_base() -> None:
    b = PolicyBuilder("cli", relative_base="/home/me").profile("none")
    p = b.read("data/../src").deny("*.key").set("cwd", ".").build()
    assert p.rules[0].pattern == "/home/me/src/***"
    assert p.rules[2].pattern == "/home/me/*.key/***"
    assert p.cwd == "/home/me"


def test_paths_are_normalised() -> None:
    p = explicit().read("//usr/./lib/../bin/").build()
    assert p.rules[0].pattern == "/usr/bin/***"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "empty path"),
        ("/a\0b", "NUL"),
        ("/a\nb", "line break"),
        (5, "expected a path as a string (got 5)"),
    ],
)
def test_bad_paths(path: object, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        PolicyBuilder("x").read(path)  # type: ignore[arg-type]


def test_key_names_rename_keys_in_errors() -> None:
    b = PolicyBuilder("stockade run", key_names={"rules": "-c"})
    with pytest.raises(PolicyError) as info:
        b.rule("allow/reed+/x")
    assert str(info.value).startswith("stockade run: -c: 'allow/reed+/x': unknown category 'reed'")


def test_scoped_names_another_source() -> None:
    b = PolicyBuilder("cli", relative_base="/home", key_names={"read": "-r"})
    with b.scoped("job.toml"), pytest.raises(PolicyError) as info:
        b.read("rel")
    assert str(info.value) == "job.toml: read: relative path 'rel': expected an absolute path"
    assert (b.source, b.relative_base) == ("cli", "/home")


# -- the default profile ----------------------------------------------------------


def test_default_profile_when_no_filesystem_option() -> None:
    p = PolicyBuilder("t", relative_base="/work/proj").set("memory", "1G").build()
    assert Rule(A, R, "/usr/***") in p.rules
    assert Rule(A, W, "/work/proj/***") in p.rules
    assert p.private_tmp is True
    assert p.memory == 1 << 30
    # Applied first: it matches an explicit -p default followed by the options.
    q = PolicyBuilder("t", relative_base="/work/proj").profile("default")
    assert q.set("memory", "1G").build() == p


def test_default_profile_uses_getcwd_without_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    p = PolicyBuilder("t").build()
    # Never write access to everything just because the command ran from /.
    assert not any(r.category is W and r.pattern == "/***" for r in p.rules)


def test_network_options_keep_the_default_profile() -> None:
    p = PolicyBuilder("t", "/w").net_allow("*:443").rule("allow/net/bind+*!80").build()
    assert Rule(A, R, "/usr/***") in p.rules
    assert p.rules[-2:] == rules((A, Category.NET_CONNECT, "*!443"), (A, Category.NET_BIND, "*!80"))


@pytest.mark.parametrize(
    "configure",
    [
        lambda b: b.read("/x"),
        lambda b: b.write("/x"),
        lambda b: b.exec("/x"),
        lambda b: b.deny("/x"),
        lambda b: b.rule("allow/read+/x"),
        lambda b: b.rule("sandbox/read:off"),
        lambda b: b.profile("none"),
        lambda b: b.profile("strict"),
        lambda b: b.set("root", "tmpfs"),
        lambda b: b.set("bind", "/a:/b"),
    ],
)
def test_filesystem_options_suppress_the_default(configure: object) -> None:
    b = PolicyBuilder("t", "/w")
    configure(b)  # type: ignore[operator]
    p = b.build()
    # /opt and the current directory are the default profile's alone.
    assert Rule(A, R, "/opt/***") not in p.rules
    assert Rule(A, W, "/w/***") not in p.rules


def test_build_twice_is_the_same() -> None:
    b = PolicyBuilder("t", "/w").read("/usr")
    assert b.build() == b.build()


# -- scalar options ---------------------------------------------------------------


def test_scalars() -> None:
    p = (
        explicit()
        .set("memory", "512M")
        .set("max_procs", "32")
        .set("timeout", "2m")
        .set("clean_env", True)
        .set("cwd", "/work")
        .set("root", "tmpfs")
        .set("hostname", "box")
        .set("no_net", True)
        .set("log", "/tmp/events.jsonl")
        .set("ipc", "@stockade")
        .set("pty", True)
        .set("no_aslr", True)
        .set("no_thp", True)
        .set("private_tmp", True)
        .set("lock", True)
        .build()
    )
    assert p == Policy(
        memory=512 << 20,
        max_procs=32,
        timeout=120.0,
        clean_env=True,
        cwd="/work",
        root="tmpfs",
        hostname="box",
        no_net=True,
        log="/tmp/events.jsonl",
        ipc="@stockade",
        pty=True,
        no_aslr=True,
        no_thp=True,
        private_tmp=True,
        lock=Lock.ON,
    )


def test_later_scalars_win() -> None:
    p = explicit().set("memory", "1G").set("memory", 4096).set("timeout", 5).build()
    assert (p.memory, p.timeout) == (4096, 5.0)


def test_lock_values() -> None:
    assert explicit().set("lock", "exec").build().lock is Lock.EXEC
    assert explicit().set("lock", True).set("lock", False).build().lock is Lock.OFF


def test_rlimits_later_name_wins_and_sorted() -> None:
    p = (
        explicit()
        .set("rlimit", "nofile=256")
        .set("rlimit", Rlimit("core", 0, 0))
        .set("rlimit", ("NOFILE", 512))
        .set("rlimit", "as=1G:2G")
        .build()
    )
    assert p.rlimits == (
        Rlimit("as", 1 << 30, 2 << 30),
        Rlimit("core", 0, 0),
        Rlimit("nofile", 512, 512),
    )


def test_env() -> None:
    p = explicit().set("env", "A=1").set("env", ("B", "x=y")).set("env", "A=2").build()
    assert p.env == (("A", "2"), ("B", "x=y"))


def test_unshare_cpus_accumulate() -> None:
    p = (
        explicit()
        .set("unshare", "net,user")
        .set("unshare", ["pid"])
        .set("cpus", [3, 1])
        .set("cpus", "0-1")
        .build()
    )
    assert p.unshare == frozenset({"net", "user", "pid"})
    assert p.cpus == (0, 1, 3)
    assert explicit().set("unshare", "all").build().unshare == frozenset(
        {"user", "mount", "pid", "net", "uts", "ipc", "cgroup", "time"}
    )


def test_binds_and_tmpfs() -> None:
    p = (
        explicit()
        .set("bind", "/src:/dst:ro")
        .set("bind", "/a:/b")
        .set("bind", "/same")
        .set("bind", Bind("/x", "/y", True))
        .set("tmpfs", "/scratch")
        .build()
    )
    assert p.binds == (
        Bind("/src", "/dst", True),
        Bind("/a", "/b"),
        Bind("/same", "/same"),
        Bind("/x", "/y", True),
    )
    assert p.tmpfs == ("/scratch",)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("memory", [1], 'test: memory: expected a size like "512M" (got [1])'),
        ("memory", "lots", "test: memory: expected a size like \"512M\" (got 'lots')"),
        ("max_procs", 0, "test: max_procs: expected a positive integer (got 0)"),
        ("max_procs", True, "test: max_procs: expected a positive integer (got True)"),
        ("timeout", "soon", "test: timeout: expected seconds like 30"),
        ("rlimit", 5, 'test: rlimit: expected NAME=VALUE like "nofile=256" (got 5)'),
        ("rlimit", "files=1", "test: rlimit: unknown rlimit 'files'"),
        ("env", "NOVALUE", "test: env: expected K=V (got 'NOVALUE')"),
        ("env", "=x", "expected a non-empty name"),
        ("env", 3, "test: env: expected K=V or a (name, value) pair (got 3)"),
        ("unshare", "net,users", "test: unshare: unknown namespace 'users'"),
        ("unshare", 1, "test: unshare: expected a list of namespaces (got 1)"),
        ("root", "relative", "test: root: relative path 'relative'"),
        ("bind", "/a:/b:/c:/d", "test: bind: expected SRC:DST[:ro]"),
        ("bind", "/a::/b", "test: bind: expected SRC:DST[:ro]"),
        ("bind", Bind("/a:b", "/c"), "paths cannot contain ':'"),
        ("hostname", "a b", "test: hostname: expected a hostname of 1 to 64"),
        ("hostname", "x" * 65, "test: hostname: expected a hostname of 1 to 64"),
        ("domainname", "a b", "test: domainname: expected a domain name of 1 to 64"),
        ("time_offset", "1.5", "test: time_offset: expected SECONDS (both clocks) or"),
        ("time_offset", "wall=3", "test: time_offset: unknown clock 'wall'"),
        ("time_offset", "boottime=1,boottime=2", "test: time_offset: boottime given twice"),
        ("time_offset", 10**10, "whole seconds within +-1000000000"),
        ("time_offset", [1], "test: time_offset: expected SECONDS"),
        ("time_offset", {"monotonic": "x"}, "test: time_offset: expected SECONDS"),
        ("proc_subset_pid", 1, "test: proc_subset_pid: expected true or false (got 1)"),
        ("ipc", "/" + "s" * 200, "expected at most 107"),
        ("ipc", "@", "expected @NAME"),
        ("lock", "yes", "test: lock: expected true, false or \"exec\" (got 'yes')"),
        ("clean_env", "yes", "test: clean_env: expected true or false (got 'yes')"),
        ("cpus", [-1], "test: cpus: expected a list of CPU numbers"),
        ("cpus", "a-b", "test: cpus: bad CPU list"),
        ("frobnicate", 1, "test: frobnicate: unknown option; expected one of bind"),
    ],
)
def test_set_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        PolicyBuilder("test").set(key, value)
    assert message in str(info.value)
    assert str(info.value).startswith("test: ")


def test_unknown_profile() -> None:
    with pytest.raises(PolicyError) as info:
        PolicyBuilder("t").profile("lax")
    assert (
        str(info.value)
        == "t: profile: unknown profile 'lax'; expected one of default, none, strict"
    )


# -- options mappings --------------------------------------------------------------


def test_apply_options_fixed_order() -> None:
    # Rules come after read whatever the mapping's order, so the removal works.
    p = (
        PolicyBuilder("kw")
        .apply_options({"rules": ["allow/read-/usr/***"], "read": ["/usr"], "memory": "1M"})
        .build()
    )
    assert p.rules == rules((A, X, "/usr/***"))
    assert p.memory == 1 << 20


def test_apply_options_tables() -> None:
    p = (
        explicit()
        .apply_options({"env": {"LANG": "C"}, "rlimit": {"nofile": 256, "stack": "8M"}})
        .build()
    )
    assert p.env == (("LANG", "C"),)
    assert p.rlimits == (Rlimit("nofile", 256, 256), Rlimit("stack", 8 << 20, 8 << 20))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"config": "x.toml"}, "kw: config: unknown key; expected one of bind, clean_env"),
        ({"read": "/usr"}, "kw: read: expected a list of strings (got '/usr')"),
        ({"read": [1]}, "kw: read: expected a list of strings (got [1])"),
        ({"net_bind": [True]}, "kw: net_bind: expected a list of strings or integers"),
        ({"rules": "allow/read+/x"}, "kw: rules: expected a list of strings"),
        ({"profile": ["default"]}, "kw: profile: expected a profile name"),
        ({"env": {"A": 1}}, "kw: env.A: expected a string (got 1)"),
        ({"rlimit": {"nofile": True}}, "kw: rlimit.nofile: expected an integer or a string"),
        ({"rlimit": {"files": 1}}, "kw: rlimit.files: unknown rlimit 'files'"),
        ({"rlimit": {"nofile": "2:1"}}, "kw: rlimit.nofile: bad value '2:1'"),
    ],
)
def test_apply_options_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        PolicyBuilder("kw").apply_options(options)
    assert message in str(info.value)


def test_option_lists_are_consistent() -> None:
    assert len(set(OPTION_ORDER)) == len(OPTION_ORDER)
    assert set(SCALAR_OPTIONS) <= set(OPTION_ORDER)
    assert set(PROFILES) >= {"default", "strict", "none"}


# -- merge -----------------------------------------------------------------------------


def test_merge_policy_then_refine() -> None:
    base = (
        explicit()
        .read("/usr")
        .rule("sandbox/stat:on")
        .set("memory", "1G")
        .set("rlimit", "nofile=10")
        .set("env", "A=1")
        .set("bind", "/a:/b:ro")
        .set("tmpfs", "/t")
        .set("cpus", [1])
        .set("lock", "exec")
        .build()
    )
    merged = PolicyBuilder("cli").merge(base).build()
    assert merged == base
    refined = PolicyBuilder("cli").merge(base).set("memory", "2G").build()
    assert refined.memory == 2 << 30


def test_merge_is_a_complete_statement_of_access() -> None:
    net = PolicyBuilder("t").profile("none").net_allow("*:443").build()
    p = PolicyBuilder("cli", "/w").merge(net).build()
    assert p == net


def test_deny_bad_glob_is_an_error_not_a_silent_literal() -> None:
    # A deny that quietly matched nothing would be worse than an error.
    with pytest.raises(
        PolicyError, match=re.escape("test: deny: bad pattern '/data/[x': unclosed")
    ):
        PolicyBuilder("test").deny("/data/[x")


@pytest.mark.parametrize(
    ("value", "offsets"),
    [
        (3600, (3600, 3600)),
        ("-20", (-20, -20)),
        ("monotonic=5", (5, 0)),
        ("boottime=7, monotonic=-3", (-3, 7)),
        ({"boottime": 9}, (0, 9)),
        ([1, 2], (1, 2)),
    ],
)
def test_time_offset_forms(value: object, offsets: tuple[int, int]) -> None:
    assert PolicyBuilder("test").set("time_offset", value).build().time_offset == offsets
