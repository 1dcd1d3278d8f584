"""Filesystem access from inside real sandboxes, with the errno of each attempt.

Every probe also makes a control attempt that the policy allows, so a
sandbox that failed before exec (no verdicts at all) or that denies
everything cannot pass a test that expects a denial.  Where the host can
witness the outcome (a file unchanged, a directory not created) the test
checks that too.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

import stockade
from conftest import PROBE_PY, probe_code, run_probe, verdicts

CONTENT = "original content\n"


@pytest.fixture
def tree(workdir: Path) -> Path:
    """``ro/`` (a file, a subdirectory, a script, an ELF binary), ``rw/``
    (the same) and ``outside/secret``, all writable by the test's user."""
    for name in ("ro", "rw"):
        d = workdir / name
        (d / "sub").mkdir(parents=True)
        (d / "file.txt").write_text(CONTENT)
        script = d / "script.sh"
        script.write_text("#!/bin/sh\necho script-ran\n")
        script.chmod(0o755)
        shutil.copy2("/usr/bin/true", d / "true")
    (workdir / "outside").mkdir()
    (workdir / "outside" / "secret").write_text("secret\n")
    return workdir


def _exec_body(path: str) -> str:
    """A probe line that execs *path* and reports its exit status."""
    return f"""
import subprocess
attempt("exec", lambda: subprocess.run([{path!r}], capture_output=True).returncode)
"""


def test_read_outside_allowed_trees_is_eacces(tree: Path) -> None:
    res, v = run_probe(
        f"""
        attempt("read allowed", lambda: open({str(tree / "ro/file.txt")!r}).read())
        attempt("read outside", lambda: open({str(tree / "outside/secret")!r}).read())
        attempt("list outside", lambda: os.listdir({str(tree / "outside")!r}))
        attempt("list parent", lambda: os.listdir({str(tree)!r}))
        """,
        read=[tree / "ro"],
    )
    assert res.returncode == 0, res.stderr
    assert v["read allowed"] == {"name": "read allowed", "errno": 0, "value": CONTENT}
    assert v["read outside"]["errno"] == errno.EACCES
    assert v["list outside"]["errno"] == errno.EACCES
    assert v["list parent"]["errno"] == errno.EACCES


def test_modifications_in_a_read_only_tree_are_eacces(tree: Path) -> None:
    ro = tree / "ro"
    res, v = run_probe(
        f"""
        ro = {str(ro)!r}
        attempt("control read", lambda: open(ro + "/file.txt").read())
        attempt("open for write", lambda: open(ro + "/file.txt", "a").close())
        attempt("create", lambda: open(ro + "/new.txt", "x").close())
        attempt("unlink", lambda: os.unlink(ro + "/file.txt"))
        attempt("mkdir", lambda: os.mkdir(ro + "/newdir"))
        attempt("rmdir", lambda: os.rmdir(ro + "/sub"))
        attempt("rename", lambda: os.rename(ro + "/file.txt", ro + "/renamed.txt"))
        attempt("truncate", lambda: os.truncate(ro + "/file.txt", 0))
        attempt("symlink", lambda: os.symlink("/etc/passwd", ro + "/link"))
        attempt("mkfifo", lambda: os.mkfifo(ro + "/fifo"))
        """,
        read=[ro],
    )
    assert res.returncode == 0, res.stderr
    assert v["control read"]["value"] == CONTENT
    for name in ("open for write", "create", "unlink", "mkdir", "rmdir", "rename", "truncate",
                 "symlink", "mkfifo"):  # fmt: skip
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    # The host sees the tree untouched.
    assert (ro / "file.txt").read_text() == CONTENT
    assert sorted(p.name for p in ro.iterdir()) == ["file.txt", "script.sh", "sub", "true"]


def test_modifications_in_a_write_tree_all_work(tree: Path) -> None:
    rw = tree / "rw"
    res, v = run_probe(
        f"""
        rw = {str(rw)!r}
        def write():
            with open(rw + "/file.txt", "a") as f:
                f.write("more\\n")
        def create():
            with open(rw + "/new.txt", "x") as f:
                f.write("new\\n")
        attempt("append", write)
        attempt("create", create)
        attempt("mkdir", lambda: os.mkdir(rw + "/newdir"))
        attempt("rmdir", lambda: os.rmdir(rw + "/sub"))
        attempt("rename", lambda: os.rename(rw + "/new.txt", rw + "/renamed.txt"))
        attempt("rename into dir", lambda: os.rename(rw + "/renamed.txt", rw + "/newdir/r.txt"))
        attempt("truncate", lambda: os.truncate(rw + "/script.sh", 0))
        attempt("unlink", lambda: os.unlink(rw + "/true"))
        attempt("symlink", lambda: os.symlink("file.txt", rw + "/link"))
        attempt("read back", lambda: open(rw + "/link").read())
        """,
        write=[rw],
    )
    assert res.returncode == 0, res.stderr
    for name in ("append", "create", "mkdir", "rmdir", "rename", "rename into dir", "truncate",
                 "unlink", "symlink"):  # fmt: skip
        assert v[name]["errno"] == 0, (name, v[name])
    assert v["read back"]["value"] == CONTENT + "more\n"
    # Witnessed from the host.
    assert (rw / "newdir" / "r.txt").read_text() == "new\n"
    assert (rw / "script.sh").stat().st_size == 0
    assert not (rw / "true").exists()
    assert not (rw / "sub").exists()


def test_write_tree_does_not_extend_to_its_parent(tree: Path) -> None:
    res, v = run_probe(
        f"""
        attempt("control", lambda: open({str(tree / "rw/x")!r}, "x").close())
        attempt("sibling", lambda: open({str(tree / "ro/x")!r}, "x").close())
        attempt("parent", lambda: open({str(tree / "x")!r}, "x").close())
        """,
        write=[tree / "rw"],
    )
    assert res.returncode == 0, res.stderr
    assert v["control"]["errno"] == 0
    assert v["sibling"]["errno"] == errno.EACCES
    assert v["parent"]["errno"] == errno.EACCES
    assert not (tree / "x").exists()
    assert not (tree / "ro" / "x").exists()


def test_exec_from_a_read_tree_works(tree: Path) -> None:
    # SPEC section 2: --read allows reading *and executing*.
    res, v = run_probe(
        _exec_body(str(tree / "ro/script.sh"))
        + f'attempt("elf", lambda: subprocess.run([{str(tree / "ro/true")!r}]).returncode)\n',
        read=[tree / "ro"],
    )
    assert res.returncode == 0, res.stderr
    assert v["exec"] == {"name": "exec", "errno": 0, "value": 0}
    assert v["elf"] == {"name": "elf", "errno": 0, "value": 0}


def test_exec_outside_every_exec_rule_is_eacces(tree: Path) -> None:
    d = tree / "ro"
    res, v = run_probe(
        _exec_body(str(d / "true"))
        + f"""
attempt("script", lambda: subprocess.run([{str(d / "script.sh")!r}]).returncode)
attempt("control read", lambda: open({str(d / "file.txt")!r}).read())
attempt("control exec", lambda: subprocess.run(["/bin/true"]).returncode)
""",
        rules=[f"allow/read+{d}/***"],
    )
    assert res.returncode == 0, res.stderr
    assert v["control read"]["value"] == CONTENT
    assert v["control exec"] == {"name": "control exec", "errno": 0, "value": 0}
    assert v["exec"]["errno"] == errno.EACCES
    assert v["script"]["errno"] == errno.EACCES


def test_exec_only_tree_executes_but_does_not_read(tree: Path) -> None:
    """Landlock needs READ_FILE as well as EXECUTE to run a file, so an exec
    rule with no read over it is the supervisor's: the file runs, and a
    plain read of it is EACCES."""
    d = tree / "ro"
    body = (
        _exec_body(str(d / "true"))
        + f"""
attempt("read", lambda: open({str(d / "true")!r}, "rb").read(1))
"""
    )
    res, v = run_probe(body, exec=[d])
    assert res.returncode == 0, res.stderr
    assert v["exec"] == {"name": "exec", "errno": 0, "value": 0}
    assert v["read"]["errno"] == errno.EACCES
    assert any(x.category == "read" and x.target == str(d / "true") for x in res.denials)


def test_exec_rule_with_read_over_it_executes(tree: Path) -> None:
    d = tree / "ro"
    res, v = run_probe(_exec_body(str(d / "true")), read=[d], rules=[f"allow/exec+{d}/***"])
    assert res.returncode == 0, res.stderr
    assert v["exec"] == {"name": "exec", "errno": 0, "value": 0}


def test_single_file_rule_allows_that_file_only(workdir: Path) -> None:
    (workdir / "one.txt").write_text("one\n")
    (workdir / "two.txt").write_text("two\n")
    res, v = run_probe(
        f"""
        attempt("one", lambda: open({str(workdir / "one.txt")!r}).read())
        attempt("two", lambda: open({str(workdir / "two.txt")!r}).read())
        attempt("list dir", lambda: os.listdir({str(workdir)!r}))
        attempt("write one", lambda: open({str(workdir / "one.txt")!r}, "a").close())
        """,
        rules=[f"allow/read+{workdir}/one.txt"],
    )
    assert res.returncode == 0, res.stderr
    assert v["one"] == {"name": "one", "errno": 0, "value": "one\n"}
    assert v["two"]["errno"] == errno.EACCES
    assert v["list dir"]["errno"] == errno.EACCES
    assert v["write one"]["errno"] == errno.EACCES


def test_rule_on_a_directory_alone_lists_it_and_nothing_beneath(workdir: Path) -> None:
    """Landlock cannot allow a directory without what is beneath it; the
    supervisor can: listing is allowed, its files and subdirectories not."""
    d = workdir / "dir"
    (d / "inner").mkdir(parents=True)
    (d / "file.txt").write_text("content\n")
    (d / "inner" / "deep.txt").write_text("deep\n")
    res, v = run_probe(
        f"""
        attempt("list", lambda: sorted(os.listdir({str(d)!r})))
        attempt("read file", lambda: open({str(d / "file.txt")!r}).read())
        attempt("list inner", lambda: os.listdir({str(d / "inner")!r}))
        attempt("read deep", lambda: open({str(d / "inner" / "deep.txt")!r}).read())
        """,
        rules=[f"allow/read+{d}"],
    )
    assert res.returncode == 0, res.stderr
    assert v["list"] == {"name": "list", "errno": 0, "value": ["file.txt", "inner"]}
    for name in ("read file", "list inner", "read deep"):
        assert v[name]["errno"] == errno.EACCES, v[name]


def test_write_category_off_leaves_writes_unrestricted(tree: Path) -> None:
    ro = tree / "ro"
    res, v = run_probe(
        f"""
        ro = {str(ro)!r}
        def overwrite():
            with open(ro + "/file.txt", "w") as f:
                f.write("rewritten\\n")
        attempt("overwrite", overwrite)
        attempt("truncate", lambda: os.truncate(ro + "/script.sh", 0))
        attempt("write outside", lambda: open({str(tree / "outside/secret")!r}, "a").close())
        attempt("create still denied", lambda: open(ro + "/new", "x").close())
        attempt("read still denied", lambda: open({str(tree / "outside/secret")!r}).read())
        """,
        read=[ro],
        rules=["sandbox/write:off"],
    )
    assert res.returncode == 0, res.stderr
    assert v["overwrite"]["errno"] == 0
    assert v["truncate"]["errno"] == 0
    # Opening for writing alone needs no read right once write is off.
    assert v["write outside"]["errno"] == 0
    assert v["create still denied"]["errno"] == errno.EACCES
    assert v["read still denied"]["errno"] == errno.EACCES
    assert (ro / "file.txt").read_text() == "rewritten\n"
    assert not (ro / "new").exists()


def test_default_profile_private_tmp(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default profile writes the caller's current directory: make it ours.
    monkeypatch.chdir(workdir)
    body = """
    tmp = os.environ["TMPDIR"]
    attempt("tmpdir", lambda: tmp)
    attempt("tmp mode", lambda: os.stat(tmp).st_mode & 0o7777)
    attempt("tmp owner", lambda: os.stat(tmp).st_uid)
    attempt("create in TMPDIR", lambda: open(os.path.join(tmp, "f"), "x").close())
    attempt("mkdir in TMPDIR", lambda: os.mkdir(os.path.join(tmp, "d")))
    attempt("create in /tmp", lambda: open("/tmp/stockade-probe-%d" % os.getpid(), "x").close())
    attempt("create in cwd", lambda: open("cwd-file", "x").close())
    attempt("read /usr", lambda: len(os.listdir("/usr")) > 0 and 1)
    """
    # cwd given explicitly: the default is checked in test_api.
    sb = stockade.Sandbox(cwd=str(workdir))
    first = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60)
    second = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60)
    v1, v2 = verdicts(first.stdout or b""), verdicts(second.stdout or b"")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    tmp1, tmp2 = v1["tmpdir"]["value"], v2["tmpdir"]["value"]
    assert tmp1 != tmp2
    assert v1["tmp mode"]["value"] == 0o700
    assert v1["tmp owner"]["value"] == os.geteuid()
    assert v1["create in TMPDIR"]["errno"] == 0
    assert v1["mkdir in TMPDIR"]["errno"] == 0
    assert v1["create in /tmp"]["errno"] == errno.EACCES
    assert v1["create in cwd"]["errno"] == 0
    assert v2["create in cwd"]["errno"] == errno.EEXIST
    assert v1["read /usr"]["value"] == 1
    # The private tmp is removed when the run ends.
    assert not os.path.exists(tmp1)
    assert not os.path.exists(tmp2)
    assert (workdir / "cwd-file").exists()


def test_one_run_cannot_see_another_runs_private_tmp(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    sb = stockade.Sandbox()
    holder_code = "import os, sys; print(os.environ['TMPDIR'], flush=True); sys.stdin.read()"
    with sb.popen(
        [PROBE_PY, "-c", holder_code], stdin=stockade.PIPE, stdout=stockade.PIPE
    ) as holder:
        assert holder.stdout is not None
        other_tmp = holder.stdout.readline().decode().strip()
        assert os.path.isdir(other_tmp)
        body = f"""
        attempt("own", lambda: open(os.path.join(os.environ["TMPDIR"], "f"), "x").close())
        attempt("other list", lambda: os.listdir({other_tmp!r}))
        attempt("other create", lambda: open({other_tmp + "/intruder"!r}, "x").close())
        """
        res = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60)
        holder.communicate(b"")
    v = verdicts(res.stdout or b"")
    assert res.returncode == 0, res.stderr
    assert v["own"]["errno"] == 0
    assert v["other list"]["errno"] == errno.EACCES
    assert v["other create"]["errno"] == errno.EACCES
    assert holder.returncode == 0
    assert not os.path.exists(other_tmp)
