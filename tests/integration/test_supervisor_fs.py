"""Path rules the kernel layers cannot hold, enforced by the supervisor
for every system call that names a path (SPEC section 4): globs, denies
inside allowed trees, ``sandbox/stat:on``; every spelling of a path is
decided on what it resolves to."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import is_root, run_probe


@pytest.fixture
def tree(workdir: Path) -> Path:
    (workdir / "pub").mkdir()
    (workdir / "pub" / "a.txt").write_text("public\n")
    (workdir / "pub" / "b.bin").write_text("binary\n")
    (workdir / "pub" / "secret.txt").write_text("secret\n")
    (workdir / "pub" / "sub").mkdir()
    (workdir / "pub" / "sub" / "c.txt").write_text("deep\n")
    (workdir / "pub" / "to-secret").symlink_to(workdir / "pub" / "secret.txt")
    (workdir / "pub" / "to-a").symlink_to("a.txt")
    return workdir


def _read_rules(d: Path) -> list[str]:
    return [f"allow/read+{d}/pub/**.txt", f"deny/read+{d}/pub/secret*"]


def test_glob_read_every_spelling(tree: Path) -> None:
    p = tree / "pub"
    res, v = run_probe(
        f"""
P = {str(p)!r}
def at(dirfd_path, name):
    d = os.open(dirfd_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=d)
        try:
            return os.read(fd, 100).decode()
        finally:
            os.close(fd)
    finally:
        os.close(d)
attempt("a", lambda: open(P + "/a.txt").read())
attempt("deep", lambda: open(P + "/sub/c.txt").read())
attempt("bin", lambda: open(P + "/b.bin").read())
attempt("secret", lambda: open(P + "/secret.txt").read())
attempt("dotdot", lambda: open(P + "/sub/../secret.txt").read())
attempt("symlink", lambda: open(P + "/to-secret").read())
attempt("symlink ok", lambda: open(P + "/to-a").read())
attempt("proc root", lambda: open("/proc/self/root" + P + "/secret.txt").read())
attempt("proc cwd", lambda: (os.chdir(P + "/sub"), open("/proc/self/cwd/../secret.txt").read())[1])
attempt("relative", lambda: open("../secret.txt").read())
attempt("relative ok", lambda: open("../a.txt").read())
attempt("dirfd", lambda: at(P + "/sub", "../secret.txt"))
attempt("dirfd ok", lambda: at(P + "/sub", "c.txt"))
fd = os.open(P + "/a.txt", os.O_RDONLY)
attempt("proc fd ok", lambda: open("/proc/self/fd/%d" % fd).read())
attempt("dev stdin", lambda: os.path.exists("/dev/stdin"))
""",
        rules=_read_rules(tree),
        read=[],
    )
    assert v["a"]["value"] == "public\n"
    assert v["deep"]["value"] == "deep\n"
    assert v["symlink ok"]["value"] == "public\n"
    assert v["relative ok"]["value"] == "public\n"
    assert v["dirfd ok"]["value"] == "deep\n"
    assert v["proc fd ok"]["value"] == "public\n"
    for name in ("bin", "secret", "dotdot", "symlink", "proc root", "proc cwd", "relative",
                 "dirfd"):  # fmt: skip
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    # Each denial names the rule that denied it, on the resolved path.
    secret = [d for d in res.denials if d.target == str(tree / "pub" / "secret.txt")]
    assert secret and all(d.rule == f"deny/read+{tree}/pub/secret*" for d in secret)
    assert all(d.category == "read" and d.errno == errno.EACCES for d in secret)
    binary = [d for d in res.denials if d.target == str(tree / "pub" / "b.bin")]
    assert binary and binary[0].rule is None


def test_proc_self_is_the_callers_not_the_supervisors(tree: Path) -> None:
    _, v = run_probe(
        """
def pid_line():
    return [x for x in open("/proc/self/status") if x.startswith("Pid:")][0][4:].strip()
attempt("status", pid_line)
attempt("other", lambda: open("/proc/%d/environ" % os.getppid()).read())
attempt("pid", lambda: os.getpid())
""",
        rules=["allow/read+/proc/**"],
    )
    assert v["status"]["value"] == str(v["pid"]["value"])
    assert v["other"]["errno"] == errno.EACCES


def test_stat_on_hides_what_it_denies(tree: Path) -> None:
    p = tree / "pub"
    res, v = run_probe(
        f"""
P = {str(p)!r}
attempt("stat ok", lambda: os.stat(P + "/a.txt").st_size)
attempt("stat secret", lambda: os.stat(P + "/secret.txt").st_size)
attempt("lstat link", lambda: os.lstat(P + "/to-secret").st_size)
attempt("stat link", lambda: os.stat(P + "/to-secret").st_size)
attempt("access", lambda: (libc.access((P + "/secret.txt").encode(), 0), ctypes.get_errno()))
attempt("access ok", lambda: os.access(P + "/a.txt", os.R_OK))
attempt("readlink", lambda: os.readlink(P + "/to-a"))
attempt("exists", lambda: os.path.exists(P + "/secret.txt"))
attempt("fstat", lambda: os.fstat(os.open(P + "/a.txt", os.O_RDONLY)).st_size)
attempt("statx", lambda: (libc.statx(-100, (P + "/secret.txt").encode(), 0, 0x7ff,
                                     ctypes.create_string_buffer(256)), ctypes.get_errno()))
""",
        rules=[
            "sandbox/stat:on",
            "allow/stat+/***",
            f"deny/stat+{tree}/pub/secret*",
            f"allow/read+{tree}/pub/***",
        ],
    )
    assert v["stat ok"]["value"] == len("public\n")
    assert v["stat secret"]["errno"] == errno.EACCES
    assert v["lstat link"]["errno"] == 0  # the link itself is not denied
    assert v["stat link"]["errno"] == errno.EACCES
    assert v["access"]["value"] == repr((-1, errno.EACCES))
    assert v["access ok"]["value"] is True
    assert v["readlink"]["value"] == "a.txt"
    assert v["exists"]["value"] is False
    assert v["fstat"]["value"] == len("public\n")
    assert v["statx"]["value"] == repr((-1, errno.EACCES))
    assert any(d.syscall in ("newfstatat", "stat", "statx") for d in res.denials)


def test_names_and_metadata_in_a_write_glob(tree: Path) -> None:
    """Writes allowed to ``*.txt`` only: creating, renaming, linking and
    changing metadata are decided on the resolved target of each."""
    p = tree / "pub"
    _, v = run_probe(
        f"""
P = {str(p)!r}
attempt("create ok", lambda: open(P + "/new.txt", "w").write("n"))
attempt("create bin", lambda: open(P + "/new.bin", "w").write("n"))
attempt("trunc ok", lambda: os.truncate(P + "/a.txt", 3))
attempt("trunc bin", lambda: os.truncate(P + "/b.bin", 0))
attempt("chmod ok", lambda: os.chmod(P + "/a.txt", 0o640))
attempt("chmod bin", lambda: os.chmod(P + "/b.bin", 0o777))
attempt("fchmod bin", lambda: os.fchmod(os.open(P + "/b.bin", os.O_RDONLY), 0o777))
attempt("utime ok", lambda: os.utime(P + "/a.txt", (1, 1)))
attempt("utime bin", lambda: os.utime(P + "/b.bin", (1, 1)))
attempt("mkdir ok", lambda: os.mkdir(P + "/d.txt"))
attempt("mkdir bin", lambda: os.mkdir(P + "/d.bin"))
attempt("rename ok", lambda: os.rename(P + "/new.txt", P + "/renamed.txt"))
attempt("rename to bin", lambda: os.rename(P + "/renamed.txt", P + "/renamed.bin"))
attempt("symlink ok", lambda: os.symlink("/etc/passwd", P + "/l.txt"))
attempt("link bin", lambda: os.link(P + "/b.bin", P + "/b-link.txt"))
attempt("unlink bin", lambda: os.unlink(P + "/b.bin"))
attempt("unlink ok", lambda: os.unlink(P + "/renamed.txt"))
attempt("rmdir ok", lambda: os.rmdir(P + "/d.txt"))
attempt("umask", lambda: (os.umask(0o077), open(P + "/m.txt", "w").close(),
                          oct(os.stat(P + "/m.txt").st_mode & 0o777))[2])
""",
        read=[tree],
        rules=[
            f"allow/write+{tree}/pub/*.txt",
            f"allow/create+{tree}/pub/*.txt",
            f"allow/delete+{tree}/pub/*.txt",
        ],
    )
    for ok in ("create ok", "trunc ok", "utime ok", "mkdir ok", "rename ok", "symlink ok",
               "unlink ok", "rmdir ok"):  # fmt: skip
        assert v[ok]["errno"] == 0, (ok, v[ok])
    for bad in ("create bin", "trunc bin", "utime bin", "mkdir bin", "rename to bin",
                "unlink bin"):  # fmt: skip
        assert v[bad]["errno"] == errno.EACCES, (bad, v[bad])
    if is_root():
        # The main filter refuses mode changes to root sandboxes first.
        assert v["chmod ok"]["errno"] == v["chmod bin"]["errno"] == errno.EPERM
    else:
        assert v["chmod ok"]["errno"] == 0
        assert v["chmod bin"]["errno"] == v["fchmod bin"]["errno"] == errno.EACCES
        assert oct((p / "a.txt").stat().st_mode & 0o777) == oct(0o640)
    # A new name must not grant what the old one did not: b.bin is not
    # writable, a *.txt name would be (EXDEV, as Landlock answers a link).
    assert v["link bin"]["errno"] == errno.EXDEV
    assert (p / "a.txt").read_text() == "pub"
    assert (p / "a.txt").stat().st_mtime == 1
    assert (p / "b.bin").read_text() == "binary\n"
    assert (p / "b.bin").stat().st_mode & 0o777 != 0o777
    assert not (p / "new.bin").exists() and not (p / "d.bin").exists()
    assert os.readlink(p / "l.txt") == "/etc/passwd"
    assert v["umask"]["value"] == oct(0o600)
    assert os.stat(p / "m.txt").st_uid == os.getuid()


def test_exec_glob(tree: Path) -> None:
    """An exec rule with a glob: only matching files run."""
    bindir = tree / "bin"
    bindir.mkdir()
    for name in ("ok-true", "no-true"):
        (bindir / name).symlink_to("/bin/true")
    import shutil

    shutil.copy("/bin/true", bindir / "ok-copy")
    shutil.copy("/bin/true", bindir / "no-copy")
    res, v = run_probe(
        f"""
import subprocess
B = {str(bindir)!r}
attempt("ok", lambda: subprocess.run([B + "/ok-copy"]).returncode)
attempt("no", lambda: subprocess.run([B + "/no-copy"]).returncode)
""",
        rules=[f"allow/read+{bindir}/***", f"allow/exec+{bindir}/ok-*"],
    )
    assert v["ok"]["value"] == 0
    assert v["no"]["errno"] == errno.EACCES
    assert any(d.category == "exec" and d.target == str(bindir / "no-copy") for d in res.denials)


def test_stat_on_covers_the_rest_of_the_stat_family(tree: Path) -> None:
    """statfs, xattrs, inotify, chdir, readlink of magic links: each is
    decided on the path it names, and works where allowed."""
    p = tree / "pub"
    os.setxattr(p / "a.txt", "user.k", b"v")
    res, v = run_probe(
        f"""
P = {str(p)!r}
import ctypes
attempt("statvfs ok", lambda: os.statvfs(P).f_bsize > 0)
attempt("statvfs secret", lambda: os.statvfs(P + "/secret.txt"))
attempt("getxattr ok", lambda: os.getxattr(P + "/a.txt", "user.k").decode())
attempt("listxattr ok", lambda: os.listxattr(P + "/a.txt"))
attempt("getxattr secret", lambda: os.getxattr(P + "/secret.txt", "user.k"))
ino = libc.inotify_init1(0)
attempt("inotify ok", lambda: libc.inotify_add_watch(ino, P.encode(), 0x100) > 0)
attempt("inotify secret", lambda: (libc.inotify_add_watch(ino, (P + "/secret.txt").encode(),
                                                          0x100), ctypes.get_errno()))
attempt("exe", lambda: os.readlink("/proc/self/exe"))
attempt("chdir secret", lambda: os.chdir(P + "/secret.txt"))
attempt("chdir ok", lambda: (os.chdir(P + "/sub"), os.getcwd())[1])
""",
        rules=["sandbox/stat:on", "allow/stat+/***", f"deny/stat+{tree}/pub/secret*",
               f"allow/read+{tree}/pub/***"],
    )  # fmt: skip
    assert v["statvfs ok"]["value"] is True
    assert v["statvfs secret"]["errno"] == errno.EACCES
    assert v["getxattr ok"]["value"] == "v"
    assert v["listxattr ok"]["value"] == ["user.k"]
    assert v["getxattr secret"]["errno"] == errno.EACCES
    assert v["inotify ok"]["value"] is True
    assert v["inotify secret"]["value"] == repr((-1, errno.EACCES))
    assert v["exe"]["value"] == os.path.realpath("/usr/bin/python3")
    assert v["chdir secret"]["errno"] == errno.EACCES
    assert v["chdir ok"]["value"] == str(p / "sub")
    assert {d.syscall for d in res.denials} >= {"statfs", "getxattr", "inotify_add_watch", "chdir"}
