"""No spelling of a path reaches a file the policy does not grant (SPEC section 8).

The layout every test uses, all under the ``workdir`` fixture::

    workdir/allowed/        the only tree the sandbox may write (and read)
    workdir/allowed/ok.txt  an allowed file: the control
    workdir/secret.txt      outside every allowed tree
    workdir/secretdir/x     outside too, a directory

Landlock checks the file a path *resolves to*, at open time, so symlinks
and ``..`` change nothing; linking and renaming across the tree boundary
are refused by its REFER logic.  Every refusal is asserted with its errno,
and every probe also reads the allowed file, so a probe that died before
doing anything cannot pass.
"""

from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import pytest

from conftest import run_probe

HIDDEN = "top secret\n"

#: Probe helper: the address of a NUL-terminated copy of *text*, kept alive.
CSTR = """
_keep = []
def cstr(text):
    buf = ctypes.create_string_buffer(text.encode())
    _keep.append(buf)
    return ctypes.addressof(buf)
"""


@pytest.fixture
def tree(workdir: Path) -> Path:
    """The layout above; returns the ``allowed`` directory."""
    allowed = workdir / "allowed"
    allowed.mkdir()
    (allowed / "ok.txt").write_text("ok\n")
    (workdir / "secret.txt").write_text(HIDDEN)
    (workdir / "secretdir").mkdir()
    (workdir / "secretdir" / "x").write_text(HIDDEN)
    return allowed


def probe(tree: Path, body: str) -> dict[str, dict[str, object]]:
    """Run *body* with ``A`` (the allowed dir) and ``D`` (workdir) defined,
    allowed to write ``A`` only."""
    head = f"A = {str(tree)!r}\nD = {str(tree.parent)!r}\n" + CSTR
    res, v = run_probe(head + textwrap.dedent(body), write=[str(tree)])
    assert res.returncode == 0, res.stderr
    assert v["control"] == {"name": "control", "errno": 0, "value": "ok\n"}, v
    return v


def kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor.split("-")[0])


def test_symlink_out_of_the_tree_is_not_followed(tree: Path) -> None:
    (tree / "to_secret").symlink_to(tree.parent / "secret.txt")
    (tree / "to_secret_rel").symlink_to("../secret.txt")
    (tree / "to_secretdir").symlink_to(tree.parent / "secretdir")
    (tree / "to_ok").symlink_to("ok.txt")
    v = probe(
        tree,
        """
        attempt("control", lambda: open(A + "/ok.txt").read())
        attempt("via_link", lambda: open(A + "/to_ok").read())
        attempt("abs", lambda: open(A + "/to_secret").read())
        attempt("rel", lambda: open(A + "/to_secret_rel").read())
        attempt("dir_list", lambda: os.listdir(A + "/to_secretdir"))
        attempt("dir_file", lambda: open(A + "/to_secretdir/x").read())
        # The link itself is inside the tree: reading it is allowed and
        # tells nothing the test did not write.
        attempt("readlink", lambda: os.readlink(A + "/to_secret_rel"))
        """,
    )
    assert v["via_link"]["errno"] == 0
    assert v["via_link"]["value"] == "ok\n"
    for name in ("abs", "rel", "dir_list", "dir_file"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    assert v["readlink"]["value"] == "../secret.txt"


def test_dotdot_spellings(tree: Path) -> None:
    (tree / "sub").mkdir()
    v = probe(
        tree,
        """
        attempt("control", lambda: open(A + "/sub/../ok.txt").read())
        attempt("dotdot", lambda: open(A + "/../secret.txt").read())
        attempt("dot_dotdot", lambda: open(A + "/./../secret.txt").read())
        attempt("deep", lambda: open(A + "/sub/../../secret.txt").read())
        attempt("slashes", lambda: open(A + "//sub//..//..//secret.txt").read())
        attempt("dir", lambda: os.listdir(A + "/.."))
        os.chdir(A)
        attempt("cwd_rel", lambda: open("../secret.txt").read())
        fd = os.open(A, os.O_RDONLY | os.O_DIRECTORY)
        attempt("openat", lambda: os.read(os.open("../secret.txt", os.O_RDONLY, dir_fd=fd), 64))
        """,
    )
    for name in ("dotdot", "dot_dotdot", "deep", "slashes", "dir", "cwd_rel", "openat"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])


def test_hard_link_to_a_secret_is_refused(tree: Path) -> None:
    v = probe(
        tree,
        """
        attempt("control", lambda: open(A + "/ok.txt").read())
        attempt("link_ok", lambda: os.link(A + "/ok.txt", A + "/ok2.txt"))
        attempt("link", lambda: os.link(D + "/secret.txt", A + "/stolen"))
        attempt("read_link", lambda: open(A + "/stolen").read())
        # flink(2): an O_PATH descriptor is not checked by Landlock, but
        # linking it into the tree is (AT_EMPTY_PATH = 0x1000, linkat = 265).
        fd = os.open(D + "/secret.txt", os.O_PATH)
        attempt("opath", lambda: fd)
        attempt("flink", lambda: sys_call(265, fd, cstr(""), -100,
                                          cstr(A + "/flinked"), 0x1000))
        attempt("read_flink", lambda: open(A + "/flinked").read())
        """,
    )
    assert v["link_ok"]["errno"] == 0
    # EXDEV, not EACCES: the destination grants MAKE_REG, so the ordinary
    # check passes; what fails is Landlock's REFER check, because the
    # source directory (workdir) grants no REFER right.  Landlock answers
    # EXDEV there on purpose, so that tools fall back to copying - which
    # then needs read access to the source, and fails.
    assert v["link"]["errno"] == errno.EXDEV
    assert v["read_link"]["errno"] == errno.ENOENT
    assert v["opath"]["errno"] == 0
    # Same REFER check as link(2) on Linux 6.10+; older kernels refuse
    # AT_EMPTY_PATH without CAP_DAC_READ_SEARCH, with ENOENT.
    assert v["flink"]["errno"] == (errno.EXDEV if kernel() >= (6, 10) else errno.ENOENT)
    assert v["read_flink"]["errno"] == errno.ENOENT
    assert not (tree / "stolen").exists()
    assert not (tree / "flinked").exists()


def test_rename_across_the_tree_boundary(tree: Path) -> None:
    (tree / "movable").write_text("m\n")
    (tree / "movedir").mkdir()
    v = probe(
        tree,
        """
        attempt("control", lambda: open(A + "/ok.txt").read())
        attempt("rename_inside", lambda: os.rename(A + "/movable", A + "/moved"))
        attempt("out", lambda: os.rename(A + "/moved", D + "/escaped"))
        attempt("out_dir", lambda: os.rename(A + "/movedir", D + "/escaped_dir"))
        attempt("in", lambda: os.rename(D + "/secret.txt", A + "/stolen"))
        attempt("in_dir", lambda: os.rename(D + "/secretdir", A + "/stolen_dir"))
        # renameat2(RENAME_EXCHANGE = 2): swap an allowed file with the secret.
        attempt("exchange", lambda: sys_call(316, -100, cstr(A + "/ok.txt"),
                                             -100, cstr(D + "/secret.txt"), 2))
        attempt("read_stolen", lambda: open(A + "/stolen").read())
        """,
    )
    assert v["rename_inside"]["errno"] == 0
    # EACCES: the ordinary rights are checked before REFER, and the
    # destination (or, moving in, the source) grants no MAKE_*/REMOVE_*.
    for name in ("out", "out_dir", "in", "in_dir", "exchange"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    assert v["read_stolen"]["errno"] == errno.ENOENT
    assert (tree.parent / "secret.txt").read_text() == HIDDEN
    assert (tree / "ok.txt").read_text() == "ok\n"
    assert (tree / "moved").exists()


def test_symlink_made_inside_the_sandbox(tree: Path) -> None:
    v = probe(
        tree,
        """
        attempt("control", lambda: open(A + "/ok.txt").read())
        attempt("make", lambda: os.symlink(D + "/secret.txt", A + "/evil"))
        attempt("make_dir", lambda: os.symlink(D + "/secretdir", A + "/evildir"))
        attempt("make_rel", lambda: os.symlink("../secret.txt", A + "/evil_rel"))
        attempt("read", lambda: open(A + "/evil").read())
        attempt("read_rel", lambda: open(A + "/evil_rel").read())
        attempt("read_dir", lambda: open(A + "/evildir/x").read())
        attempt("write", lambda: open(A + "/evil", "w").write("pwned"))
        attempt("chain", lambda: os.symlink(A + "/evil", A + "/evil2"))
        attempt("read_chain", lambda: open(A + "/evil2").read())
        """,
    )
    for name in ("make", "make_dir", "make_rel", "chain"):
        assert v[name]["errno"] == 0, (name, v[name])
    for name in ("read", "read_rel", "read_dir", "write", "read_chain"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    assert (tree.parent / "secret.txt").read_text() == HIDDEN
    assert os.readlink(tree / "evil") == str(tree.parent / "secret.txt")
