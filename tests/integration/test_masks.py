"""A deny inside an allowed tree, enforced by a mount mask (DESIGN 1).

``-r TREE --deny TREE/secret``: Landlock allows the tree, and a read-only
mount of an empty mode-000 file (or directory) from a private tmpfs covers
the secret, in a mount namespace of the sandbox's own (with a user
namespace when unprivileged).  The sandbox has no capability, so the mode
refuses it: EACCES, as root too.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import PROBE_PY, SYSTEM, run_probe, stockade_cli


@pytest.fixture
def tree(workdir: Path) -> Path:
    t = workdir / "tree"
    (t / "private").mkdir(parents=True)
    (t / "private" / "key").write_text("private key\n")
    (t / "secret").write_text("secret\n")
    (t / "public").write_text("public\n")
    (t / "link").symlink_to(t / "secret")
    for p in [t, *t.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    return t


READS = """
attempt("secret", lambda: open(f"{T}/secret").read())
attempt("link", lambda: open(f"{T}/link").read())
attempt("key", lambda: open(f"{T}/private/key").read())
attempt("list_private", lambda: os.listdir(f"{T}/private"))
attempt("public", lambda: open(f"{T}/public").read())
"""


def test_masked_file_and_directory_are_refused_and_the_rest_is_readable(tree: Path) -> None:
    res, v = run_probe(
        f"T = {str(tree)!r}\n" + READS,
        read=[tree],
        deny=[tree / "secret", tree / "private"],
    )
    assert res.returncode == 0, res.stderr
    for name in ("secret", "link", "key", "list_private"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    assert v["public"] == {"name": "public", "errno": 0, "value": "public\n"}


def test_a_symlink_to_deny_is_followed_to_what_it_names(tree: Path) -> None:
    """--deny LINK masks the file the link names: no other spelling of
    the path reaches it."""
    _, v = run_probe(f"T = {str(tree)!r}\n" + READS, read=[tree], deny=[tree / "link"])
    assert v["secret"]["errno"] == errno.EACCES
    assert v["link"]["errno"] == errno.EACCES
    assert v["public"]["errno"] == 0


def test_a_mask_in_a_writable_tree_can_be_neither_written_nor_removed(tree: Path) -> None:
    _, v = run_probe(
        f"""
        T = {str(tree)!r}
        attempt("write", lambda: open(f"{{T}}/secret", "w").write("x"))
        attempt("unlink", lambda: os.unlink(f"{{T}}/secret"))
        attempt("rename", lambda: os.rename(f"{{T}}/secret", f"{{T}}/moved"))
        attempt("rmdir", lambda: os.rmdir(f"{{T}}/private"))
        attempt("umount", lambda: sys_call(166, ctypes.addressof(
            ctypes.create_string_buffer(f"{{T}}/secret".encode())), 0))
        attempt("create_beside", lambda: open(f"{{T}}/new", "w").write("ok"))
        attempt("chmod_mask", lambda: os.chmod(f"{{T}}/secret", 0o644))
        """,
        write=[tree],
        deny=[tree / "secret", tree / "private"],
    )
    # The mask is a read-only mount (so that no sandbox, not even the owner
    # of the mask file in its user namespace, can chmod it readable): a
    # write is refused as EROFS, before the mode is looked at.
    assert v["write"]["errno"] == errno.EROFS
    assert v["unlink"]["errno"] == errno.EBUSY  # a mount point
    assert v["rename"]["errno"] == errno.EBUSY
    assert v["rmdir"]["errno"] == errno.EBUSY
    assert v["umount"]["errno"] == errno.EPERM  # the filter
    assert v["create_beside"]["errno"] == 0
    # As root, the filter refuses chmod first.  Unprivileged, the mask file
    # is the sandbox's own: the supervisor decides the chmod (write on a
    # denied path) before the read-only mount would refuse it.
    assert v["chmod_mask"]["errno"] == (errno.EPERM if os.geteuid() == 0 else errno.EACCES)
    assert (tree / "secret").read_text() == "secret\n"


def test_masks_stay_inside_the_sandbox(tree: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    run_probe("pass", read=[tree], deny=[tree / "secret"])
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before
    assert (tree / "secret").read_text() == "secret\n"


def test_a_missing_path_in_a_writable_tree_is_denied_by_the_supervisor(tree: Path) -> None:
    """A mask needs something to cover: a denied path that does not exist
    yet in a writable tree is left to the supervisor, and the sandbox can
    neither create it nor anything beneath it."""
    target = tree / "not-yet"
    res, v = run_probe(
        f"""
        attempt("create", lambda: open({str(target)!r}, "x").close())
        attempt("mkdir", lambda: os.mkdir({str(target)!r}))
        attempt("symlink", lambda: os.symlink("/etc/passwd", {str(target)!r}))
        attempt("other", lambda: open({str(tree / "other")!r}, "x").close())
        """,
        write=[tree],
        deny=[target],
    )
    assert res.returncode == 0, res.stderr
    for name in ("create", "mkdir", "symlink"):
        assert v[name]["errno"] == errno.EACCES, v[name]
    assert v["other"]["errno"] == 0
    assert not target.exists() and not target.is_symlink()


def test_cli_deny_etc_shadow() -> None:
    """The example of DESIGN decision 1, as the command line runs it."""
    access = [a for p in SYSTEM for a in ("-r", p)]
    code = (
        "import os\n"
        "for p in ('/etc/shadow', '/etc/passwd'):\n"
        "    try:\n"
        "        open(p).read(); print(p, 0)\n"
        "    except OSError as e:\n"
        "        print(p, e.errno)\n"
    )
    proc = stockade_cli("run", *access, "--deny", "/etc/shadow", "--", PROBE_PY, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"/etc/shadow {errno.EACCES}", "/etc/passwd 0"]
    assert os.path.exists("/etc/shadow")
