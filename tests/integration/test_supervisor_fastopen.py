"""The open fast path (supervisor/fs.py, ``q_open``): the receiving thread
answers a read-only open of a file or a directory itself.  What it
answers must be what a worker would have answered (content, errno,
denial and its rule, the caller's file status flags), and what it cannot
answer without waiting (a FIFO) must go to a worker, stalling nobody.

The fast path's own answers are counted by wrapping it (the wrapper calls
the real one), so that a test cannot pass through the worker instead."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, verdicts
from stockade.kernel import syscalls
from stockade.supervisor import fs, session


@pytest.fixture
def quick_answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """One entry per open the fast path answered: the number of denials
    it recorded answering it (0 or 1)."""
    answered: list[int] = []
    nr = syscalls.nr("openat")

    def counting(s: Any, w: Any, n: Any) -> bool:
        before = len(s.denials)
        done = fs.q_open(s, w, n)
        if done:
            answered.append(len(s.denials) - before)
        return done

    monkeypatch.setitem(session.QUICK, nr, counting)
    yield answered


def _rules(d: Path) -> list[str]:
    # Globs and a deny inside: only the supervisor can hold them.
    return [f"allow/read+{d}/**", f"allow/read+{d}", f"deny/read+{d}/secret*"]


def test_answers_match_the_brokers(workdir: Path, quick_answers: list[int]) -> None:
    (workdir / "a.txt").write_text("public\n")
    (workdir / "secret.txt").write_text("secret\n")
    (workdir / "sub").mkdir()
    (workdir / "sub" / "c.txt").write_text("deep\n")
    res, v = run_probe(
        f"""
import fcntl
P = {str(workdir)!r}
def flags(path, extra=0):
    fd = os.open(path, os.O_RDONLY | extra)
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_NONBLOCK | os.O_ACCMODE)
    finally:
        os.close(fd)
def at(d, name, extra=0):
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(name, os.O_RDONLY | extra, dir_fd=dfd)
        try:
            return os.read(fd, 100).decode() if not extra else sorted(os.listdir(fd))
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
attempt("read", lambda: open(P + "/a.txt").read())
attempt("deep", lambda: open(P + "/sub/c.txt").read())
attempt("secret", lambda: open(P + "/secret.txt").read())
attempt("secret dotdot", lambda: open(P + "/sub/../secret.txt").read())
attempt("secret dirfd", lambda: at(P + "/sub", "../secret.txt"))
attempt("dirfd dotdot", lambda: at(P + "/sub", "../a.txt"))
attempt("dirfd dot", lambda: at(P + "/sub", ".", os.O_DIRECTORY))
attempt("missing", lambda: open(P + "/nothing").read())
attempt("not a dir", lambda: os.open(P + "/a.txt", os.O_RDONLY | os.O_DIRECTORY))
attempt("file flags", lambda: flags(P + "/a.txt"))
attempt("nonblock flags", lambda: flags(P + "/a.txt", os.O_NONBLOCK))
attempt("dir flags", lambda: flags(P + "/sub"))
attempt("listdir", lambda: sorted(os.listdir(P)))
""",
        rules=_rules(workdir),
    )
    assert res.returncode == 0, res.stderr
    assert v["read"]["value"] == "public\n"
    assert v["deep"]["value"] == "deep\n"
    assert v["dirfd dotdot"]["value"] == "public\n"
    assert v["dirfd dot"]["value"] == ["c.txt"]
    for name in ("secret", "secret dotdot", "secret dirfd"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    assert v["missing"]["errno"] == errno.ENOENT
    assert v["not a dir"]["errno"] == errno.ENOTDIR
    # Our non-blocking open does not leak into the caller's descriptor.
    assert v["file flags"]["value"] == os.O_RDONLY
    assert v["nonblock flags"]["value"] == os.O_NONBLOCK
    assert v["dir flags"]["value"] == os.O_RDONLY
    assert v["listdir"]["value"] == ["a.txt", "secret.txt", "sub"]
    # Each denial names its rule and the path as the sandbox sees it.
    secret = [d for d in res.denials if d.target == str(workdir / "secret.txt")]
    assert len(secret) == 3
    assert all(d.rule == f"deny/read+{workdir}/secret*" for d in secret)
    assert all(d.category == "read" and d.errno == errno.EACCES for d in secret)
    # The fast path answered them, and the probe's other opens.
    assert sum(quick_answers) == len(res.denials), res.denials
    assert len(quick_answers) >= 12


def test_symlinks_are_decided_on_what_they_lead_to(workdir: Path,
                                                   quick_answers: list[int]) -> None:  # fmt: skip
    """A path with a symlink is looked up following it (``O_PATH``, opening
    nothing), decided on the path of what it found, and that object
    reopened: a symlink to a denied file is denied on the file's path and
    rule; one to an allowed file elsewhere is read."""
    (workdir / "a.txt").write_text("public\n")
    (workdir / "secret.txt").write_text("secret\n")
    (workdir / "sub").mkdir()
    (workdir / "sub" / "c.txt").write_text("deep\n")
    (workdir / "to-a").symlink_to("a.txt")
    (workdir / "to-secret").symlink_to(workdir / "secret.txt")
    (workdir / "to-sub").symlink_to("sub")
    (workdir / "to-hostname").symlink_to("/etc/hostname")
    (workdir / "to-nothing").symlink_to("nothing")
    (workdir / "to-status").symlink_to("/proc/self/status")
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    (workdir / "to-fifo").symlink_to("fifo")
    res, v = run_probe(
        f"""
P = {str(workdir)!r}
def fifo_nonblock():
    fd = os.open(P + "/to-fifo", os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)
    return "opened"
attempt("to-a", lambda: open(P + "/to-a").read())
attempt("through a dir link", lambda: open(P + "/to-sub/c.txt").read())
attempt("dir link", lambda: sorted(os.listdir(P + "/to-sub")))
attempt("to-secret", lambda: open(P + "/to-secret").read())
attempt("through a link to secret", lambda: open(P + "/to-sub/../secret.txt").read())
attempt("to-hostname", lambda: len(open(P + "/to-hostname").read()) > 0)
attempt("to-nothing", lambda: open(P + "/to-nothing").read())
attempt("nofollow", lambda: os.open(P + "/to-a", os.O_RDONLY | os.O_NOFOLLOW))
attempt("to-status", lambda: open(P + "/to-status").read())
attempt("to-fifo", fifo_nonblock)
""",
        rules=[*_rules(workdir), "allow/read+/proc/**"],
    )
    assert res.returncode == 0, res.stderr
    assert v["to-a"]["value"] == "public\n"
    assert v["through a dir link"]["value"] == "deep\n"
    assert v["dir link"]["value"] == ["c.txt"]
    assert v["to-secret"]["errno"] == errno.EACCES
    assert v["through a link to secret"]["errno"] == errno.EACCES
    assert v["to-hostname"]["value"] is True  # /etc is read by the probe's rules
    assert v["to-nothing"]["errno"] == errno.ENOENT
    assert v["nofollow"]["errno"] == errno.ELOOP
    # Followed by our lookup, /proc/self would name the supervisor: refused
    # (by a worker), never the supervisor's own status.
    assert v["to-status"]["errno"] == errno.EACCES
    assert v["to-fifo"]["value"] == "opened"
    secret = [d for d in res.denials if d.target == str(workdir / "secret.txt")]
    assert len(secret) == 2
    assert all(d.rule == f"deny/read+{workdir}/secret*" for d in secret)
    assert sum(quick_answers) == len(res.denials), res.denials


def test_events_wanted_by_a_callback_go_to_a_worker(workdir: Path,
                                                    quick_answers: list[int]) -> None:  # fmt: skip
    """The receiver never runs user code: with a callback, a denial (and,
    since a callback sees every access, an allowed read) is decided by a
    worker, and the callback can still overrule it."""
    (workdir / "a.txt").write_text("public\n")
    (workdir / "secret.txt").write_text("secret\n")
    seen: list[str] = []

    def on_event(event: Any) -> Any:
        seen.append(event.target)
        return errno.EPERM if event.target.endswith("a.txt") else None

    sb = stockade.Sandbox(read=SYSTEM, rules=_rules(workdir), on_event=on_event)
    res = sb.run([PROBE_PY, "-c", probe_code(f"""
attempt("read", lambda: open({str(workdir / "a.txt")!r}).read())
attempt("secret", lambda: open({str(workdir / "secret.txt")!r}).read())
""")], capture=True, timeout=60)  # fmt: skip
    v = verdicts(res.stdout or b"")
    assert v["read"]["errno"] == errno.EPERM
    assert v["secret"]["errno"] == errno.EACCES
    assert str(workdir / "a.txt") in seen and str(workdir / "secret.txt") in seen
    assert quick_answers == []


def test_a_fifo_waits_in_a_worker_and_stalls_nobody(workdir: Path,
                                                    quick_answers: list[int]) -> None:  # fmt: skip
    """A sandbox blocked opening a FIFO under a routed rule holds a worker,
    never the receiver: another sandbox's opens (answered by the fast
    path) go on meanwhile.  The FIFO's writer meets the sandbox's reader
    only when that reader opens it, as without a sandbox."""
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    (workdir / "plain").write_text("plain\n")
    sb = stockade.Sandbox(read=SYSTEM, rules=_rules(workdir))
    blocked = sb.popen([PROBE_PY, "-c", probe_code(f"""
print("opening", flush=True)
attempt("fifo", lambda: open({str(fifo)!r}).read())
""")], stdout=stockade.PIPE, stderr=stockade.PIPE)  # fmt: skip
    try:
        assert blocked.stdout is not None
        assert blocked.stdout.readline() == b"opening\n"
        before = len(quick_answers)
        _, v = run_probe(f"""
n = 0
for _ in range(200):
    with open({str(workdir / "plain")!r}) as f:
        n += f.read() == "plain\\n"
attempt("plain", lambda: n)
""", rules=_rules(workdir))  # fmt: skip
        assert v["plain"]["value"] == 200
        assert len(quick_answers) - before >= 200
        assert blocked.poll() is None
        # A blocking writer gets through now: the worker's open is the reader.
        with open(fifo, "w") as f:
            f.write("through\n")
        out, err = blocked.communicate(timeout=30)
        assert verdicts(out)["fifo"]["value"] == "through\n", err
    finally:
        blocked.kill_tree()
        blocked.wait()


def test_a_waiting_writer_is_released_by_the_reader_only(workdir: Path) -> None:
    """A writer blocked opening the FIFO before the sandbox opens it is
    released by the sandbox's own open, and its data arrives: nothing
    opened the FIFO on the side (a reader that came and went would have
    let the writer's open through, and its write fail with EPIPE)."""
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    wrote: list[object] = []

    def writer() -> None:
        try:
            with open(fifo, "w") as f:
                f.write("line\n" * 1000)
            wrote.append("ok")
        except OSError as err:
            wrote.append(err.errno)

    t = threading.Thread(target=writer)
    t.start()
    try:
        res, v = run_probe(f"""
attempt("fifo", lambda: len(open({str(fifo)!r}).read()))
""", rules=_rules(workdir))  # fmt: skip
    finally:
        if t.is_alive():  # the sandbox never opened it: release the writer
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        t.join(timeout=30)
    assert res.returncode == 0, res.stderr
    assert wrote == ["ok"]
    assert v["fifo"]["value"] == 5000
