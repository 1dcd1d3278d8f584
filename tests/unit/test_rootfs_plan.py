"""What a private root is planned to hold, and in what order (no kernel)."""

from __future__ import annotations

import os

import pytest

from stockade import PolicyError, UnsupportedError
from stockade.launch.rootfs import (
    K_LINK,
    K_MKDIR,
    K_MKFIFO,
    K_MKFILE,
    K_MOUNT,
    K_SYMLINK,
    OP_CREATE,
    OP_DEV,
    OP_FILE,
    OP_RO,
    root_ops,
)
from stockade.plan import KernelFacts, compile_plan
from stockade.policy.builder import PolicyBuilder
from stockade.policy.model import Bind, Policy


def policy(*rules: str, **options: object) -> Policy:
    b = PolicyBuilder("test").profile("none")
    for r in rules:
        b.rule(r)
    for k, v in options.items():
        items = v if isinstance(v, list) else [v]
        for item in items:
            b.set(k, item)
    return b.build()


FACTS = KernelFacts(landlock_abi=7)
READ_USR = ("allow/read+/usr/***", "allow/exec+/usr/***")


def test_root_implies_mount_and_user_namespaces() -> None:
    plan = compile_plan(policy(*READ_USR, root="tmpfs"), FACTS)
    assert plan.namespaces == {"mount", "user"}
    plan = compile_plan(policy(*READ_USR, root="tmpfs"), KernelFacts(7, privileged=True))
    assert plan.namespaces == {"mount"}
    with pytest.raises(UnsupportedError, match="user namespaces"):
        compile_plan(policy(*READ_USR, root="tmpfs"), KernelFacts(7, user_namespaces=False))


def test_tmpfs_root_binds_each_allowed_path_read_only_unless_writable() -> None:
    plan = compile_plan(
        policy(
            *READ_USR,
            "allow/read+/etc/passwd",
            "allow/write+/srv/data/***",
            "allow/read+/proc/***",
            "allow/read+/dev/null",
            root="tmpfs",
        ),
        FACTS,
    )
    assert plan.root_binds == (
        Bind("/usr", "/usr", readonly=True),
        Bind("/etc/passwd", "/etc/passwd", readonly=True),
        Bind("/srv/data", "/srv/data", readonly=False),
    )  # /proc and /dev come from the root itself, never from the host
    assert compile_plan(policy(*READ_USR, root="/srv/r"), FACTS).root_binds == ()


def test_rules_under_a_root_directory_name_its_paths() -> None:
    plan = compile_plan(policy(*READ_USR, root="/srv/r", bind="/opt:/opt:ro"), FACTS)
    grants = {g.path: g.in_root for g in plan.landlock.grants}
    assert grants["/usr"] is True  # DIR/usr
    assert grants["/opt"] is False  # a bind's source is a host path
    assert grants["/dev/null"] is False  # the private /dev binds the host's nodes


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"mkdir": "/a"}, 'root = "tmpfs"'),
        ({"root": "/srv/r", "mkfile": "/a"}, 'root = "tmpfs"'),
        ({"root": "tmpfs", "mkfile": "/usr/x"}, "inside /usr"),
        ({"root": "tmpfs", "mkfifo": "/dev/x"}, "inside /dev"),
        ({"root": "tmpfs", "link": [("/usr/bin/env", "/env")]}, "one filesystem"),
        ({"root": "tmpfs", "bind": "/srv:/"}, "hides it"),
        ({"root": "tmpfs", "private_tmp": True, "mkdir": "/tmp/x"}, "inside /tmp"),
    ],
)
def test_what_a_root_cannot_do_is_refused(options: dict[str, object], needle: str) -> None:
    with pytest.raises(PolicyError, match=needle.replace("[", r"\[")):
        compile_plan(policy(*READ_USR, **options), FACTS)


def test_a_rule_on_the_host_root_is_refused_under_a_tmpfs_root() -> None:
    with pytest.raises(PolicyError, match="whole root"):
        compile_plan(policy("allow/read+/***", root="tmpfs"), FACTS)


@pytest.mark.parametrize("bad", ["usr", "/a/../b", "./x"])
def test_destinations_must_be_absolute_without_dotdot(bad: str) -> None:
    for key, value in (("tmpfs", bad), ("bind", f"/usr:{bad}"), ("mkdir", bad)):
        with pytest.raises(PolicyError, match=r"relative destination|'\.\.'"):
            PolicyBuilder("test", relative_base="/home").set(key, value)


def test_operations_come_in_a_safe_order(tmp_path: os.PathLike[str]) -> None:
    src = os.fspath(tmp_path)
    plan = compile_plan(
        policy(
            *READ_USR,
            root="tmpfs",
            mkdir="/work",
            mkfile="/etc/hostname",
            mkfifo="/run/p",
            symlink=[("usr/bin", "/bin")],
            link=[("/etc/hostname", "/etc/name")],
            tmpfs=["/usr/local/scratch", "/work"],
            bind=[f"{src}:/work/in/deep:ro"],
        ),
        FACTS,
    )
    ops = root_ops(plan)
    kinds = [(op[1].decode(), op[2] >> 8) for op in ops]
    # Entries first (on the bare tmpfs), /proc before anything.
    assert kinds[:6] == [
        ("/proc", K_MKDIR),
        ("/work", K_MKDIR),
        ("/etc/hostname", K_MKFILE),
        ("/run/p", K_MKFIFO),
        ("/bin", K_SYMLINK),
        ("/etc/name", K_LINK),
    ]
    mounts = [(op[1].decode(), op[2]) for op in ops if op[2] >> 8 == K_MOUNT]
    order = [m for m, _ in mounts]
    # Parents before children; /dev first among equals, its links right after it.
    assert order.index("/dev") < order.index("/dev/null") < order.index("/dev/shm")
    assert order.index("/usr") < order.index("/usr/local/scratch")
    assert order.index("/work") < order.index("/work/in/deep")
    dev = next(i for i, op in enumerate(ops) if op[1] == b"/dev")
    assert [op[1] for op in ops[dev + 1 : dev + 5]] == [
        b"/dev/fd", b"/dev/stdin", b"/dev/stdout", b"/dev/stderr"
    ]  # fmt: skip
    flags = dict(mounts)
    # Mount points are made only on a tmpfs of ours: beneath the /usr bind
    # the point must exist; beneath the /work tmpfs it is made.
    assert flags["/usr"] & OP_CREATE and flags["/usr"] & OP_RO
    assert not flags["/usr/local/scratch"] & OP_CREATE
    assert flags["/work/in/deep"] & OP_CREATE and flags["/work/in/deep"] & OP_RO
    if os.path.exists("/dev/null"):
        assert flags["/dev/null"] & OP_DEV and flags["/dev/null"] & OP_FILE
    # Components, never a path the kernel would walk with symlinks.
    deep = next(op for op in ops if op[1] == b"/work/in/deep")
    assert deep[3:] == ((b"work", b"in"), b"deep")
    link = next(op for op in ops if op[1] == b"/etc/name")
    assert link[0] == b"etc/hostname"  # reached from the root fd


def test_a_root_directory_never_gets_mount_points_made(tmp_path: os.PathLike[str]) -> None:
    root = os.fspath(tmp_path)
    plan = compile_plan(policy(*READ_USR, root=root, tmpfs=["/scratch"]), FACTS)
    ops = root_ops(plan)
    assert [op[1] for op in ops] == [b"/scratch"]  # no /dev in DIR: none mounted
    assert not ops[0][2] & OP_CREATE
    os.mkdir(os.path.join(root, "dev"))
    ops = root_ops(plan)
    assert ops[0][1] == b"/dev" and not ops[0][2] & OP_CREATE
    # Inside the /dev tmpfs of ours, mount points are made.
    dev_mounts = [op for op in ops if op[1].startswith(b"/dev/") and op[2] >> 8 == K_MOUNT]
    assert dev_mounts and all(op[2] & OP_CREATE for op in dev_mounts)
