"""HOW a policy is enforced: Policy -> EnforcementPlan.

The only package that knows both rules and kernel mechanisms.  Pure: the
facts about the running kernel (Landlock ABI, whether we are root) come in
as arguments, so every decision here is unit-testable without a kernel.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import TYPE_CHECKING

from stockade._record import record, replace
from stockade.errors import PolicyError, UnsupportedError
from stockade.plan.filter import FilterSpec, build_program
from stockade.plan.landlock import (
    LandlockPlan,
    NetPlan,
    compile_landlock,
    compile_net,
    tmpfs_rights,
)
from stockade.plan.rootfs import check_root, dev_grants, root_binds
from stockade.policy.model import NET_CATEGORIES, Bind, Category, Policy

if TYPE_CHECKING:  # imported when a policy needs the supervisor
    from stockade.plan.notify import NotifyPlan

RLIM_INFINITY = resource.RLIM_INFINITY

RLIMIT_BY_NAME: dict[str, int] = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": 10,  # RLIMIT_LOCKS; absent from the resource module
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}

#: personality(2) flag for ``no_aslr``.
ADDR_NO_RANDOMIZE = 0x0040000


@record(frozen=True)
class KernelFacts:
    """What the plan needs to know about where it will run."""

    landlock_abi: int
    #: We run with capabilities (root): the child must drop them, and
    #: RLIMIT_NPROC does not bind uid 0, so ``max_procs`` needs a cgroup.
    privileged: bool = False
    #: A pids cgroup can be created for ``max_procs`` and tree kills.
    cgroup_pids: bool = False
    #: This process may create user namespaces.
    user_namespaces: bool = True


@record(frozen=True)
class EnforcementPlan:
    """Every kernel-layer operation one sandbox needs, as plain data."""

    policy: Policy
    landlock: LandlockPlan
    net: NetPlan
    filter: FilterSpec
    filter_program: bytes
    #: (resource, soft, hard) with ``RLIM_INFINITY`` for unlimited.
    rlimits: tuple[tuple[int, int, int], ...]
    personality: int | None
    drop_caps: bool
    #: Limit processes with a pids cgroup (root) instead of RLIMIT_NPROC.
    pids_cgroup_max: int | None
    #: Namespaces the child enters (``user``, ``net``, ``uts``, ``ipc``).
    namespaces: frozenset[str] = frozenset()
    #: Bring the loopback interface up in the new network namespace.
    loopback: bool = False
    #: Landlock rights the child grants beneath each ``--tmpfs`` it mounts.
    tmpfs_rights: int = 0
    #: What the supervisor decides; ``None`` when the kernel layers hold
    #: the whole policy (no supervisor runs).
    notify: NotifyPlan | None = None
    #: The notify filter (SECCOMP_RET_USER_NOTIF for ``notify.syscalls``),
    #: installed last; empty when ``notify`` is None.
    notify_program: bytes = b""
    #: Under ``root = "tmpfs"``: what the access rules bind into it (see
    #: :mod:`stockade.plan.rootfs`).
    root_binds: tuple[Bind, ...] = ()
    #: Landlock rights the policy grants on ``/proc``, given again on the
    #: private procfs the pid namespace's init mounts there.
    proc_rights: int = 0


def compile_plan(
    policy: Policy,
    facts: KernelFacts,
    *,
    audit: bool = False,
    observe: frozenset[Category] = frozenset(),
    is_dir: Callable[[str], bool] | None = None,
    exists: Callable[[str], bool] | None = None,
) -> EnforcementPlan:
    """Assign every part of *policy* to the cheapest layer that enforces it
    exactly; what no kernel layer can hold goes to the supervisor
    (``notify``).  *audit* routes every category for events (``stockade
    learn``), *observe* routes some categories only to be seen (``on_event``,
    exec events).  *is_dir* (``os.path.isdir``, from the launcher) finds
    literal rules that name a directory alone, which only the supervisor
    can hold; without it such a rule is refused when the ruleset is built.
    *exists* (``os.path.exists``) finds denied paths a mount mask could not
    cover (missing, in a tree the sandbox may create in); they go to the
    supervisor instead of being refused at launch.
    Raises :class:`PolicyError` for what no layer in this
    release can enforce and :class:`UnsupportedError` for what this kernel
    lacks."""
    _refuse_unimplemented(policy)
    namespaces = _namespaces(policy, facts)
    if "net" in namespaces and not any(r.category.is_net for r in policy.rules):
        # The namespace is the boundary: with no network rule, nothing in
        # it is refused (SPEC: --no-net has its own loopback, up).
        policy_for_net = replace(policy, enabled=policy.enabled - NET_CATEGORIES)
    else:
        policy_for_net = policy
    if facts.landlock_abi < 1:
        raise UnsupportedError("Landlock", "Linux 5.13 with Landlock enabled (lsm=landlock)")
    if facts.landlock_abi < 6:
        raise UnsupportedError(
            "signal and abstract UNIX socket scoping",
            "Landlock ABI 6 (Linux 6.12)",
            f"this kernel has ABI {facts.landlock_abi}; without it the sandbox could signal "
            "and connect to host processes",
        )
    net = compile_net(policy_for_net)
    can_mask = facts.privileged or facts.user_namespaces
    landlock = compile_landlock(policy_for_net, net, facts.landlock_abi, can_mask, is_dir, exists)
    binds = root_binds(policy, landlock.grants)
    check_root(policy, binds)
    if policy.root is not None:
        landlock = replace(landlock, grants=landlock.grants + dev_grants(landlock.handled_fs))
    if landlock.masks or policy.binds or policy.tmpfs or policy.root is not None:
        if not facts.privileged and not facts.user_namespaces:
            raise UnsupportedError(
                "mount namespaces",
                "user namespaces (kernel.unprivileged_userns_clone=1, no AppArmor restriction)",
                "see 'stockade check'",
            )
        namespaces |= {"mount"} if facts.privileged else {"mount", "user"}
    proc_rights = 0
    if "pid" in namespaces:
        proc_rights = _proc_rights(landlock)
    deny_tcp = facts.landlock_abi < 4 and not (net.connect_all and net.bind_all)
    notify = None
    if landlock.routed or net.routed or audit or observe or _needs_notify(policy_for_net):
        from stockade.plan.notify import build_notify_program, compile_notify

        notify = compile_notify(
            policy_for_net, landlock.routed | net.routed, audit=audit, observe=observe
        )

    spec = FilterSpec(
        allow_udp=net.allow_udp,
        deny_tcp=deny_tcp,
        # TCP Fast Open connects from sendto/sendmsg, past both Landlock's
        # connect hook and a supervisor watching connect().
        tcp_restricted=bool(landlock.handled_net) or Category.NET_CONNECT in net.routed,
        deny_ipc="ipc" not in namespaces,
        deny_chmod=facts.privileged and Category.WRITE in policy.enabled,
        deny_aio=notify is not None,
    )

    limits: dict[int, tuple[int, int]] = {}
    if policy.memory is not None:
        # RLIMIT_DATA, not RLIMIT_AS: runtimes that reserve address space
        # up front (V8, the JVM, Go) fail under RLIMIT_AS long before they
        # use the memory (bench/memory_limits.py measures it).
        limits[resource.RLIMIT_DATA] = (policy.memory, policy.memory)
    pids_max: int | None = None
    if policy.max_procs is not None:
        # In a pid namespace the stub outside and the init count too, and
        # max_procs is about the command's processes.
        extra = PID_NAMESPACE_PROCESSES if "pid" in namespaces else 0
        # RLIMIT_NPROC never binds uid 0 (a user namespace that maps it does
        # not change that).  For others it counts the processes of the user
        # in the sandbox's user namespace: only the sandbox's when it has
        # its own, every process of the user otherwise.
        if facts.privileged:
            if not facts.cgroup_pids:
                raise UnsupportedError(
                    "max_procs as root",
                    "a writable pids cgroup (cgroup v1 pids controller or cgroup v2)",
                    "RLIMIT_NPROC never limits uid 0",
                )
            pids_max = policy.max_procs + extra
        else:
            limits[resource.RLIMIT_NPROC] = (policy.max_procs + extra, policy.max_procs + extra)
    for rl in policy.rlimits:
        number = RLIMIT_BY_NAME[rl.name]
        soft = RLIM_INFINITY if rl.soft is None else rl.soft
        hard = RLIM_INFINITY if rl.hard is None else rl.hard
        limits[number] = (soft, hard)
    return EnforcementPlan(
        policy=policy,
        landlock=landlock,
        net=net,
        filter=spec,
        filter_program=build_program(spec),
        rlimits=tuple((res, soft, hard) for res, (soft, hard) in sorted(limits.items())),
        personality=ADDR_NO_RANDOMIZE if policy.no_aslr else None,
        # A user namespace gives its first process every capability in it.
        drop_caps=facts.privileged or "user" in namespaces,
        pids_cgroup_max=pids_max,
        namespaces=namespaces,
        loopback="net" in namespaces,
        tmpfs_rights=int(tmpfs_rights(landlock.handled_fs))
        if policy.tmpfs or policy.root is not None
        else 0,
        root_binds=binds,
        proc_rights=proc_rights,
        notify=notify,
        notify_program=build_notify_program(notify) if notify is not None else b"",
    )


def _needs_notify(policy: Policy) -> bool:
    """Whether a category that traps calls no kernel layer mediates (see
    :func:`stockade.plan.notify.compile_notify`) is on; checked here so that
    policies with neither do not import the supervisor's plan."""
    return Category.WRITE in policy.enabled or Category.NET_BIND in policy.enabled


#: Processes a pid namespace adds beside the command: the stub that stays
#: outside, and the init.
PID_NAMESPACE_PROCESSES = 2


def _proc_rights(landlock: LandlockPlan) -> int:
    """What the policy grants on the whole of ``/proc``.  Grants beneath it
    name the host's procfs, which the private one hides; they grant nothing
    inside a pid namespace."""
    rights = 0
    for grant in landlock.grants:
        if grant.tree and grant.path.rstrip("/") == "/proc":
            rights |= int(grant.rights)
    return rights & int(landlock.handled_fs)


#: Namespaces the child enters, in one unshare(2).  A mount namespace
#: carries masks, binds and a private root; pid and time namespaces are
#: entered by the child's own children (see stockade.launch.pidns).
SUPPORTED_NAMESPACES = frozenset({"user", "mount", "net", "uts", "ipc", "pid", "cgroup", "time"})


def _namespaces(policy: Policy, facts: KernelFacts) -> frozenset[str]:
    """The namespaces *policy* asks for, with what they imply."""
    wanted = set(policy.unshare)
    if policy.hostname is not None or policy.domainname is not None:
        wanted.add("uts")
    if policy.time_offset is not None:
        wanted.add("time")
    if policy.proc_subset_pid:
        wanted.add("pid")
    if "time" in wanted:
        # Only a child of the unsharer enters a time namespace: stockade's
        # is the init of a pid namespace.
        wanted.add("pid")
    if "pid" in wanted:
        # The private /proc needs a mount namespace to be mounted in.
        wanted.add("mount")
    if policy.no_net:
        wanted.add("net")
    if policy.map_root:
        wanted.add("user")
    missing = wanted - SUPPORTED_NAMESPACES
    if missing:
        raise PolicyError(
            f"unknown namespaces {', '.join(sorted(missing))}; expected "
            f"{', '.join(sorted(SUPPORTED_NAMESPACES))}",
            "policy",
            "unshare",
        )
    if wanted and not facts.privileged:
        # Without privilege, only a user namespace grants the capabilities
        # the others need.
        wanted.add("user")
    if policy.max_procs is not None and not facts.privileged and facts.user_namespaces:
        # RLIMIT_NPROC counts the processes of the user in the current user
        # namespace: in one of its own, only the sandbox's.
        wanted.add("user")
    if wanted and not facts.user_namespaces:
        raise UnsupportedError(
            "namespaces",
            "user namespaces (kernel.unprivileged_userns_clone=1, no AppArmor restriction)",
            "see 'stockade check'",
        )
    return frozenset(wanted)


def _refuse_unimplemented(policy: Policy) -> None:
    """Options whose layer has not landed yet are errors, never ignored."""
    pending = {
        "ipc": policy.ipc is not None,
    }
    for key, used in pending.items():
        if used:
            layer = "the control socket" if key == "ipc" else "the namespace layer"
            raise PolicyError(f"needs {layer}, which this release does not have yet", "policy", key)
