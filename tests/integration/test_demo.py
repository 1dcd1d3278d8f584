"""The README's demo (scripts/demo) as a test: the same untrusted program,
the same policy, every attempt it makes refused or allowed as the demo
says, so the main job a new user runs cannot rot unnoticed."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from conftest import PROBE_PY, SYSTEM, stockade_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "untrusted.py"


def test_demo_policy_refuses_every_attempt(workdir: Path) -> None:
    job = workdir / "job"
    job.mkdir()
    job.chmod(0o777)
    shutil.copy(EXAMPLE, job / "untrusted.py")
    (job / "deploy.key").write_text("-----BEGIN KEY-----\n")
    secret = workdir / "secret"
    secret.write_text("api_key=not-for-untrusted-eyes\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        port = listener.getsockname()[1]
        res = stockade_cli(
            "run", *[a for d in SYSTEM for a in ("-r", d)], "-w", str(job),
            "--deny", f"{job}/*.key", "--cwd", str(job), "--clean-env", "--timeout", "30",
            "--", PROBE_PY, "untrusted.py", str(secret), str(port),
        )  # fmt: skip
    finally:
        listener.close()
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    may = lines[lines.index("what it may do:") + 1 : lines.index("what it must not do:")]
    must_not = lines[lines.index("what it must not do:") + 1 :]
    assert len(may) == 2 and all(line.lstrip().startswith("allowed") for line in may), may
    assert len(must_not) == 11, must_not
    assert all(line.lstrip().startswith("DENIED") for line in must_not), must_not
    assert (job / "deploy.key").exists()
    assert not (job / "key.txt").exists()
