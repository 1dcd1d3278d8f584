"""stockade learn on a real program: learn, then run under the learned policy.

The program is a Python script that imports modules, reads a config file
and writes an output file.  ``stockade learn`` runs it observed, writes a
TOML policy, and ``stockade run -C`` then runs the same command with no
denial; the policy is tested not to be "allow everything" by a second
program that reaches for what the first never touched.
"""

from __future__ import annotations

import errno
import json
import tomllib
from pathlib import Path

import pytest

from conftest import PROBE_PY, probe_code, stockade_cli, verdicts

JOB = """\
import configparser, decimal, fractions, json, os, statistics, sys
here = os.path.dirname(os.path.abspath(__file__))
cfg = configparser.ConfigParser()
cfg.read(os.path.join(here, "job.ini"))
values = [decimal.Decimal(v) for v in cfg["job"]["values"].split(",")]
with open(cfg["job"]["output"], "w") as f:
    json.dump({"name": cfg["job"]["name"], "mean": str(statistics.mean(values)),
               "ratio": str(fractions.Fraction(1, 3))}, f)
print("done")
"""


@pytest.fixture
def project(workdir: Path) -> Path:
    proj = workdir / "proj"
    (proj / "out").mkdir(parents=True)
    (proj / "job.py").write_text(JOB)
    out = proj / "out" / "result.json"
    (proj / "job.ini").write_text(f"[job]\nname = demo\nvalues = 1,2,6\noutput = {out}\n")
    secret = workdir / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("hidden\n")
    for p in (workdir, proj, proj / "out", secret):
        p.chmod(0o777)
    for p in (proj / "job.py", proj / "job.ini", secret / "key.txt"):
        p.chmod(0o644)
    return proj


def events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_learned_policy_runs_the_same_command_with_no_denial(project: Path) -> None:
    learned = project.parent / "learned.toml"
    command = [PROBE_PY, str(project / "job.py")]
    proc = stockade_cli("learn", "-o", str(learned), "--", *command, cwd=project, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert "rules from" in proc.stderr
    result = project / "out" / "result.json"
    assert json.loads(result.read_text())["mean"] == "3"
    result.unlink()

    doc = tomllib.loads(learned.read_text())
    rules = doc["rules"]
    assert doc["profile"] == "none" and doc["private_tmp"] is True
    assert not any(r.endswith("+/***") for r in rules), rules  # not "allow everything"
    assert f"allow/write+{result}" in rules  # the output file, narrowly
    assert len(rules) < 40, rules

    log = project.parent / "events.jsonl"
    run = stockade_cli(
        "run", "-C", str(learned), "--log", str(log), "--", *command, cwd=project, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "done\n"
    assert json.loads(result.read_text()) == {"name": "demo", "mean": "3", "ratio": "1/3"}
    denials = [e for e in events(log) if e.get("action") == "deny"]
    assert denials == []

    # What the job never touched stays closed.
    secret = project.parent / "secret" / "key.txt"
    body = f"""
    attempt("secret", lambda: open({str(secret)!r}).read())
    attempt("passwd", lambda: open("/etc/passwd").read())
    attempt("overwrite job", lambda: open({str(project / "job.py")!r}, "a").close())
    attempt("new file", lambda: open({str(project / "new.txt")!r}, "w").close())
    """
    probe = stockade_cli(
        "run", "-C", str(learned), "--", PROBE_PY, "-c", probe_code(body), cwd=project
    )
    assert probe.returncode == 0, probe.stderr
    v = verdicts(probe.stdout)
    for name in ("secret", "passwd", "overwrite job", "new file"):
        assert v[name]["errno"] == errno.EACCES, (name, v)
    assert not (project / "new.txt").exists()


def test_learn_needs_a_command(workdir: Path) -> None:
    proc = stockade_cli("learn", cwd=workdir)
    assert proc.returncode == 125
    assert proc.stderr.count("\n") == 1 and "expected a command" in proc.stderr


def test_learn_passes_the_exit_status_through(workdir: Path) -> None:
    learned = workdir / "learned.toml"
    proc = stockade_cli("learn", "-o", str(learned), "--", PROBE_PY, "-c", "raise SystemExit(7)")
    assert proc.returncode == 7, proc.stderr
    assert tomllib.loads(learned.read_text())["profile"] == "none"


def test_learn_of_a_missing_command_is_127(workdir: Path) -> None:
    proc = stockade_cli("learn", "--", str(workdir / "nope"), cwd=workdir)
    assert proc.returncode == 127, proc.stderr
