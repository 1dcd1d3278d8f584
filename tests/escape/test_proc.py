"""/proc is not a way around the filesystem policy (SPEC section 8).

The sandbox may read all of /proc here, the most a policy can give.  Two
kernel facts keep that safe, and each is watched from inside:

- ``/proc/PID/root``, ``/proc/PID/cwd`` and ``/proc/self/fd/N`` are magic
  links: opening through them lands on the real file, and Landlock checks
  that file (EACCES), not the spelling.
- Landlock denies ptrace-mode access to any process outside the sandbox's
  domain, so the magic links, ``environ``, ``mem`` and ``fd/`` of the host
  parent answer EACCES before any path is looked at.
"""

from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import pytest

from conftest import run_probe

HIDDEN = "top secret\n"


@pytest.fixture
def layout(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """workdir/secret.txt (outside), workdir/allowed/ok.txt (granted); the
    test process (the sandbox's parent) sits in workdir."""
    (workdir / "secret.txt").write_text(HIDDEN)
    (workdir / "allowed").mkdir()
    (workdir / "allowed" / "ok.txt").write_text("ok\n")
    monkeypatch.chdir(workdir)
    return workdir


def host_parent_of(pid: int) -> int:
    """The parent of *pid*, read on the host."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def probe(layout: Path, body: str, spawner: str = "server") -> dict[str, dict[str, object]]:
    """Run *body* with ``D`` (workdir) and ``PPID`` (the sandbox's parent:
    the fork server, or this process with ``spawner="fork"``) defined."""
    head = f'D = {str(layout)!r}\nPPID = os.getppid()\nattempt("ppid", lambda: PPID)\n'
    res, v = run_probe(
        head + textwrap.dedent(body),
        read=["/proc", str(layout / "allowed")],
        cwd="/",
        spawner=spawner,
    )
    assert res.returncode == 0, res.stderr
    ppid = v["ppid"]["value"]
    # The target is a host process: this one, or the fork server we started.
    if spawner == "fork":
        assert ppid == os.getpid()
    else:
        assert isinstance(ppid, int)
        assert host_parent_of(ppid) == os.getpid()
    return v


def test_root_magic_links(layout: Path) -> None:
    v = probe(
        layout,
        """
        attempt("control", lambda: open("/proc/self/root" + D + "/allowed/ok.txt").read())
        attempt("self_root", lambda: open("/proc/self/root" + D + "/secret.txt").read())
        attempt("thread_root", lambda: open("/proc/thread-self/root" + D + "/secret.txt").read())
        attempt("init_root", lambda: open("/proc/1/root" + D + "/secret.txt").read())
        attempt("init_root_list", lambda: os.listdir("/proc/1/root/"))
        attempt("parent_root", lambda: open(f"/proc/{PPID}/root" + D + "/secret.txt").read())
        """,
    )
    assert v["control"]["errno"] == 0
    assert v["control"]["value"] == "ok\n"
    for name in ("self_root", "thread_root", "init_root", "init_root_list", "parent_root"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])


@pytest.mark.parametrize("spawner", ["server"])
def test_parent_environ_mem_cwd_fd(layout: Path, spawner: str) -> None:
    v = probe(
        layout,
        """
        attempt("control", lambda: len(open("/proc/self/environ", "rb").read()) >= 0)
        attempt("own_status", lambda: "NoNewPrivs:\\t1" in open("/proc/self/status").read())
        attempt("environ", lambda: open(f"/proc/{PPID}/environ", "rb").read())
        attempt("mem", lambda: os.open(f"/proc/{PPID}/mem", os.O_RDONLY))
        attempt("mem_rw", lambda: os.open(f"/proc/{PPID}/mem", os.O_RDWR))
        attempt("maps", lambda: open(f"/proc/{PPID}/maps").read())
        attempt("cwd_file", lambda: open(f"/proc/{PPID}/cwd/secret.txt").read())
        attempt("cwd_list", lambda: os.listdir(f"/proc/{PPID}/cwd"))
        attempt("cwd_link", lambda: os.readlink(f"/proc/{PPID}/cwd"))
        # Listing /proc/PID/fd needs only DAC (same uid): it shows numbers,
        # not files.  What a number leads to is ptrace-mode checked.
        attempt("fd_link", lambda: os.readlink(f"/proc/{PPID}/fd/0"))
        attempt("fd0", lambda: os.open(f"/proc/{PPID}/fd/0", os.O_RDONLY))
        attempt("init_environ", lambda: open("/proc/1/environ", "rb").read())
        """,
        spawner,
    )
    assert v["control"] == {"name": "control", "errno": 0, "value": True}
    assert v["own_status"]["value"] is True
    for name in ("environ", "mem", "mem_rw", "maps", "cwd_file", "cwd_list", "cwd_link",
                 "fd_link", "fd0", "init_environ"):  # fmt: skip
        assert v[name]["errno"] == errno.EACCES, (name, v[name])


def test_own_cwd_and_reopened_descriptors(layout: Path) -> None:
    """The sandbox's own magic links resolve to the real file too."""
    v = probe(
        layout,
        """
        os.chdir(D + "/allowed")
        attempt("control", lambda: open("/proc/self/cwd/ok.txt").read())
        attempt("cwd_up", lambda: open("/proc/self/cwd/../secret.txt").read())
        # An O_PATH descriptor is not checked by Landlock; reopening it
        # through /proc/self/fd is, against the file it names.
        fd = os.open(D + "/secret.txt", os.O_PATH)
        attempt("opath", lambda: fd)
        attempt("reopen", lambda: open(f"/proc/self/fd/{fd}").read())
        attempt("reopen_w", lambda: os.open(f"/proc/self/fd/{fd}", os.O_WRONLY))
        dfd = os.open(D, os.O_PATH | os.O_DIRECTORY)
        attempt("via_dirfd", lambda: open(f"/proc/self/fd/{dfd}/secret.txt").read())
        """,
    )
    assert v["control"]["value"] == "ok\n"
    assert v["opath"]["errno"] == 0
    for name in ("cwd_up", "reopen", "reopen_w", "via_dirfd"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
