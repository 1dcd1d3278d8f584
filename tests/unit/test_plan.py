"""The plan compiler: what each layer gets, for each Landlock ABI (pure)."""

from __future__ import annotations

import errno

import pytest

from stockade import UnsupportedError
from stockade.kernel import syscalls
from stockade.kernel.bpf import disassemble
from stockade.kernel.landlock import AccessFs, AccessNet, Scope
from stockade.kernel.seccomp import SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS, ret_errno
from stockade.plan import KernelFacts, compile_plan
from stockade.plan.filter import FilterSpec, build_program
from stockade.policy.builder import PolicyBuilder
from stockade.policy.model import Category, Policy


def policy(*rules: str, **options: object) -> Policy:
    b = PolicyBuilder("test").profile("none")
    for r in rules:
        b.rule(r)
    for k, v in options.items():
        b.set(k, v)
    return b.build()


def facts(abi: int = 7, **kw: bool) -> KernelFacts:
    return KernelFacts(landlock_abi=abi, **kw)


BASIC = ("allow/read+/usr/***", "allow/exec+/usr/***")


@pytest.mark.parametrize("abi", [6, 7])
def test_handled_rights_follow_the_abi(abi: int) -> None:
    plan = compile_plan(policy(*BASIC), facts(abi))
    ll = plan.landlock
    assert ll.handled_fs & AccessFs.IOCTL_DEV
    assert ll.handled_fs & AccessFs.TRUNCATE and ll.handled_fs & AccessFs.REFER
    assert ll.handled_net == AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
    assert ll.scoped == Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL
    assert ll.ports == ()
    (grant,) = ll.grants
    assert grant.path == "/usr" and grant.tree
    assert grant.rights == AccessFs.READ_FILE | AccessFs.READ_DIR | AccessFs.EXECUTE


@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5])
def test_kernels_without_scoping_are_refused(abi: int) -> None:
    """Without ABI 6 a sandbox could signal and reach host processes: no
    silent downgrade; the error names the ABI and the kernel that has it."""
    with pytest.raises(UnsupportedError) as info:
        compile_plan(policy(*BASIC), facts(abi))
    assert "ABI 6" in str(info.value) and "6.12" in str(info.value)


def test_no_landlock_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="Landlock"):
        compile_plan(policy(*BASIC), facts(0))


def test_port_rules_become_landlock_port_rules() -> None:
    plan = compile_plan(policy(*BASIC, "allow/net/connect+*!443,8000-8001"), facts())
    assert plan.landlock.ports == (
        (443, AccessNet.CONNECT_TCP),
        (8000, AccessNet.CONNECT_TCP),
        (8001, AccessNet.CONNECT_TCP),
    )
    assert plan.filter.tcp_restricted and not plan.filter.allow_udp


def test_any_address_any_port_leaves_tcp_and_udp_alone() -> None:
    b = PolicyBuilder("test").profile("none").read("/usr").net_allow("*").net_bind("*")
    plan = compile_plan(b.build(), facts())
    assert plan.landlock.handled_net == AccessNet(0)
    assert plan.filter.allow_udp and not plan.filter.tcp_restricted


@pytest.mark.parametrize(
    ("rule", "category"),
    [
        ("allow/read+/usr/*.txt", Category.READ),  # a glob other than /***
        ("allow/net/connect+127.0.0.1!80", Category.NET_CONNECT),  # an address
        ("allow/net/connect+example.com!443", Category.NET_CONNECT),  # a hostname
        ("allow/net/send+*!53", Category.NET_SEND),  # datagrams by port
    ],
)
def test_what_no_kernel_layer_expresses_goes_to_the_supervisor(
    rule: str, category: Category
) -> None:
    plan = compile_plan(policy(*BASIC, rule), facts())
    assert plan.notify is not None and category in plan.notify.categories
    assert plan.notify_program
    # Only that category: the others stay in the kernel layers.
    assert plan.notify.categories == {category}
    # With a supervisor beside it, the sandbox makes no Linux AIO context.
    assert plan.filter.deny_aio


def test_linux_aio_is_left_alone_without_a_supervisor() -> None:
    plan = compile_plan(policy(*BASIC, "sandbox/write:off", "sandbox/net/bind:off"), facts())
    assert plan.notify is None and not plan.filter.deny_aio


def test_deny_inside_an_allowed_tree_goes_to_the_supervisor_but_outside_is_fine() -> None:
    plan = compile_plan(policy(*BASIC, "deny/read+/usr/secret/***"), facts())
    assert plan.notify is not None and plan.notify.categories == {Category.READ}
    # Without any namespace (no user namespaces, not root) nothing can mask.
    full = PolicyBuilder("t").profile("none").read("/usr").deny("/usr/secret").build()
    nomask = compile_plan(full, facts(user_namespaces=False))
    assert nomask.notify is not None and Category.READ in nomask.notify.categories
    assert nomask.landlock.masks == ()
    # Already denied by default: nothing to enforce beyond Landlock.
    for rules in (
        ("deny/read+/etc/shadow/***",),
        # A later allow overrides the deny where they meet: still exact.
        ("deny/read+/opt/***", "allow/read+/opt/***"),
    ):
        exact = compile_plan(policy(*BASIC, *rules), facts())
        assert exact.landlock.routed == frozenset()


def test_exec_without_read_goes_to_the_supervisor() -> None:
    plan = compile_plan(policy("allow/exec+/opt/tool/***"), facts())
    assert plan.notify is not None and Category.READ in plan.notify.categories
    with_read = compile_plan(policy("allow/read+/opt/***", "allow/exec+/opt/tool/***"), facts())
    assert with_read.landlock.routed == frozenset()


def test_memory_is_rlimit_data_and_processes_follow_privilege() -> None:
    import resource

    plan = compile_plan(policy(*BASIC, memory="64M", max_procs=10), facts())
    limits = {res: (soft, hard) for res, soft, hard in plan.rlimits}
    assert limits[resource.RLIMIT_DATA] == (64 << 20, 64 << 20)
    assert limits[resource.RLIMIT_NPROC] == (10, 10)
    assert plan.pids_cgroup_max is None
    # Counted in a user namespace of the sandbox's own, when there can be one.
    assert plan.namespaces == {"user"}
    no_userns = compile_plan(policy(*BASIC, max_procs=10), facts(user_namespaces=False))
    assert no_userns.namespaces == frozenset()
    root = compile_plan(policy(*BASIC, max_procs=10), facts(privileged=True, cgroup_pids=True))
    assert root.pids_cgroup_max == 10
    assert resource.RLIMIT_NPROC not in {res for res, _, _ in root.rlimits}
    with pytest.raises(UnsupportedError, match="pids cgroup"):
        compile_plan(policy(*BASIC, max_procs=10), facts(privileged=True))


def test_namespaces_imply_a_user_namespace_without_privilege() -> None:
    plan = compile_plan(policy(*BASIC, hostname="box"), facts())
    assert plan.namespaces == {"uts", "user"}
    assert plan.drop_caps
    root = compile_plan(policy(*BASIC, hostname="box"), facts(privileged=True))
    assert root.namespaces == {"uts"}
    net = compile_plan(policy(*BASIC, no_net=True), facts())
    assert net.loopback and net.landlock.handled_net == AccessNet(0) and net.filter.allow_udp


def test_host_ipc_and_root_chmod_are_refused_unless_isolated_or_unrestricted() -> None:
    assert compile_plan(policy(*BASIC), facts()).filter.deny_ipc
    assert not compile_plan(policy(*BASIC, unshare="ipc"), facts()).filter.deny_ipc
    assert compile_plan(policy(*BASIC), facts(privileged=True)).filter.deny_chmod
    assert not compile_plan(policy(*BASIC), facts()).filter.deny_chmod
    off = policy(*BASIC, "sandbox/write:off")
    assert not compile_plan(off, facts(privileged=True)).filter.deny_chmod


# -- the filter program, read back ------------------------------------------------


def run_filter(program: bytes, nr: int, args: tuple[int, ...] = (), arch: int = 0) -> int:
    """A tiny classic-BPF interpreter over seccomp_data, for the subset we emit."""
    import struct

    data = bytearray(64)
    struct.pack_into("=iI", data, 0, nr, arch or syscalls.AUDIT_ARCH)
    for i, a in enumerate(args):
        struct.pack_into("=Q", data, 16 + 8 * i, a)
    insns = disassemble(program)
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        if cls == 0x00:  # LD W ABS
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif cls == 0x04:  # ALU AND K
            acc &= k
            pc += 1
        elif cls == 0x06:
            return k
        else:
            op = code & 0xF0
            if op == 0x00:  # JA
                pc += 1 + k
                continue
            taken = {
                0x10: acc == k,
                0x20: acc > k,
                0x30: acc >= k,
                0x40: bool(acc & k),
            }[op]
            pc += 1 + (jt if taken else jf)


PROGRAM = build_program(FilterSpec(tcp_restricted=True, deny_chmod=True))


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("getpid", (), SECCOMP_RET_ALLOW),
        ("mount", (), ret_errno(errno.EPERM)),
        ("clone3", (), ret_errno(errno.ENOSYS)),
        ("clone", (0x11,), SECCOMP_RET_ALLOW),  # SIGCHLD only
        ("clone", (0x10000000,), ret_errno(errno.EPERM)),  # CLONE_NEWUSER
        ("clone", (0x3D0F00,), SECCOMP_RET_ALLOW),  # pthread_create's flags
        ("clone", (0x4111,), SECCOMP_RET_ALLOW),  # vfork: CLONE_VM|CLONE_VFORK|SIGCHLD
        ("clone", (0x411,), ret_errno(errno.EPERM)),  # CLONE_FILES without CLONE_THREAD
        ("clone", (0x10F00 | 0x10000000,), ret_errno(errno.EPERM)),  # a thread, CLONE_NEWUSER
        ("ioctl", (0, 0x5412), ret_errno(errno.EPERM)),  # TIOCSTI
        ("ioctl", (0, 0x1_0000_5412), ret_errno(errno.EPERM)),  # high bits ignored
        ("ioctl", (0, 0x5413), SECCOMP_RET_ALLOW),  # TIOCGWINSZ
        ("socket", (2, 1, 0), SECCOMP_RET_ALLOW),  # TCP
        ("socket", (2, 1, 262), ret_errno(errno.EACCES)),  # MPTCP
        ("socket", (2, 2, 0), ret_errno(errno.EACCES)),  # UDP
        ("socket", (17, 3, 0), ret_errno(errno.EAFNOSUPPORT)),  # AF_PACKET
        ("socket", (16, 3, 4), ret_errno(errno.EACCES)),  # NETLINK_SOCK_DIAG
        ("sendto", (3, 0, 0, 0x20000000), ret_errno(errno.EACCES)),  # MSG_FASTOPEN
        ("personality", (0xFFFFFFFF,), SECCOMP_RET_ALLOW),
        ("personality", (0x0400000,), ret_errno(errno.EPERM)),  # READ_IMPLIES_EXEC
        ("prlimit64", (0,), SECCOMP_RET_ALLOW),
        ("prlimit64", (1234,), ret_errno(errno.EPERM)),
        ("setpriority", (2, 0), ret_errno(errno.EPERM)),  # PRIO_USER
        ("fchmodat", (), ret_errno(errno.EPERM)),
        ("shmget", (), ret_errno(errno.EPERM)),
    ],
)
def test_filter_verdicts(name: str, args: tuple[int, ...], expected: int) -> None:
    assert run_filter(PROGRAM, syscalls.nr(name), args) == expected


def test_foreign_arch_and_x32_kill_the_process() -> None:
    assert run_filter(PROGRAM, 20, arch=0x40000003) == SECCOMP_RET_KILL_PROCESS  # i386
    assert run_filter(PROGRAM, 39 | syscalls.X32_SYSCALL_BIT) == SECCOMP_RET_KILL_PROCESS


def test_a_full_deny_inside_a_tree_becomes_a_mask() -> None:
    p = PolicyBuilder("t").profile("none").read("/etc").deny("/etc/shadow").build()
    plan = compile_plan(p, facts())
    assert plan.landlock.masks == ("/etc/shadow",)
    assert plan.namespaces == {"mount", "user"}
    root = compile_plan(p, facts(privileged=True))
    assert root.namespaces == {"mount"}


@pytest.mark.parametrize(
    "extra",
    [
        ("deny/write+/etc/shadow/***",),  # only some access: a mask would deny more
        ("deny/read+/etc/*/x",),  # a glob
    ],
)
def test_masks_only_where_exact(extra: tuple[str, ...]) -> None:
    plan = compile_plan(policy("allow/read+/etc/***", "allow/write+/etc/***", *extra), facts())
    assert plan.landlock.masks == ()
    assert plan.notify is not None and plan.landlock.routed


def test_a_later_allow_inside_a_mask_goes_to_the_supervisor() -> None:
    b = PolicyBuilder("t").profile("none").read("/etc").deny("/etc/ssl").read("/etc/ssl/certs")
    plan = compile_plan(b.build(), facts())
    assert plan.landlock.masks == ()
    assert plan.notify is not None
    assert plan.notify.decide(Category.READ, "/etc/ssl/certs/ca.pem").allow
    assert not plan.notify.decide(Category.READ, "/etc/ssl/private/key").allow
    assert plan.notify.decide(Category.READ, "/etc/passwd").allow


def test_pty_is_planned_and_reaches_the_child_options() -> None:
    from stockade.launch.options import child_options

    plan = compile_plan(policy(*BASIC, pty=True), facts())
    assert child_options(plan)["controlling_tty"] is True
    assert child_options(compile_plan(policy(*BASIC), facts()))["controlling_tty"] is False
    # The filter is the same program: TIOCSTI stays refused on every fd.
    assert plan.filter_program == compile_plan(policy(*BASIC), facts()).filter_program


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"unshare": ["pid"]}, {"pid", "mount", "user"}),
        ({"unshare": ["time"]}, {"time", "pid", "mount", "user"}),
        ({"time_offset": 5}, {"time", "pid", "mount", "user"}),
        ({"proc_subset_pid": True}, {"pid", "mount", "user"}),
        ({"domainname": "d"}, {"uts", "user"}),
        ({"unshare": ["cgroup"]}, {"cgroup", "user"}),
        ({"unshare": "all"}, {"user", "mount", "pid", "net", "uts", "ipc", "cgroup", "time"}),
    ],
)
def test_options_bring_the_namespaces_they_need(
    options: dict[str, object], expected: set[str]
) -> None:
    assert compile_plan(policy(*BASIC, **options), facts()).namespaces == expected
    # Root needs no user namespace unless it asks for one (all does).
    root = compile_plan(policy(*BASIC, **options), facts(privileged=True))
    assert root.namespaces == expected - ({"user"} if options.get("unshare") != "all" else set())


def test_a_pid_namespace_regrants_proc_and_counts_its_two_processes() -> None:
    import resource

    plan = compile_plan(
        policy(*BASIC, "allow/read+/proc/***", unshare=["pid"], max_procs=10), facts()
    )
    assert plan.proc_rights and plan.proc_rights & int(AccessFs.READ_FILE)
    assert not plan.proc_rights & int(AccessFs.WRITE_FILE)
    limits = {res: soft for res, soft, _ in plan.rlimits}
    assert limits[resource.RLIMIT_NPROC] == 12
    root = compile_plan(
        policy(*BASIC, unshare=["pid"], max_procs=10), facts(privileged=True, cgroup_pids=True)
    )
    assert root.pids_cgroup_max == 12 and root.proc_rights == 0
    # Grants beneath /proc name the host's procfs: nothing to regrant.
    sub = compile_plan(policy(*BASIC, "allow/read+/proc/self/***", unshare=["pid"]), facts())
    assert sub.proc_rights == 0


def test_a_ruleset_the_init_adds_to_is_never_reused() -> None:
    from stockade.launch.spawn import RulesetCache

    pid = compile_plan(policy(*BASIC, "allow/read+/proc/***", unshare=["pid"]), facts())
    assert not RulesetCache(pid).usable
    assert RulesetCache(compile_plan(policy(*BASIC, "allow/read+/proc/***"), facts())).usable
