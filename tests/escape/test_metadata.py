"""The mode of files outside the allowed trees (SPEC section 8: no access
the policy does not grant).

Landlock up to ABI 7 has no right for chmod: the kernel asks only for
ownership.  A root-run sandbox owns every system file, so there the filter
refuses the chmod family while writes are restricted.  An unprivileged
sandbox owns its user's files anywhere: there the supervisor decides the
mode, owner, time and xattr calls as ``write`` on the path they name.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import is_root, run_probe

PROBE = """
attempt("chmod", lambda: os.chmod(TARGET, 0o666))
attempt("utime", lambda: os.utime(TARGET, (0, 0)))
attempt("setxattr", lambda: os.setxattr(TARGET, "user.stockade", b"1"))
attempt("chown", lambda: os.chown(TARGET, os.getuid(), os.getgid()))
attempt("read", lambda: open(TARGET).read())
"""


def _target(workdir: Path) -> Path:
    outside = workdir / "outside"
    outside.mkdir()
    target = outside / "secret"
    target.write_text("secret\n")
    target.chmod(0o600)
    return target


def _run(target: Path) -> dict[str, dict[str, object]]:
    _, v = run_probe(f"TARGET = {str(target)!r}\n" + PROBE)
    return v


@pytest.mark.skipif(not is_root(), reason="the root case: every system file is ours")
def test_root_sandbox_cannot_change_metadata_outside(workdir: Path) -> None:
    target = _target(workdir)
    before = target.stat()
    v = _run(target)
    assert v["read"]["errno"] == errno.EACCES
    assert v["chmod"]["errno"] == errno.EPERM, v["chmod"]
    assert target.stat().st_mode == before.st_mode


@pytest.mark.skipif(is_root(), reason="the unprivileged case")
def test_sandbox_cannot_change_metadata_of_its_users_files_outside(workdir: Path) -> None:
    target = _target(workdir)
    v = _run(target)
    assert v["read"]["errno"] == errno.EACCES
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)
    assert v["chmod"]["errno"] == errno.EACCES, v["chmod"]
    for name in ("utime", "setxattr", "chown"):
        assert v[name]["errno"] == errno.EACCES, (name, v[name])
    assert target.stat().st_mtime != 0
    assert os.listxattr(target) == []


@pytest.mark.skipif(not is_root(), reason="the root case")
def test_write_off_lifts_the_refusal(workdir: Path) -> None:
    """With writes unrestricted (sandbox/write:off) nothing is refused."""
    target = _target(workdir)
    _, v = run_probe(
        f"TARGET = {str(target)!r}\n" + 'attempt("chmod", lambda: os.chmod(TARGET, 0o640))',
        rules=["sandbox/write:off"],
    )
    assert v["chmod"]["errno"] == 0
    assert os.stat(target).st_mode & 0o777 == 0o640
