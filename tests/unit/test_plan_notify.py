"""The supervisor's plan: routing, decisions, the notify filter (pure)."""

from __future__ import annotations

import errno
import ipaddress
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan import run_filter

from stockade.kernel import syscalls
from stockade.kernel.landlock import AccessFs, AccessNet
from stockade.kernel.seccomp import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_USER_NOTIF,
    ret_errno,
)
from stockade.plan import KernelFacts, compile_plan
from stockade.plan.notify import (
    O_CREAT,
    O_PATH,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    NotifyPlan,
    build_notify_program,
    compile_notify,
)
from stockade.policy.builder import PolicyBuilder
from stockade.policy.model import Action, Category, Policy, Rule
from stockade.policy.patterns import compile_pattern
from stockade.policy.rules import parse_line


def policy(*rules: str, **options: object) -> Policy:
    b = PolicyBuilder("test").profile("none")
    for r in rules:
        b.rule(r)
    for k, v in options.items():
        b.set(k, v)
    return b.build()


def facts(**kw: bool) -> KernelFacts:
    return KernelFacts(landlock_abi=7, **kw)


BASIC = ("allow/read+/usr/***", "allow/exec+/usr/***")
NO_WRITE = ("sandbox/write:off", "sandbox/net/bind:off")


def rule(line: str) -> Rule:
    cmd = parse_line(line)
    return cmd.rule  # type: ignore[union-attr]


# -- routing -------------------------------------------------------------------


def test_a_policy_the_kernel_holds_needs_no_supervisor() -> None:
    plan = compile_plan(policy(*BASIC, *NO_WRITE), facts())
    assert plan.notify is None and plan.notify_program == b""


def test_restricted_writes_trap_only_what_no_kernel_layer_mediates() -> None:
    """The metadata family, connects and addressed sends (UNIX sockets by
    path) and listen: nothing else, so a default policy never pays for
    opens or stats."""
    plan = compile_plan(policy(*BASIC, "allow/write+/tmp/***"), facts())
    assert plan.notify is not None
    assert plan.notify.categories == frozenset()
    names = {t.name for t in plan.notify.traps}
    assert {"chmod", "fchownat", "utimensat", "setxattr", "connect", "sendmsg", "listen"} <= names
    assert not names & {"open", "openat", "openat2", "stat", "newfstatat", "execve", "unlink"}
    sendto = next(t for t in plan.notify.traps if t.name == "sendto")
    assert sendto.pointer_arg == 4  # send() on a connected socket stays in the kernel


def test_a_read_glob_routes_read_alone() -> None:
    plan = compile_plan(policy(*BASIC, "allow/read+/opt/*.txt", *NO_WRITE), facts())
    notify = plan.notify
    assert notify is not None and notify.categories == {Category.READ}
    assert {t.name for t in notify.traps} == {"open", "openat", "openat2"}
    # Landlock grants the literal prefix: an outer bound, never narrower.
    grant = next(g for g in plan.landlock.grants if g.path == "/opt")
    assert grant.tree and grant.rights & AccessFs.READ_FILE
    assert Category.READ in plan.landlock.routed
    program = plan.notify_program
    openat = syscalls.nr("openat")
    assert run_filter(program, openat, (0, 0, 0)) == SECCOMP_RET_USER_NOTIF  # O_RDONLY
    assert run_filter(program, openat, (0, 0, O_RDWR)) == SECCOMP_RET_USER_NOTIF
    assert run_filter(program, openat, (0, 0, O_WRONLY | O_CREAT)) == SECCOMP_RET_ALLOW
    assert run_filter(program, syscalls.nr("openat2"), ()) == SECCOMP_RET_USER_NOTIF
    for name in ("newfstatat", "statx", "write", "read", "execve", "getpid"):
        assert run_filter(program, syscalls.nr(name)) == SECCOMP_RET_ALLOW, name


def test_a_write_glob_traps_opens_for_writing_only() -> None:
    plan = compile_plan(policy(*BASIC, "allow/write+/srv/*.log"), facts())
    assert plan.notify is not None and Category.WRITE in plan.notify.categories
    program, openat = plan.notify_program, syscalls.nr("openat")
    assert run_filter(program, openat, (0, 0, 0)) == SECCOMP_RET_ALLOW
    for flags in (O_WRONLY, O_RDWR, O_TRUNC, O_WRONLY | 0x1_0000_0000):
        assert run_filter(program, openat, (0, 0, flags)) == SECCOMP_RET_USER_NOTIF
    assert run_filter(program, syscalls.nr("open"), (0, O_RDWR)) == SECCOMP_RET_USER_NOTIF
    assert run_filter(program, syscalls.nr("truncate")) == SECCOMP_RET_USER_NOTIF


def test_stat_on_traps_stats_and_o_path_only() -> None:
    plan = compile_plan(policy(*BASIC, "sandbox/stat:on", "allow/stat+/***", *NO_WRITE), facts())
    assert plan.notify is not None and plan.notify.categories == {Category.STAT}
    program, openat = plan.notify_program, syscalls.nr("openat")
    for name in ("stat", "lstat", "newfstatat", "statx", "access", "readlink", "chdir"):
        assert run_filter(program, syscalls.nr(name)) == SECCOMP_RET_USER_NOTIF, name
    assert run_filter(program, openat, (0, 0, O_PATH)) == SECCOMP_RET_USER_NOTIF
    assert run_filter(program, openat, (0, 0, 0)) == SECCOMP_RET_ALLOW


def test_the_notify_filter_kills_foreign_calls_like_the_main_one() -> None:
    plan = compile_plan(policy(*BASIC, "allow/read+/opt/*.txt"), facts())
    assert run_filter(plan.notify_program, 5, arch=0x40000003) == SECCOMP_RET_KILL_PROCESS
    nr = syscalls.nr("openat") | syscalls.X32_SYSCALL_BIT
    assert run_filter(plan.notify_program, nr) == SECCOMP_RET_KILL_PROCESS


def test_sendto_traps_only_with_a_destination() -> None:
    plan = compile_plan(policy(*BASIC, "allow/write+/tmp/***"), facts())
    sendto = syscalls.nr("sendto")
    assert run_filter(plan.notify_program, sendto, (3, 0, 0, 0, 0, 0)) == SECCOMP_RET_ALLOW
    assert run_filter(plan.notify_program, sendto, (3, 0, 0, 0, 0x7F00, 16)) == (
        SECCOMP_RET_USER_NOTIF
    )
    high_only = (3, 0, 0, 0, 0x1_0000_0000, 16)
    assert run_filter(plan.notify_program, sendto, high_only) == SECCOMP_RET_USER_NOTIF


def test_a_deny_a_mask_cannot_carry_routes_the_category() -> None:
    plan = compile_plan(policy(*BASIC, "deny/read+/usr/secret/***", *NO_WRITE), facts())
    assert plan.notify is not None and plan.notify.categories == {Category.READ}
    assert plan.landlock.masks == ()
    v = plan.notify.decide(Category.READ, "/usr/secret/key")
    assert not v.allow and v.errno == errno.EACCES and str(v.rule) == "deny/read+/usr/secret/***"
    assert plan.notify.decide(Category.READ, "/usr/bin/ls").allow
    # A full literal deny still becomes a mask: the fast path.
    full = PolicyBuilder("t").profile("none").read("/etc").deny("/etc/shadow").build()
    masked = compile_plan(full, facts())
    assert masked.landlock.masks == ("/etc/shadow",)
    assert masked.notify is None or Category.READ not in masked.notify.categories
    # Without a mount namespace the same deny goes to the supervisor.
    nomask = compile_plan(full, facts(user_namespaces=False))
    assert nomask.notify is not None and Category.READ in nomask.notify.categories


def test_exec_without_read_routes_read_and_grants_read_file() -> None:
    plan = compile_plan(policy("allow/exec+/opt/tool/***", *NO_WRITE), facts())
    grant = next(g for g in plan.landlock.grants if g.path == "/opt/tool")
    assert grant.rights & AccessFs.EXECUTE and grant.rights & AccessFs.READ_FILE
    assert plan.notify is not None and Category.READ in plan.notify.categories
    # The supervisor keeps reads denied: exec does not imply read (SPEC 2).
    assert not plan.notify.decide(Category.READ, "/opt/tool/bin").allow
    assert plan.notify.decide(Category.EXEC, "/opt/tool/bin").allow


def test_address_rules_route_connect_with_landlock_ports_as_bound() -> None:
    plan = compile_plan(policy(*BASIC, "allow/net/connect+127.0.0.0/8!8080", *NO_WRITE), facts())
    assert plan.notify is not None and plan.notify.categories == {Category.NET_CONNECT}
    assert plan.landlock.ports == ((8080, AccessNet.CONNECT_TCP),)
    d = plan.notify.decide_net
    assert d(Category.NET_CONNECT, socket.AF_INET, "127.0.0.1", 8080).allow
    assert not d(Category.NET_CONNECT, socket.AF_INET, "10.0.0.1", 8080).allow
    assert not d(Category.NET_CONNECT, socket.AF_INET, "127.0.0.1", 8081).allow
    # An inet6 socket reaching the same IPv4 address gets the same answer.
    assert d(Category.NET_CONNECT, socket.AF_INET6, "::ffff:127.0.0.1", 8080).allow
    assert not d(Category.NET_CONNECT, socket.AF_INET6, "::ffff:10.0.0.1", 8080).allow


def test_packed_addresses_get_the_same_answers_and_a_rule_change_drops_them() -> None:
    rules = ("allow/net/connect+*!443", "deny/net/connect+10.0.0.0/8!443", *NO_WRITE)
    plan = compile_plan(policy(*BASIC, *rules), facts())
    assert plan.notify is not None
    n = plan.notify
    for text, port in [("1.2.3.4", 443), ("10.1.2.3", 443), ("::ffff:10.1.2.3", 443),
                       ("2001:db8::1", 443), ("1.2.3.4", 444)]:  # fmt: skip
        packed = ipaddress.ip_address(text).packed
        family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
        expected = n.decide_net(Category.NET_CONNECT, family, text, port)
        # Twice: the second answer comes from the cache.
        for _ in range(2):
            assert n.decide_net_packed(Category.NET_CONNECT, packed, port) == expected
    assert not n.decide_net_packed(Category.NET_CONNECT, bytes([10, 0, 0, 1]), 443).allow
    n.replace_rules((*n.rules, Rule(Action.ALLOW, Category.NET_CONNECT, "10.0.0.1!443")))
    assert n.decide_net_packed(Category.NET_CONNECT, bytes([10, 0, 0, 1]), 443).allow


def test_a_deny_inside_allowed_ports_is_decided_by_address() -> None:
    rules = ("allow/net/connect+*!443", "deny/net/connect+10.0.0.0/8!443", *NO_WRITE)
    plan = compile_plan(policy(*BASIC, *rules), facts())
    assert plan.notify is not None
    d = plan.notify.decide_net
    assert d(Category.NET_CONNECT, socket.AF_INET, "1.2.3.4", 443).allow
    v = d(Category.NET_CONNECT, socket.AF_INET6, "::ffff:10.1.2.3", 443)
    assert not v.allow and str(v.rule) == "deny/net/connect+10.0.0.0/8!443"


def test_datagram_rules_route_send_and_let_udp_sockets_be_made() -> None:
    plan = compile_plan(policy(*BASIC, "allow/net/send+127.0.0.1!53", *NO_WRITE), facts())
    assert plan.filter.allow_udp
    assert plan.notify is not None and Category.NET_SEND in plan.notify.categories
    names = {t.name for t in plan.notify.traps}
    assert {"sendto", "sendmsg", "sendmmsg", "connect"} <= names
    d = plan.notify.decide_net
    assert d(Category.NET_SEND, socket.AF_INET, "127.0.0.1", 53).allow
    assert not d(Category.NET_SEND, socket.AF_INET, "127.0.0.1", 54).allow


def test_hostnames_resolve_in_the_supervisor() -> None:
    """``localhost`` through the real resolver (loopback only here)."""
    plan = compile_plan(policy(*BASIC, "allow/net/connect+localhost!8080", *NO_WRITE), facts())
    assert plan.notify is not None
    d = plan.notify.decide_net
    v = d(Category.NET_CONNECT, socket.AF_INET, "127.0.0.1", 8080)
    assert v.allow and str(v.rule) == "allow/net/connect+localhost!8080"
    assert not d(Category.NET_CONNECT, socket.AF_INET, "127.0.0.2", 8080).allow


def test_an_unresolvable_hostname_fails_closed() -> None:
    calls: list[str] = []

    def resolver(name: str) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        calls.append(name)
        if name == "good.example":
            return frozenset({ipaddress.ip_address("192.0.2.1")})
        raise socket.gaierror(socket.EAI_NONAME, "unknown")

    p = policy(
        "allow/net/connect+*!443",
        "deny/net/connect+bad.example!443",
        "allow/net/connect+good.example!80",
    )
    plan = compile_notify(p, frozenset({Category.NET_CONNECT}), resolver=resolver)
    assert plan is not None
    d = plan.decide_net
    # The deny's name does not resolve: it denies every address on 443.
    assert not d(Category.NET_CONNECT, socket.AF_INET, "192.0.2.9", 443).allow
    assert d(Category.NET_CONNECT, socket.AF_INET, "192.0.2.1", 80).allow
    # An allow that does not resolve matches nothing.
    assert not d(Category.NET_CONNECT, socket.AF_INET, "192.0.2.2", 80).allow
    d(Category.NET_CONNECT, socket.AF_INET, "192.0.2.1", 80)
    assert calls.count("good.example") == 1  # cached for HOSTNAME_TTL


def test_binds_grant_at_their_destination_in_the_supervisor_too() -> None:
    p = policy(*BASIC, "allow/read+/data/*.csv", bind="/srv/in:/data/in:ro")
    plan = compile_plan(p, facts())
    assert plan.notify is not None
    assert plan.notify.decide(Category.READ, "/data/in/x").allow
    assert not plan.notify.decide(Category.WRITE, "/data/in/x").allow
    assert plan.notify.decide(Category.READ, "/data/a.csv").allow
    assert not plan.notify.decide(Category.READ, "/data/a.txt").allow


def test_audit_routes_everything_and_observe_adds_categories() -> None:
    learn = Policy(enabled=frozenset())
    plan = compile_plan(learn, facts(), audit=True)
    assert plan.notify is not None and plan.notify.audit
    names = {t.name for t in plan.notify.traps}
    assert {"open", "openat", "execve", "unlink", "mkdir", "connect", "bind", "ioctl"} <= names
    assert "stat" not in names
    assert plan.notify.decide(Category.WRITE, "/etc/passwd").allow  # everything off: allowed
    seen = compile_plan(policy(*BASIC, *NO_WRITE), facts(), observe=frozenset({Category.EXEC}))
    assert seen.notify is not None and {t.name for t in seen.notify.traps} == {
        "execve",
        "execveat",
    }


# -- decisions -------------------------------------------------------------------


def test_last_match_wins_and_names_the_rule() -> None:
    p = policy(
        "allow/read+/home/***",
        "deny/read+/home/*/.ssh/***",
        "allow/read+/home/*/.ssh/*.pub",
    )
    plan = compile_notify(p, frozenset({Category.READ}))
    assert plan is not None
    v = plan.decide(Category.READ, "/home/u/.ssh/id_ed25519")
    assert (v.allow, v.errno, str(v.rule)) == (False, errno.EACCES, "deny/read+/home/*/.ssh/***")
    v = plan.decide(Category.READ, "/home/u/.ssh/id_ed25519.pub")
    assert v.allow and v.errno == 0 and str(v.rule) == "allow/read+/home/*/.ssh/*.pub"
    v = plan.decide(Category.READ, "/etc/passwd")
    assert not v.allow and v.rule is None  # the category's default
    assert plan.decide(Category.STAT, "/etc/passwd").allow  # stat is off


def test_replacing_rules_never_answers_from_the_old_cache() -> None:
    plan = compile_notify(policy("allow/read+/a/***"), frozenset({Category.READ}))
    assert plan is not None
    assert plan.decide(Category.READ, "/a/x").allow
    assert plan.decide(Category.READ, "/a/x").allow  # cached
    gen = plan.generation
    assert plan.replace_rules([rule("allow/read+/a/***"), rule("deny/read+/a/x")]) == gen + 1
    assert not plan.decide(Category.READ, "/a/x").allow
    plan.replace_rules([], enabled=frozenset())
    assert plan.decide(Category.READ, "/a/x").allow


def test_rules_match_under_their_resolved_prefix() -> None:
    plan = compile_notify(policy("allow/read+/lib/***"), frozenset({Category.READ}))
    assert plan is not None
    assert not plan.decide(Category.READ, "/usr/lib/libc.so.6").allow
    plan.resolve_rule_paths(lambda p: "/usr/lib" if p == "/lib" else p)
    v = plan.decide(Category.READ, "/usr/lib/libc.so.6")
    assert v.allow and str(v.rule) == "allow/read+/lib/***"
    assert plan.decide(Category.READ, "/lib/x").allow


def test_added_implicit_rules_are_refined_by_the_policy() -> None:
    plan = compile_notify(policy("deny/write+/tmp/s/***"), frozenset({Category.WRITE}))
    assert plan is not None
    plan.add_implicit_rules([rule("allow/write+/tmp/s/***")])
    assert not plan.decide(Category.WRITE, "/tmp/s/x").allow  # the policy's deny is later
    plan.add_implicit_rules([rule("allow/write+/tmp/t/***")])
    assert plan.decide(Category.WRITE, "/tmp/t/x").allow


# -- decide() against a straightforward reference --------------------------------

COMPONENTS = st.sampled_from(["a", "b", "ab", "a.txt", ".ssh", "x y", "*", "é"])
PATTERN_PARTS = st.sampled_from(["a", "b", "ab", "*", "**", "?", "*.txt", "[ab]", ".ssh", "a*"])


@st.composite
def paths(draw: st.DrawFn) -> str:
    return "/" + "/".join(draw(st.lists(COMPONENTS, min_size=0, max_size=5)))


@st.composite
def pattern_texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(PATTERN_PARTS, min_size=0, max_size=4))
    text = "/" + "/".join(parts)
    if draw(st.booleans()):
        text = text.rstrip("/") + "/***"
    return text


@st.composite
def rule_lists(draw: st.DrawFn) -> list[Rule]:
    out = []
    for _ in range(draw(st.integers(0, 8))):
        action = draw(st.sampled_from(list(Action)))
        category = draw(st.sampled_from([Category.READ, Category.WRITE]))
        out.append(rule(f"{action}/{category}+{draw(pattern_texts())}"))
    return out


def reference(rules: list[Rule], enabled: bool, category: Category, path: str) -> Rule | None:
    last = None
    for r in rules:
        if r.category is category and compile_pattern(r.pattern).match(path):
            last = r
    return last


@settings(max_examples=300, deadline=None)
@given(rule_lists(), st.lists(paths(), min_size=1, max_size=6), st.booleans())
def test_decide_agrees_with_last_match_wins(rules: list[Rule], probes: list[str], on: bool) -> None:
    enabled = frozenset({Category.READ, Category.WRITE}) if on else frozenset()
    plan = NotifyPlan(rules, enabled, frozenset({Category.READ}), ())
    for path in probes * 2:  # the second round comes from the cache
        for category in (Category.READ, Category.WRITE):
            want = reference(rules, on, category, path)
            got = plan.decide(category, path)
            assert got.rule == want, (path, category)
            assert got.allow == (want.action is Action.ALLOW if want else not on)
            assert got.errno == (0 if got.allow else errno.EACCES)


# Children of one directory are decided from that directory's candidates,
# or from one verdict for them all: siblings, deep trees, odd spellings.
TREE_PARTS = st.sampled_from(["a", "b", "ab", "a.txt", "x\ny", "*", "é", ".", ".."])
TREE_PATTERN_PARTS = st.sampled_from(["a", "b", "ab", "*", "**", "?", "a*", "[ab]", "*.txt"])


@st.composite
def tree_paths(draw: st.DrawFn) -> str:
    text = "/" + "/".join(draw(st.lists(TREE_PARTS, min_size=0, max_size=6)))
    return text + draw(st.sampled_from(["", "", "", "/", "//x"]))


@st.composite
def tree_patterns(draw: st.DrawFn) -> str:
    head = "/" + "/".join(draw(st.lists(st.sampled_from(["a", "b", "ab"]), max_size=3)))
    tail = draw(st.sampled_from(["/**", "/*", "/***", "", "/**", "/*", None]))
    if tail is None:  # any glob
        tail = "/" + "/".join(draw(st.lists(TREE_PATTERN_PARTS, min_size=1, max_size=3)))
    return ((head.rstrip("/") + tail) or "/").replace("//", "/")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(list(Action)), tree_patterns()), min_size=0, max_size=7),
    st.lists(tree_paths(), min_size=1, max_size=10),
    st.booleans(),
    st.booleans(),
)
def test_children_decide_as_the_full_matcher(
    spec: list[tuple[Action, str]], probes: list[str], on: bool, alias: bool
) -> None:
    rules = [rule(f"{action}/read+{text}") for action, text in spec]
    enabled = frozenset({Category.READ}) if on else frozenset()
    plan = NotifyPlan(rules, enabled, frozenset({Category.READ}), ())
    if alias:  # /a is a symlink to /b/ab: rules under /a match under /b/ab too
        plan.resolve_rule_paths(lambda p: "/b/ab" + p[2:] if f"{p}/".startswith("/a/") else p)
    # Siblings and parents of each probe, in an order that fills the
    # per-directory table before the path itself is asked.
    asked = []
    for _, text in spec:  # paths each pattern names or matches
        named = text
        for glob, stand_in in (("***", "a"), ("**", "a/b"), ("*", "a"), ("?", "b"), ("[ab]", "a")):
            named = named.replace(glob, stand_in)
        probes.append(named)
    for path in probes:
        parent = path[: path.rfind("/")] or "/"
        asked += [parent + "/a", parent + "/zz", path, parent, path + "/a"]
    for path in asked:
        got = plan.decide(Category.READ, path)
        full = plan._state.paths[Category.READ]._decide_full(path)
        assert got == full, (path, got, full)
        if not alias:
            want = reference(rules, on, Category.READ, path)
            assert got.rule == want, (path, got, want)


def test_a_uniform_tree_is_decided_once_per_directory() -> None:
    plan = compile_notify(
        policy("allow/read+/usr/**", "deny/read+/usr/lib/*.pyc", "allow/read+/usr/lib/x/*"),
        frozenset({Category.READ}),
    )
    assert plan is not None
    paths = plan._state.paths[Category.READ]
    assert plan.decide(Category.READ, "/usr/share/doc").allow
    assert paths._children["/usr/share"].allow  # one verdict for every child
    assert not plan.decide(Category.READ, "/usr/lib/a.pyc").allow
    assert isinstance(paths._children["/usr/lib"], tuple)  # a glob that picks
    assert plan.decide(Category.READ, "/usr/lib/x/y.pyc").allow  # under /usr/lib/x/*
    assert plan.decide(Category.READ, "/usr/lib/x/y/z.pyc").allow  # under /usr/** again
    plan.replace_rules([rule("deny/read+/usr/***")])
    assert not plan.decide(Category.READ, "/usr/share/doc").allow


NETS = st.sampled_from(["*", "10.0.0.0/8", "10.1.0.0/16", "127.0.0.1", "::1", "::/0", "0.0.0.0/0"])
PORTS = st.sampled_from(["*", "80", "443", "80-443", "22,80"])
ADDRS = st.sampled_from(["10.1.2.3", "10.2.0.1", "127.0.0.1", "::1", "::ffff:10.1.2.3", "1.1.1.1"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(list(Action)), NETS, PORTS), max_size=6),
    ADDRS,
    st.sampled_from([22, 80, 100, 443, 8080]),
)
def test_decide_net_agrees_with_last_match_wins(
    spec: list[tuple[Action, str, str]], address: str, port: int
) -> None:
    from stockade.policy.netspec import parse_net_pattern

    rules = [rule(f"{a}/net/connect+{n}!{p}") for a, n, p in spec]
    plan = NotifyPlan(rules, frozenset({Category.NET_CONNECT}), frozenset(), ())
    addr = ipaddress.ip_address(address)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    want = None
    for r in rules:
        pat = parse_net_pattern(r.pattern)
        in_ports = any(pr.first <= port <= pr.last for pr in pat.ports)
        if pat.any_host:
            in_net = True
        else:
            net = ipaddress.ip_network(pat.host)
            in_net = net.version == addr.version and addr in net
        if in_ports and in_net:
            want = r
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(2):
        got = plan.decide_net(Category.NET_CONNECT, family, address, port)
        assert got.rule == want
        assert got.allow == (want is not None and want.action is Action.ALLOW)


def test_a_trap_description_matches_its_program() -> None:
    """Trap.traps() is what the BPF computes, for every flag combination."""
    p = policy(*BASIC, "allow/read+/x/*.c", "allow/create+/y/*", "sandbox/stat:on")
    plan = compile_notify(p, frozenset({Category.READ, Category.CREATE, Category.STAT}))
    assert plan is not None
    program = build_notify_program(plan)
    for trap in plan.traps:
        for flags in (0, O_WRONLY, O_RDWR, O_CREAT, O_WRONLY | O_CREAT, O_PATH, O_TRUNC | 1):
            args = [0, 0, 0, 0, 0, 0]
            if trap.flags_arg is not None:
                args[trap.flags_arg] = flags
            want = SECCOMP_RET_USER_NOTIF if trap.traps(tuple(args)) else SECCOMP_RET_ALLOW
            assert run_filter(program, trap.nr, tuple(args)) == want, (trap, flags)


def test_create_and_delete_of_one_name_are_decided_by_the_supervisor() -> None:
    """Landlock checks making and removing an entry on the parent directory:
    a rule on one file name cannot be a Landlock rule, so the category is
    routed and Landlock bounds it by the parent's tree."""
    plan = compile_plan(policy(*BASIC, "allow/create+/srv/out.txt", *NO_WRITE), facts())
    assert plan.notify is not None and plan.notify.categories == {Category.CREATE}
    grant = next(g for g in plan.landlock.grants if g.rights & AccessFs.MAKE_REG)
    assert (grant.path, grant.tree) == ("/srv", True)
    assert plan.notify.decide(Category.CREATE, "/srv/out.txt").allow
    assert not plan.notify.decide(Category.CREATE, "/srv/other.txt").allow
    trees = compile_plan(policy(*BASIC, "allow/create+/srv/***", *NO_WRITE), facts())
    assert trees.notify is None


def test_a_run_gets_its_private_tmp_and_its_own_caches() -> None:
    p = policy("allow/write+/srv/***", "deny/write+/srv/*.lock", "sandbox/stat:on")
    plan = compile_notify(p, frozenset({Category.WRITE, Category.STAT}))
    assert plan is not None
    plan.resolve_rule_paths(lambda q: "/data/srv" if q == "/srv" else q)
    assert not plan.decide(Category.WRITE, "/tmp/stockade-tmp-ab/x").allow
    run = plan.for_run("/tmp/stockade-tmp-ab")
    assert run.traps == plan.traps and run.categories == plan.categories
    assert run.decide(Category.WRITE, "/tmp/stockade-tmp-ab/x").allow
    assert run.decide(Category.CREATE, "/tmp/stockade-tmp-ab").allow
    assert not run.decide(Category.STAT, "/tmp/stockade-tmp-ab/x").allow  # stat rules stay
    assert not run.decide(Category.WRITE, "/tmp/stockade-tmp-cd/x").allow  # another run's
    assert run.decide(Category.WRITE, "/data/srv/a").allow  # resolved prefixes kept
    assert not run.decide(Category.WRITE, "/data/srv/a.lock").allow
    # The sandbox's plan is unchanged: runs do not leak into each other.
    assert not plan.decide(Category.WRITE, "/tmp/stockade-tmp-ab/x").allow


def test_the_policy_refines_a_runs_private_tmp() -> None:
    """A run's plan shares the sandbox's tables: its private tmp's allow
    rules go beneath the policy's, which still decide inside it, and the
    caches stay each run's own."""
    p = policy("allow/write+/srv/***", "deny/write+/tmp/stockade-tmp-ab/keep/***")
    plan = compile_notify(p, frozenset({Category.WRITE}))
    assert plan is not None
    run = plan.for_run("/tmp/stockade-tmp-ab")
    verdict = run.decide(Category.WRITE, "/tmp/stockade-tmp-ab/x")
    assert verdict.allow and verdict.rule is not None and "stockade-tmp-ab" in verdict.rule.pattern
    refined = run.decide(Category.WRITE, "/tmp/stockade-tmp-ab/keep/y")
    assert not refined.allow and refined.rule is not None and refined.rule.action is Action.DENY
    assert run.decide(Category.WRITE, "/srv/a").allow
    bare = plan.for_run()
    assert not bare.decide(Category.WRITE, "/tmp/stockade-tmp-ab/x").allow
    assert bare.decide(Category.WRITE, "/srv/a").allow
    # Each run decides into its own cache, not into the sandbox's.
    assert "/srv/a" not in plan._state.paths[Category.WRITE].cache


def test_a_literal_rule_naming_a_directory_goes_to_the_supervisor() -> None:
    """Landlock cannot allow a directory without its contents: with the
    launcher's is_dir, such a rule is routed (and bounded by the tree)."""
    p = policy(*BASIC, "allow/read+/srv/data", "allow/read+/srv/file.txt", *NO_WRITE)
    dirs = {"/srv/data"}
    plan = compile_plan(p, facts(), is_dir=dirs.__contains__)
    assert plan.notify is not None and plan.notify.categories == {Category.READ}
    assert plan.notify.decide(Category.READ, "/srv/data").allow
    assert not plan.notify.decide(Category.READ, "/srv/data/inner").allow
    assert ("/srv/data", True) in {(g.path, g.tree) for g in plan.landlock.grants}
    files_only = compile_plan(p, facts(), is_dir=lambda _p: False)
    assert files_only.notify is None


def test_a_missing_path_in_a_writable_tree_is_denied_by_the_supervisor() -> None:
    """A mask needs something to cover; the sandbox could create the path
    after the launch, so the deny goes to the supervisor instead."""
    p = PolicyBuilder("t").profile("none").write("/srv").deny("/srv/secret").build()
    present = compile_plan(p, facts(), exists=lambda _p: True)
    assert present.landlock.masks == ("/srv/secret",)
    missing = compile_plan(p, facts(), exists=lambda path: path != "/srv/secret")
    assert missing.landlock.masks == ()
    assert missing.notify is not None
    assert {Category.READ, Category.WRITE, Category.CREATE} <= missing.notify.categories
    assert not missing.notify.decide(Category.CREATE, "/srv/secret").allow
    assert not missing.notify.decide(Category.WRITE, "/srv/secret/x").allow
    assert missing.notify.decide(Category.CREATE, "/srv/other").allow
    # Outside any writable tree a missing path needs nothing: it stays a mask
    # (skipped at launch), since nothing can be created there.
    ro = PolicyBuilder("t").profile("none").read("/srv").deny("/srv/secret").build()
    assert compile_plan(ro, facts(), exists=lambda _p: False).landlock.masks == ("/srv/secret",)


def test_a_new_name_never_grants_what_the_old_one_did_not() -> None:
    """-w /data with reads of *.key denied: renaming or linking a.key to
    a.txt would make its content readable; links and renames are trapped
    and decide_move refuses them with EXDEV (mv then copies, and the copy's
    open of a.key is denied)."""
    b = PolicyBuilder("t").profile("none").read("/usr").write("/data")
    p = b.rule("deny/read+/data/*.key").rule("sandbox/net/bind:off").build()
    plan = compile_plan(p, facts())
    assert plan.notify is not None and plan.notify.categories == {Category.READ}
    names = {t.name for t in plan.notify.traps}
    assert {"link", "linkat", "rename", "renameat", "renameat2"} <= names
    v = plan.notify.decide_move("/data/a.key", "/data/a.txt")
    assert not v.allow and v.errno == errno.EXDEV and str(v.rule) == "deny/read+/data/*.key"
    assert plan.notify.decide_move("/data/a.txt", "/data/b.txt").allow
    assert plan.notify.decide_move("/data/a.txt", "/data/b.key").allow  # losing access is fine
    # A directory carries its tree: it moves only where no rule reaches beneath.
    assert not plan.notify.decide_move("/data/d", "/data/e", source_is_dir=True).allow
    assert plan.notify.decide_move("/srv/d", "/srv/e", source_is_dir=True).allow
    # A policy the kernel holds does not trap renames, nor one whose routed
    # rules lie where no name can be made.
    exact = compile_plan(PolicyBuilder("t").profile("none").write("/data").build(), facts())
    assert exact.notify is not None and "rename" not in {t.name for t in exact.notify.traps}
    apart = b.rule("allow/read+/srv/*.txt").build()
    glob_apart = compile_plan(policy(*BASIC, "allow/read+/srv/*.txt", *NO_WRITE), facts())
    assert glob_apart.notify is not None
    assert "rename" not in {t.name for t in glob_apart.notify.traps}
    assert "rename" in {t.name for t in compile_plan(apart, facts()).notify.traps}  # type: ignore[union-attr]


def test_fast_open_cannot_connect_past_the_supervisor() -> None:
    """An address rule on every port leaves Landlock's TCP connect unhandled;
    sendto(MSG_FASTOPEN) would then connect without connect() reaching the
    supervisor, so the filter refuses it."""
    plan = compile_plan(policy(*BASIC, "allow/net/connect+10.0.0.1/32!*", *NO_WRITE), facts())
    assert plan.notify is not None and plan.notify.categories == {Category.NET_CONNECT}
    assert plan.filter.tcp_restricted
    sendto = syscalls.nr("sendto")
    assert run_filter(plan.filter_program, sendto, (3, 0, 0, 0x20000000, 1, 16)) == (
        ret_errno(errno.EACCES)
    )


def test_a_tree_the_sandbox_creates_later_goes_to_the_supervisor() -> None:
    """Landlock grants only what exists when the ruleset is made: a rule
    for a directory the program will create is decided by the supervisor,
    with the nearest existing ancestor as Landlock's bound.  A missing
    directory nobody can create (a profile's /lib32) stays as it was."""
    existing = {"/", "/srv", "/usr"}
    b = PolicyBuilder("t").profile("none").read("/usr").read("/lib32")
    p = b.rule("allow/create+/srv/***").rule("allow/write+/srv/out/***").build()
    plan = compile_plan(p, facts(), exists=existing.__contains__)
    assert plan.notify is not None and Category.WRITE in plan.notify.categories
    assert Category.READ not in plan.notify.categories  # /lib32: nobody creates it
    write_grants = {
        (g.path, g.tree) for g in plan.landlock.grants if g.rights & AccessFs.WRITE_FILE
    }
    assert write_grants == {("/srv", True)}
    assert plan.notify.decide(Category.WRITE, "/srv/out/x").allow
    assert not plan.notify.decide(Category.WRITE, "/srv/other").allow
    everything = compile_plan(p, facts(), exists=lambda _p: True)
    assert everything.notify is None or Category.WRITE not in everything.notify.categories


def test_a_private_root_grants_its_dev_and_tmp_in_the_supervisor_too() -> None:
    p = policy(*BASIC, "allow/read+/usr/lib/*.so", root="tmpfs", private_tmp=True)
    plan = compile_plan(p, facts())
    assert plan.notify is not None and Category.READ in plan.notify.categories
    assert plan.notify.decide(Category.READ, "/dev/null").allow
    assert plan.notify.decide(Category.WRITE, "/dev/null").allow
    assert not plan.notify.decide(Category.WRITE, "/dev/urandom").allow
    assert plan.notify.decide(Category.WRITE, "/tmp/scratch").allow
    assert not plan.notify.decide(Category.READ, "/dev/sda").allow
