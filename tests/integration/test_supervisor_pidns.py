"""The supervisor and the pid namespace together: the command is the init's
child (pid 2 inside), and it is the one that installs the notify filter and
hands the listener over, so supervised rules hold there exactly as without
a pid namespace."""

from __future__ import annotations

import errno
from pathlib import Path

from conftest import run_probe


def test_deny_glob_is_enforced_inside_a_pid_namespace(workdir: Path) -> None:
    (workdir / "a.key").write_text("secret")
    (workdir / "a.txt").write_text("public")
    body = f"""
attempt("pid", lambda: os.getpid())
attempt("txt", lambda: open({str(workdir / "a.txt")!r}).read())
attempt("key", lambda: open({str(workdir / "a.key")!r}).read())
attempt("rename", lambda: os.rename({str(workdir / "a.key")!r}, {str(workdir / "b.txt")!r}))
"""
    res, v = run_probe(
        body, write=[workdir], deny=[f"{workdir}/*.key"], unshare=["pid"], timeout=60
    )
    assert v["pid"]["value"] == 2  # the init is pid 1
    assert v["txt"]["value"] == "public"
    assert v["key"]["errno"] == errno.EACCES
    assert v["rename"]["errno"] in (errno.EACCES, errno.EXDEV)  # renaming it away would unmask it
    assert (workdir / "a.key").exists()
    key = str(workdir / "a.key")
    assert any(d.target == key and d.rule and "*.key" in d.rule for d in res.denials), res.denials
