"""A private root cannot be left, widened or redirected (SPEC section 8).

- the old root is detached: no path, descriptor or /proc link reaches it;
- a read-only bind can be neither written nor remounted read-write, also
  as root inside (--map-root);
- setup never follows a symlink: one swapped into a bind's source or a
  mount point's path after the parent resolved it, or planted by the
  policy's own entries, makes setup fail (ELOOP) instead of redirecting
  the mount or making something on the host.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, is_root, probe_code, run_probe, verdicts
from stockade.launch.child import ChildSetup, decode_record, failed_target
from stockade.launch.options import bounding_to_drop, child_options
from stockade.launch.wire import read_record
from stockade.plan import compile_plan
from stockade.policy.tomlfile import loads_toml
from stockade.sandbox import kernel_facts

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")

MOUNT_CALLS = """
_keep = []
def cstr(text):
    b = ctypes.create_string_buffer(text.encode())
    _keep.append(b)
    return ctypes.addressof(b)
attr = (ctypes.c_uint64 * 4)(0, 1, 0, 0)  # attr_clr = MOUNT_ATTR_RDONLY
attempt("setattr_rw", lambda: sys_call(442, -100, cstr("/data"), 0x8000,
                                       ctypes.addressof(attr), 32))
# mount(NULL, "/data", NULL, MS_REMOUNT | MS_BIND, NULL)
attempt("remount_rw", lambda: sys_call(165, 0, cstr("/data"), 0, 0x20 | 0x1000, 0))
attempt("umount_root", lambda: sys_call(166, cstr("/"), 2))
attempt("pivot_root", lambda: sys_call(155, cstr("/"), cstr("/")))
attempt("unshare_mount", lambda: sys_call(272, 0x10000000 | 0x00020000))
"""


@pytest.fixture
def host(workdir: Path) -> dict[str, Path]:
    paths = {
        "src": workdir / "src",
        "secret": workdir / "secret",
        "tree": workdir / "tree",
    }
    for p in paths.values():
        p.mkdir()
        p.chmod(0o777)
    (paths["src"] / "data").write_text("data\n")
    (paths["src"] / "data").chmod(0o666)
    (paths["secret"] / "secret.txt").write_text("secret\n")
    return paths


def test_the_old_root_is_unreachable(host: dict[str, Path]) -> None:
    secret = host["secret"] / "secret.txt"
    body = f"""
        def _isfd(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False
        attempt("secret", lambda: open({str(secret)!r}).read())
        attempt("root", lambda: sorted(os.listdir("/")))
        attempt("dotdot", lambda: sorted(os.listdir("/../../..")))
        attempt("cwd", lambda: os.getcwd())
        attempt("fds", lambda: [fd for fd in range(3, 64) if _isfd(fd)])
        attempt("self_root", lambda: sorted(os.listdir("/proc/self/root")))
        attempt("init_root", lambda: os.listdir("/proc/1/root"))
        attempt("mountinfo", lambda: open("/proc/self/mountinfo").read().splitlines())
    """
    res, v = run_probe(
        body,
        root="tmpfs",
        binds=["/proc:/proc:ro"],
    )
    assert res.returncode == 0, res.stderr
    assert v["secret"]["errno"] == errno.ENOENT
    assert v["dotdot"]["value"] == v["root"]["value"]
    assert "home" not in v["root"]["value"] and "root" not in v["root"]["value"]
    assert v["cwd"]["value"] == "/"
    assert v["fds"]["value"] == []
    # The host's /proc, bound in on purpose: the sandbox's own root link is
    # the private root; another process's is out of reach (Landlock scopes
    # ptrace, which /proc/PID/root needs).
    assert v["self_root"]["value"] == v["root"]["value"]
    assert v["init_root"]["errno"] == errno.EACCES
    # Independent witness: in the sandbox's mount table "/" is the tmpfs,
    # and no mount of the old root is left.
    lines = v["mountinfo"]["value"]
    root_lines = [line for line in lines if line.split()[4] == "/"]
    assert len(root_lines) == 1 and " - tmpfs " in root_lines[0], lines
    with open("/proc/self/mountinfo") as f:
        host_root = next(line for line in f if line.split()[4] == "/")
    host_source = host_root.split(" - ")[1].split()[1]
    assert not any(
        line.split(" - ")[1].split()[1] == host_source and line.split()[3] == "/" for line in lines
    ), "the host's root filesystem is still mounted whole"


@pytest.mark.parametrize("map_root", [False, True], ids=["caller ids", "map-root"])
def test_read_only_bind_cannot_be_written_or_remounted(
    host: dict[str, Path], map_root: bool
) -> None:
    body = """
attempt("uid", lambda: os.getuid())
attempt("read", lambda: open("/data/data").read())
attempt("write", lambda: open("/data/data", "a").write("x"))
attempt("create", lambda: open("/data/new", "w"))
attempt("chmod", lambda: os.chmod("/data/data", 0o600))
"""
    res, v = run_probe(
        body + MOUNT_CALLS + 'attempt("write_after", lambda: open("/data/data", "a").write("x"))\n',
        root="tmpfs",
        binds=[f"{host['src']}:/data:ro"],
        map_root=map_root,
    )
    assert res.returncode == 0, res.stderr
    assert v["uid"]["value"] == (0 if map_root else os.getuid())
    assert v["read"]["value"] == "data\n"
    for name in ("write", "create", "write_after"):
        assert v[name]["errno"] == errno.EROFS, name
    # Root's chmod is refused by the filter first (EPERM); others' by the
    # supervisor, since a read-only bind grants no write (EACCES).
    assert v["chmod"]["errno"] == (errno.EPERM if is_root() else errno.EACCES)
    for name in ("setattr_rw", "remount_rw", "umount_root", "pivot_root", "unshare_mount"):
        assert v[name]["errno"] == errno.EPERM, name
    assert (host["src"] / "data").read_text() == "data\n"
    assert sorted(p.name for p in host["src"].iterdir()) == ["data"]


def _setup_after(policy: stockade.Policy, swap: object, argv: list[str]) -> tuple[str, int, str]:
    """Plan and resolve *policy* as the launcher does, call *swap* (the
    attack, after the parent looked), then run the child's setup for real;
    return its failure as (step, errno, target), or ("", 0, "") after exec."""
    plan = compile_plan(policy, kernel_facts())
    options = child_options(plan)
    swap()  # type: ignore[operator]  # a callable
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        setup = ChildSetup(
            error_fd=write_fd,
            parent_pid=os.getpid(),
            cap_last=bounding_to_drop(plan.drop_caps, plan.namespaces, False),
            **options,
        )
        with subprocess.Popen(argv, preexec_fn=setup.run, close_fds=True,  # noqa: PLW1509 - the test process forks one child and waits
                              stdout=subprocess.DEVNULL) as proc:  # fmt: skip
            os.close(write_fd)
            write_fd = -1
            record = read_record(read_fd)
            proc.wait()
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if not record:
        return "", 0, ""
    step, err, index = decode_record(record)
    return step, err, failed_target(step, index, options["masks"], options["mounts"])


def test_symlink_swapped_into_a_bind_source_does_not_redirect_it(host: dict[str, Path]) -> None:
    src, secret = host["src"], host["secret"]
    policy = stockade.Sandbox(root="tmpfs", read=SYSTEM, binds=[f"{src}:/data:ro"]).policy

    def swap() -> None:
        src.rename(src.with_name("moved"))
        src.symlink_to(secret)

    step, err, target = _setup_after(policy, swap, ["/bin/true"])
    assert (step, errno.errorcode.get(err), target) == (
        "opening what the private root mounts at", "ELOOP", "/data"
    )  # fmt: skip


def test_symlink_swapped_into_a_mount_point_path_does_not_redirect_it(
    host: dict[str, Path],
) -> None:
    tree = host["tree"]
    (tree / "sub" / "x").mkdir(parents=True)
    (tree / "elsewhere" / "x").mkdir(parents=True)
    (tree / "elsewhere" / "x" / "keep").write_text("host\n")
    point = tree / "sub" / "x"
    policy = stockade.Sandbox(
        root="tmpfs", read=SYSTEM, write=[str(tree)], tmpfs=[str(point)]
    ).policy

    def swap() -> None:
        (tree / "sub").rename(tree / "old-sub")
        (tree / "sub").symlink_to(tree / "elsewhere")

    step, err, target = _setup_after(policy, swap, ["/bin/true"])
    assert (step, errno.errorcode.get(err), target) == (
        "mounting in the private root over", "ELOOP", str(point)
    )  # fmt: skip
    assert sorted(p.name for p in (tree / "elsewhere" / "x").iterdir()) == ["keep"]


def test_without_a_swap_the_same_setup_runs(host: dict[str, Path]) -> None:
    # The control for the two tests above: the same path succeeds.
    policy = stockade.Sandbox(root="tmpfs", read=SYSTEM, binds=[f"{host['src']}:/data:ro"]).policy
    assert _setup_after(policy, lambda: None, ["/bin/true"]) == ("", 0, "")


def test_a_symlink_made_by_the_policy_is_not_followed_by_setup(workdir: Path) -> None:
    workdir.chmod(0o777)
    read = ", ".join(f'"{p}"' for p in SYSTEM)
    policy = loads_toml(
        f"""
        root = "tmpfs"
        read = [{read}]
        write = ["{workdir}"]
        mkfile = ["/f"]
        symlink = [["{workdir}", "/u"]]
        link = [["/f", "/u/evil"]]
        """,
        "evil.toml",
    )
    with pytest.raises(stockade.LaunchError) as info:
        stockade.Sandbox(policy=policy).run([PROBE_PY, "-c", "pass"])
    assert info.value.errno == errno.ELOOP
    assert info.value.target == "/u/evil"
    assert not (workdir / "evil").exists()

    policy = loads_toml(
        f"""
        root = "tmpfs"
        read = [{read}]
        symlink = [["/etc", "/mnt"]]
        tmpfs = ["/mnt/x"]
        """,
        "evil.toml",
    )
    with pytest.raises(stockade.LaunchError) as info:
        stockade.Sandbox(policy=policy).run([PROBE_PY, "-c", "pass"])
    assert info.value.errno == errno.ELOOP
    assert info.value.target == "/mnt/x"


def test_dev_grants_no_more_than_the_nodes() -> None:
    res = stockade.Sandbox(root="tmpfs", read=SYSTEM).run(
        [PROBE_PY, "-c", probe_code(
            """
            attempt("mknod_dev", lambda: os.mknod("/dev/sda", 0o600 | 0o060000, os.makedev(8, 0)))
            attempt("symlink_dev", lambda: os.symlink("/etc/passwd", "/dev/evil"))
            attempt("unlink_null", lambda: os.unlink("/dev/null"))
            attempt("write_tty_dir", lambda: open("/dev/shm/../x", "w"))
            """
        )],
        capture=True,
        timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    v = verdicts(res.stdout)
    for name in ("mknod_dev", "symlink_dev", "unlink_null", "write_tty_dir"):
        assert v[name]["errno"] == errno.EACCES, name


def test_pathname_socket_outside_the_binds_is_out_of_reach(workdir: Path) -> None:
    """What Landlock cannot stop (connect() to a pathname UNIX socket, see
    test_signals.py), a private root does: the socket has no path inside."""
    import socket

    allowed = workdir / "allowed"
    allowed.mkdir()
    allowed.chmod(0o777)
    outside = workdir / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(outside))
        server.listen()
        res, v = run_probe(
            f"""
            A, OUTSIDE = {str(allowed)!r}, {str(outside)!r}
            own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            own.bind(A + "/inside.sock")
            own.listen()
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            attempt("control", lambda: c.connect(A + "/inside.sock"))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            attempt("connect", lambda: s.connect(OUTSIDE))
            """,
            root="tmpfs",
            write=[str(allowed)],
        )
        assert res.returncode == 0, res.stderr
        assert v["control"]["errno"] == 0
        assert v["connect"]["errno"] == errno.ENOENT
    finally:
        server.close()
