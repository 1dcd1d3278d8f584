"""A Sandbox reuses its Landlock ruleset from run to run; a rule must never
outlive the path it was granted on.

Landlock rules name inodes.  A ruleset built for ``write=[D]`` and reused
after ``D`` was moved away (and a new ``D`` made) would still grant the old
directory, wherever it now is, and deny the new one.  Each run checks the
grants' paths again and builds a fresh ruleset when one leads elsewhere.
"""

from __future__ import annotations

import errno
from pathlib import Path

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, verdicts

PROBE = """
import sys
attempt("new", lambda: os.close(os.open(sys.argv[1] + "/f", os.O_CREAT | os.O_WRONLY)))
attempt("old", lambda: os.close(os.open(sys.argv[2] + "/f", os.O_CREAT | os.O_WRONLY)))
"""


def run(sb: stockade.Sandbox, granted: Path, moved: Path) -> dict[str, dict[str, object]]:
    res = sb.run([PROBE_PY, "-c", probe_code(PROBE), str(granted), str(moved)], capture=True)
    assert res.returncode == 0, res.stderr
    return verdicts(res.stdout or b"")


def test_a_moved_directory_loses_its_grant(workdir: Path) -> None:
    granted, moved = workdir / "d", workdir / "d.old"
    granted.mkdir()
    sb = stockade.Sandbox(read=SYSTEM, write=[str(granted)])
    v = run(sb, granted, moved)
    assert v["new"]["errno"] == 0
    assert v["old"]["errno"] == errno.ENOENT  # nothing there yet
    # Swap: the granted path now names another directory.
    granted.rename(moved)
    granted.mkdir()
    v = run(sb, granted, moved)
    assert v["new"]["errno"] == 0
    # The first run's file, now beneath a path nothing grants.
    assert v["old"]["errno"] == errno.EACCES


def test_a_path_that_appears_is_granted(workdir: Path) -> None:
    granted, other = workdir / "later", workdir / "other"
    other.mkdir()
    tree = f"{granted}/***"
    sb = stockade.Sandbox(
        read=SYSTEM, rules=[f"allow/{c}+{tree}" for c in ("read", "write", "create")]
    )
    v = run(sb, granted, other)
    assert v["new"]["errno"] == errno.ENOENT  # not there yet: no rule for it
    granted.mkdir()
    v = run(sb, granted, other)
    assert v["new"]["errno"] == 0
    assert v["old"]["errno"] == errno.EACCES
