"""--root tmpfs|DIR: a private root entered with pivot_root, seen from inside.

Under ``root = "tmpfs"`` the sandbox sees only what its rules bind in (each
-r/-w path at the same place), a minimal /dev, an empty /proc, and the
entries a policy file makes (mkdir, mkfile, mkfifo, symlink, link).  Under
``root = DIR`` it sees DIR, and its rules name paths inside DIR.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, stockade_cli, verdicts
from stockade.policy.tomlfile import loads_toml

#: What a tmpfs root holds besides the binds.
SKELETON = {"dev", "proc"}


def on_host(paths: list[str]) -> set[str]:
    return {p.strip("/").split("/")[0] for p in paths if os.path.exists(p)}


def run_policy(toml: str, body: str) -> tuple[stockade.Result, dict[str, dict[str, Any]]]:
    policy = loads_toml(toml, "test.toml")
    res = stockade.Sandbox(policy=policy).run(
        [PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60
    )
    assert res.stdout is not None
    return res, verdicts(res.stdout)


def test_ls_root_shows_only_what_was_bound() -> None:
    res, v = run_probe(
        """
        attempt("root", lambda: sorted(os.listdir("/")))
        attempt("parent", lambda: sorted(os.listdir("/..")))
        attempt("cwd", lambda: os.getcwd())
        attempt("proc", lambda: os.listdir("/proc"))
        attempt("home", lambda: os.listdir("/home"))
        attempt("make_at_root", lambda: os.mkdir("/new"))
        """,
        root="tmpfs",
    )
    assert res.returncode == 0, res.stderr
    assert set(v["root"]["value"]) == on_host(SYSTEM) | SKELETON
    assert v["parent"]["value"] == v["root"]["value"]
    assert v["cwd"]["value"] == "/"  # the host's cwd is not in the root
    assert v["proc"]["value"] == []  # empty, for a pid namespace's procfs
    assert v["home"]["errno"] == errno.ENOENT
    assert v["make_at_root"]["errno"] == errno.EROFS


def test_read_and_write_paths_are_bound_at_the_same_place(workdir: Path) -> None:
    (workdir / "in.txt").write_text("hello\n")
    workdir.chmod(0o777)
    res, v = run_probe(
        f"""
        W = {str(workdir)!r}
        attempt("read", lambda: open(W + "/in.txt").read())
        attempt("write", lambda: open(W + "/out.txt", "w").write("made"))
        attempt("cwd", lambda: os.getcwd())
        attempt("etc_write", lambda: open("/etc/stockade-test", "w"))
        """,
        root="tmpfs",
        write=[str(workdir)],
        cwd=str(workdir),
    )
    assert res.returncode == 0, res.stderr
    assert v["read"]["value"] == "hello\n"
    assert v["write"]["errno"] == 0
    assert (workdir / "out.txt").read_text() == "made"
    assert v["cwd"]["value"] == str(workdir)
    # -r /etc is a read-only bind: the mount refuses before Landlock does.
    assert v["etc_write"]["errno"] == errno.EROFS


def test_minimal_dev() -> None:
    res, v = run_probe(
        """
        def rd(path, n):
            with open(path, "rb") as f:
                return len(f.read(n))
        attempt("dev", lambda: sorted(os.listdir("/dev")))
        attempt("urandom", lambda: rd("/dev/urandom", 1))
        attempt("random", lambda: rd("/dev/random", 1))
        attempt("zero", lambda: rd("/dev/zero", 4))
        attempt("null_write", lambda: open("/dev/null", "w").write("gone"))
        attempt("null_trunc", lambda: os.close(os.open("/dev/null", os.O_WRONLY | os.O_TRUNC)))
        def full():
            with open("/dev/full", "w") as f:
                f.write("x")
        attempt("full", full)
        attempt("stdout", lambda: os.readlink("/dev/stdout"))
        attempt("fd", lambda: os.readlink("/dev/fd"))
        attempt("shm", lambda: open("/dev/shm/seg", "w").write("s"))
        attempt("mknod", lambda: os.mknod("/dev/shm/n", 0o600 | 0o020000, os.makedev(1, 3)))
        attempt("create_in_dev", lambda: open("/dev/new", "w"))
        def pty():
            m, s = os.openpty()
            os.write(s, b"hi\\n")
            return [os.ttyname(s), os.read(m, 10).decode()]
        attempt("pty", pty)
        """,
        root="tmpfs",
    )
    assert res.returncode == 0, res.stderr
    assert set(v["dev"]["value"]) >= {
        "null", "zero", "full", "random", "urandom", "shm", "fd", "stdin", "stdout", "stderr",
        "pts", "ptmx",
    }  # fmt: skip
    assert v["urandom"]["value"] == 1 and v["random"]["value"] == 1
    assert v["zero"]["value"] == 4
    assert v["null_write"]["errno"] == 0 and v["null_trunc"]["errno"] == 0
    assert v["full"]["errno"] == errno.ENOSPC
    assert v["stdout"]["value"] == "/proc/self/fd/1"
    assert v["fd"]["value"] == "/proc/self/fd"
    assert v["shm"]["errno"] == 0
    assert v["mknod"]["errno"] in (errno.EPERM, errno.EACCES)
    assert v["create_in_dev"]["errno"] == errno.EACCES
    # A private devpts instance: its own ptys, numbered from 0.
    assert v["pty"]["value"] == ["/dev/pts/0", "hi\r\n"]


def test_dev_nodes_work_for_a_shell() -> None:
    sb = stockade.Sandbox(root="tmpfs", read=SYSTEM)
    res = sb.run(
        ["/bin/sh", "-c", "head -c1 /dev/urandom | wc -c; echo gone > /dev/null; echo ok"],
        capture=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [b"1", b"ok"]


TOML_ENTRIES = """
root = "tmpfs"
read = [{read}]
mkdir = ["/work/a/b"]
mkfile = ["/etc/hostname"]
mkfifo = ["/run/pipe"]
symlink = [["usr/bin", "/sbin2"], ["/etc/hostname", "/etc/alias"]]
link = [["/etc/hostname", "/etc/hard"]]
tmpfs = ["/tmp"]
cwd = "/work"
"""


def test_toml_entries_are_made_inside_the_root() -> None:
    read = ", ".join(f'"{p}"' for p in SYSTEM if p != "/etc")
    res, v = run_policy(
        TOML_ENTRIES.format(read=read),
        """
        import stat, threading
        attempt("cwd", lambda: os.getcwd())
        attempt("work", lambda: os.listdir("/work/a"))
        attempt("file", lambda: open("/etc/hostname").read())
        attempt("file_write", lambda: open("/etc/hostname", "w"))
        attempt("hard", lambda: os.stat("/etc/hard").st_ino == os.stat("/etc/hostname").st_ino)
        attempt("nlink", lambda: os.stat("/etc/hostname").st_nlink)
        attempt("alias", lambda: os.readlink("/etc/alias"))
        attempt("sbin2", lambda: os.readlink("/sbin2"))
        attempt("via_link", lambda: os.path.exists("/sbin2/env"))
        attempt("fifo", lambda: stat.S_ISFIFO(os.stat("/run/pipe").st_mode))
        def fifo_round_trip():
            t = threading.Thread(target=lambda: open("/run/pipe", "w").write("through"))
            t.start()
            data = open("/run/pipe").read()
            t.join()
            return data
        attempt("fifo_io", fifo_round_trip)
        attempt("tmp", lambda: open("/tmp/x", "w").write("t"))
        attempt("root_list", lambda: sorted(os.listdir("/")))
        """,
    )
    assert res.returncode == 0, res.stderr
    assert v["cwd"]["value"] == "/work"
    assert v["work"]["value"] == ["b"]
    assert v["file"]["value"] == ""
    assert v["file_write"]["errno"] == errno.EROFS
    assert v["hard"]["value"] is True and v["nlink"]["value"] == 2
    assert v["alias"]["value"] == "/etc/hostname"
    assert v["sbin2"]["value"] == "usr/bin"
    assert v["via_link"]["value"] is True
    assert v["fifo"]["value"] is True
    assert v["fifo_io"]["value"] == "through"
    assert v["tmp"]["errno"] == 0
    assert set(v["root_list"]["value"]) == (
        on_host([p for p in SYSTEM if p != "/etc"])
        | SKELETON
        | {"work", "etc", "run", "sbin2", "tmp"}
    )


@pytest.mark.parametrize(
    ("toml", "key", "needle"),
    [
        ('mkdir = ["/a"]', "mkdir", 'root = "tmpfs"'),
        ('root = "tmpfs"\nmkdir = ["a"]', "mkdir", "relative"),
        ('root = "tmpfs"\nmkfile = ["/a/../b"]', "mkfile", ".."),
        ('root = "tmpfs"\nread = ["/usr"]\nmkfile = ["/usr/x"]', "mkfile", "inside /usr"),
        (
            'root = "tmpfs"\nread = ["/usr"]\nlink = [["/usr/bin/env", "/env"]]',
            "link",
            "one filesystem",
        ),
        ('root = "tmpfs"\nsymlink = ["/usr"]', "symlink", "[TARGET, PATH]"),
        ('root = "tmpfs"\nmkdir = ["/"]', "mkdir", "root itself"),
    ],
)
def test_bad_entries_are_one_line_policy_errors(toml: str, key: str, needle: str) -> None:
    with pytest.raises(stockade.PolicyError) as info:
        policy = loads_toml(toml, "bad.toml")
        stockade.Sandbox(policy=policy).run(["/bin/true"])
    text = str(info.value)
    assert "\n" not in text
    assert key in text and needle in text


def test_root_directory(workdir: Path) -> None:
    root = workdir / "root"
    for d in ("usr", "lib", "lib64", "bin", "data", "other"):
        (root / d).mkdir(parents=True)
    (root / "data" / "f").write_text("inside\n")
    (root / "other" / "g").write_text("not granted\n")
    before = sorted(p.name for p in root.iterdir())
    binds = [f"{p}:{p}:ro" for p in ("/usr", "/lib", "/lib64", "/bin") if os.path.isdir(p)]
    sb = stockade.Sandbox(root=str(root), binds=binds, rules=["allow/read+/data/***"])
    body = """
        attempt("root", lambda: sorted(os.listdir("/usr/..")))
        attempt("data", lambda: open("/data/f").read())
        attempt("other", lambda: open("/other/g").read())
        attempt("dev", lambda: os.path.exists("/dev/null"))
    """
    res = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60)
    assert res.returncode == 0, res.stderr
    v = verdicts(res.stdout)
    assert v["root"]["errno"] == errno.EACCES  # listing / is not granted under DIR
    assert v["data"]["value"] == "inside\n"
    assert v["other"]["errno"] == errno.EACCES
    assert v["dev"]["value"] is False  # DIR has no /dev: none is made in it
    assert sorted(p.name for p in root.iterdir()) == before  # nothing made in DIR


def test_root_directory_with_dev(workdir: Path) -> None:
    root = workdir / "root"
    for d in ("usr", "lib", "lib64", "bin", "dev"):
        (root / d).mkdir(parents=True)
    binds = [f"{p}:{p}:ro" for p in ("/usr", "/lib", "/lib64", "/bin") if os.path.isdir(p)]
    sb = stockade.Sandbox(root=str(root), binds=binds)
    res = sb.run(["/bin/sh", "-c", "echo x > /dev/null && head -c2 /dev/zero | wc -c"],
                 capture=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == b"2"
    assert list((root / "dev").iterdir()) == []


def test_a_failing_mount_is_named_in_one_line() -> None:
    # /usr is a read-only bind of the host's /usr: a mount point inside it
    # must exist there, and this one does not.
    sb = stockade.Sandbox(root="tmpfs", read=SYSTEM, binds=["/etc:/usr/no-such-point:ro"])
    with pytest.raises(stockade.LaunchError) as info:
        sb.run(["/bin/true"])
    text = str(info.value)
    assert "\n" not in text
    assert "/usr/no-such-point" in text and "ENOENT" in text
    assert info.value.errno == errno.ENOENT


def test_masks_apply_inside_a_tmpfs_root() -> None:
    res, v = run_probe(
        """
        attempt("shadow", lambda: open("/etc/shadow").read())
        attempt("passwd", lambda: len(open("/etc/passwd").read()) > 0)
        """,
        root="tmpfs",
        deny=["/etc/shadow"],
    )
    assert res.returncode == 0, res.stderr
    assert v["shadow"]["errno"] == errno.EACCES
    assert v["passwd"]["value"] is True


def test_masks_apply_inside_a_root_directory(workdir: Path) -> None:
    root = workdir / "root"
    for d in ("usr", "lib", "lib64", "bin", "etc"):
        (root / d).mkdir(parents=True)
    (root / "etc" / "secret").write_text("hidden\n")
    (root / "etc" / "public").write_text("shown\n")
    binds = [f"{p}:{p}:ro" for p in ("/usr", "/lib", "/lib64", "/bin") if os.path.isdir(p)]
    # -r /etc is DIR/etc here (the host's /etc only has to exist for the API).
    sb = stockade.Sandbox(root=str(root), binds=binds, read=["/etc"], deny=["/etc/secret"])
    body = """
        attempt("secret", lambda: open("/etc/secret").read())
        attempt("public", lambda: open("/etc/public").read())
    """
    res = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60)
    assert res.returncode == 0, res.stderr
    v = verdicts(res.stdout)
    assert v["secret"]["errno"] == errno.EACCES
    assert v["public"]["value"] == "shown\n"
    assert (root / "etc" / "secret").read_text() == "hidden\n"


def test_cli_root_directory_rules_name_paths_inside_it(workdir: Path) -> None:
    root = workdir / "root"
    for d in ("usr", "lib", "lib64", "bin", "data"):
        (root / d).mkdir(parents=True)
    (root / "data" / "f").write_text("inside\n")
    binds = [a for p in ("/usr", "/lib", "/lib64", "/bin") if os.path.isdir(p)
             for a in ("--bind", f"{p}:{p}:ro")]  # fmt: skip
    proc = stockade_cli("run", "--root", str(root), *binds, "-r", "/data", "--cwd", "/data",
                        "--", "/bin/sh", "-c", "cat f; pwd")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "inside\n/data\n"
    proc = stockade_cli("run", "--root", str(root), "-r", "/no-such", "--", "/bin/true")
    assert proc.returncode == 125
    assert proc.stderr.count("\n") == 1 and "/no-such" in proc.stderr


def test_cli_tmpfs_root_runs_a_shell_on_what_it_binds(workdir: Path) -> None:
    (workdir / "note").write_text("from the host\n")
    read = [a for p in SYSTEM if os.path.exists(p) for a in ("-r", p)]
    proc = stockade_cli("run", "--root", "tmpfs", *read, "-w", str(workdir), "--", "/bin/sh",
                        "-c", "ls /; cat note; echo out > made", cwd=workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = set(proc.stdout.splitlines()[:-1])
    assert listed == on_host(SYSTEM) | SKELETON | {workdir.parts[1]}
    assert proc.stdout.splitlines()[-1] == "from the host"
    assert (workdir / "made").read_text() == "out\n"


def test_default_profile_under_a_tmpfs_root(workdir: Path) -> None:
    # The profile's private temporary directory becomes a tmpfs at /tmp;
    # the host's /tmp (where workdir lives) is not there.
    res = stockade.Sandbox(root="tmpfs", profile="default").run(
        [PROBE_PY, "-c", probe_code("""
            attempt("tmpdir", lambda: os.environ.get("TMPDIR"))
            attempt("tmp", lambda: os.listdir("/tmp"))
            attempt("write", lambda: open("/tmp/x", "w").write("x"))
            attempt("host", lambda: os.listdir(W))
        """.replace("W", repr(str(workdir))))],
        capture=True,
        timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    v = verdicts(res.stdout)
    assert v["tmpdir"]["value"] == "/tmp"
    # The profile writes the current directory: bound in, inside /tmp if it is there.
    cwd = Path.cwd()
    inside_tmp = [cwd.parts[2]] if cwd.parts[1:2] == ("tmp",) and len(cwd.parts) > 2 else []
    assert v["tmp"]["value"] == inside_tmp
    assert v["write"]["errno"] == 0
    assert v["host"]["errno"] == errno.ENOENT
