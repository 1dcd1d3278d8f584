"""The compiled receiver (supervisor/_fastpath.c, supervisor/fastpath.py).

It answers, without Python, a read-only open in a directory whose every
child the rules allow, once Python has decided a first open there.  What
it answers must be what Python would have answered, and everything it
cannot answer exactly (a symlink, ``..``, a FIFO, a directory with a rule
inside, another call) must reach Python untouched: each test warms the
directories first, so that the compiled path is the one being tried, and
counts its answers, so that a test cannot pass through Python instead.

The same tests run with ``STOCKADE_FASTPATH=0`` (scripts/test), where the
counts are not checked and every answer must be the same."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_probe
from stockade.supervisor import engine, fastpath


@pytest.fixture
def compiled() -> Callable[[], int]:
    """How many calls the compiled receiver has answered since the test
    began."""
    before = engine.get().compiled_answers
    return lambda: engine.get().compiled_answers - before


@pytest.fixture
def tree(workdir: Path) -> Path:
    """``ok/`` and ``ok/inner/`` (every child readable), ``secret.txt``
    (denied by a glob in the top directory), ``keys/`` with ``*.key``
    denied inside."""
    (workdir / "secret.txt").write_text("SECRET\n")
    ok = workdir / "ok"
    ok.mkdir()
    for i in range(50):
        (ok / f"f{i}").write_text(f"public {i}\n")
    (ok / "inner").mkdir()
    (ok / "inner" / "a.txt").write_text("inner\n")
    keys = workdir / "keys"
    keys.mkdir()
    (keys / "a.txt").write_text("not a key\n")
    (keys / "a.key").write_text("KEY\n")
    (ok / "to-secret").symlink_to(workdir / "secret.txt")
    (ok / "to-f0").symlink_to("f0")
    (ok / "to-top").symlink_to(workdir)
    os.mkfifo(ok / "fifo")
    (ok / "fifo").chmod(0o666)
    return workdir


def _rules(d: Path) -> list[str]:
    return [
        f"allow/read+{d}",
        f"allow/read+{d}/**",
        f"deny/read+{d}/secret*",
        f"deny/read+{d}/keys/*.key",
    ]


WARM = """
P = {d!r}
def read(path):
    with open(path) as f:
        return f.read()
def at(d, name, flags=os.O_RDONLY):
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(name, flags, dir_fd=dfd)
        try:
            return os.read(fd, 100).decode()
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
# Python decides the first open in each directory, and teaches the rest.
for i in range(50):
    read(P + "/ok/f%d" % i)
read(P + "/ok/inner/a.txt")
read(P + "/keys/a.txt")
"""


def test_opens_in_an_allowed_directory_are_answered_compiled(
    tree: Path, compiled: Callable[[], int]
) -> None:
    res, v = run_probe(
        WARM.format(d=str(tree))
        + """
attempt("all", lambda: [read(P + "/ok/f%d" % i) for i in range(50)])
attempt("dirfd", lambda: at(P + "/ok", "f7"))
attempt("cwd", lambda: (os.chdir(P + "/ok"), read("f8"))[1])
attempt("listdir", lambda: len(os.listdir(P + "/ok")))
attempt("missing", lambda: read(P + "/ok/nothing"))
attempt("not a dir", lambda: os.open(P + "/ok/f1", os.O_RDONLY | os.O_DIRECTORY))
attempt("dir as file", lambda: os.read(os.open(P + "/ok/inner", os.O_RDONLY), 1))
""",
        rules=_rules(tree),
    )
    assert res.returncode == 0, res.stderr
    assert v["all"]["value"] == [f"public {i}\n" for i in range(50)]
    assert v["dirfd"]["value"] == "public 7\n"
    assert v["cwd"]["value"] == "public 8\n"
    assert v["listdir"]["value"] == 55
    assert v["missing"]["errno"] == errno.ENOENT
    assert v["not a dir"]["errno"] == errno.ENOTDIR
    assert v["dir as file"]["errno"] == errno.EISDIR
    assert [d for d in res.denials if d.target.startswith(str(tree))] == []
    if fastpath.ENABLED:
        # The second pass over ok/, at least, and the probe's own imports.
        assert compiled() >= 50


def test_no_spelling_escapes_through_a_warm_directory(
    tree: Path, compiled: Callable[[], int]
) -> None:
    """With ok/ and ok/inner/ warm, every way of naming a denied file from
    there is refused, and every way of naming an allowed one works."""
    res, v = run_probe(
        WARM.format(d=str(tree))
        + """
attempt("link to secret", lambda: read(P + "/ok/to-secret"))
attempt("link to f0", lambda: read(P + "/ok/to-f0"))
attempt("through a dir link", lambda: read(P + "/ok/to-top/secret.txt"))
attempt("nofollow", lambda: os.open(P + "/ok/to-f0", os.O_RDONLY | os.O_NOFOLLOW))
attempt("dotdot", lambda: read(P + "/ok/../secret.txt"))
attempt("dot", lambda: read(P + "/ok/./f1"))
attempt("double slash", lambda: read(P + "/ok//f2"))
attempt("dirfd dotdot", lambda: at(P + "/ok", "../secret.txt"))
attempt("dirfd deep dotdot", lambda: at(P + "/ok/inner", "../../secret.txt"))
attempt("key", lambda: read(P + "/keys/a.key"))
attempt("key via dirfd", lambda: at(P + "/keys", "a.key"))
attempt("key via inner", lambda: at(P + "/ok/inner", "../../keys/a.key"))
attempt("not a key", lambda: at(P + "/keys", "a.txt"))
attempt("inner txt", lambda: at(P + "/ok/inner", "a.txt"))
def swapped():
    # Another directory put under the warm dirfd's number.
    dfd = os.open(P + "/ok", os.O_RDONLY | os.O_DIRECTORY)
    top = os.open(P, os.O_RDONLY | os.O_DIRECTORY)
    os.dup2(top, dfd)
    os.close(top)
    try:
        return os.read(os.open("secret.txt", os.O_RDONLY, dir_fd=dfd), 100).decode()
    finally:
        os.close(dfd)
attempt("dirfd swapped", swapped)
attempt("write", lambda: os.open(P + "/ok/f3", os.O_WRONLY))
attempt("append", lambda: os.open(P + "/ok/f3", os.O_RDONLY | os.O_APPEND))
attempt("create", lambda: os.open(P + "/ok/new", os.O_RDONLY | os.O_CREAT, 0o600))
def fifo():
    fd = os.open(P + "/ok/fifo", os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)
    return "opened"
attempt("fifo", fifo)
def openat2():
    # openat2 passes its flags in memory: never the compiled path's.
    how = (ctypes.c_uint64 * 3)(0, 0, 0)
    path = ctypes.create_string_buffer((P + "/ok/f4").encode())
    fd = sys_call(437, -100, ctypes.addressof(path), ctypes.addressof(how), 24)
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)
attempt("openat2", openat2)
""",
        rules=_rules(tree),
    )
    assert res.returncode == 0, res.stderr
    for name in ("link to secret", "through a dir link", "dotdot", "dirfd dotdot",
                 "dirfd deep dotdot", "key", "key via dirfd", "key via inner",
                 "dirfd swapped"):  # fmt: skip
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    assert v["link to f0"]["value"] == "public 0\n"
    assert v["nofollow"]["errno"] == errno.ELOOP
    assert v["dot"]["value"] == "public 1\n"
    assert v["double slash"]["value"] == "public 2\n"
    assert v["inner txt"]["value"] == "inner\n"
    assert v["not a key"]["value"] == "not a key\n"
    # No write rule: refused (by Landlock, or by the supervisor).
    for name in ("write", "create"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    # A read-only open with O_APPEND writes nothing: allowed, by Python.
    assert v["append"]["errno"] == 0, v["append"]
    assert v["fifo"]["value"] == "opened"
    assert v["openat2"]["value"] == "public 4\n", v["openat2"]
    denied = {
        d.target for d in res.denials if d.category == "read" and d.target.startswith(str(tree))
    }
    assert denied == {str(tree / "secret.txt"), str(tree / "keys/a.key")}, res.denials
    if fastpath.ENABLED:
        assert compiled() >= 50


def test_a_callback_sees_every_open(tree: Path, compiled: Callable[[], int]) -> None:
    """With on_event set, allowed opens make events: none is answered
    compiled (it would make none)."""
    import stockade

    seen: list[str] = []

    def on_event(event: stockade.Event) -> None:
        if event.category == "read":
            seen.append(event.target)

    res, _v = run_probe(
        WARM.format(d=str(tree)) + 'attempt("again", lambda: read(P + "/ok/f9"))\n',
        rules=_rules(tree),
        on_event=on_event,
    )
    assert res.returncode == 0, res.stderr
    assert seen.count(str(tree / "ok/f9")) == 2
    assert compiled() == 0


def test_the_compiled_receiver_is_built_where_it_can_be() -> None:
    """Installed with a C compiler and Python's headers (as here), the
    compiled receiver must exist: a silent fallback would hide a broken
    build.  (``STOCKADE_FASTPATH=0`` only turns it off.)"""
    import shutil
    import sysconfig

    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("cc") is None or not headers.exists():
        pytest.skip("no C compiler or Python headers: the fallback is expected")
    assert fastpath._fastpath is not None
    wanted = os.environ.get("STOCKADE_FASTPATH", "1") != "0"
    assert fastpath.ENABLED is wanted
