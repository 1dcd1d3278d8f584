"""``stockade run`` and friends, end to end (SPEC section 2).

Every invocation is a fresh ``python -m stockade.cli.main`` process.  A
command that stockade must refuse would create a marker file if it ran,
so "nothing started" is checked on the filesystem, not taken on trust.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, stockade_cli, verdicts

#: ``-r`` for every system directory a probe needs.
READ_SYSTEM = [arg for d in SYSTEM for arg in ("-r", d)]
#: Where this stockade package comes from, absolute: the commands below run
#: from other directories, and PYTHONPATH may be relative.
SRC = str(Path(stockade.__file__).resolve().parents[1])


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [env.get("PYTHONPATH")])])
    return stockade_cli(*args, cwd=cwd, env=env)


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return cli("run", *args, cwd=cwd, env=env)


def one_line(stderr: str) -> str:
    """The single line stockade printed, asserting there is exactly one."""
    assert stderr.endswith("\n"), repr(stderr)
    assert stderr.count("\n") == 1, repr(stderr)
    assert stderr.startswith("stockade: "), repr(stderr)
    return stderr.rstrip("\n")


# -- the command's own status -----------------------------------------------


def test_command_exit_status_is_passed_through(workdir: Path) -> None:
    proc = run(*READ_SYSTEM, "--", "/bin/sh", "-c", "echo ran; exit 3", cwd=workdir)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "ran\n", "")


@pytest.mark.parametrize(("sig", "status"), [("TERM", 143), ("KILL", 137), ("INT", 130)])
def test_killed_by_signal_is_128_plus_n(workdir: Path, sig: str, status: int) -> None:
    proc = run(*READ_SYSTEM, "--", "/bin/sh", "-c", f"echo ran; kill -{sig} $$", cwd=workdir)
    assert proc.stdout == "ran\n"
    assert proc.returncode == status


def test_timeout_is_124_with_a_message(workdir: Path) -> None:
    start = time.monotonic()
    proc = run(
        *READ_SYSTEM, "-t", "1", "--", "/bin/sh", "-c", "echo started; sleep 30", cwd=workdir
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 124
    assert proc.stdout == "started\n"
    line = one_line(proc.stderr)
    assert "timeout" in line
    assert elapsed < 10


def test_sigterm_to_stockade_is_forwarded(workdir: Path) -> None:
    script = 'trap "exit 42" TERM; echo ready; while :; do sleep 0.1; done'
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "stockade.cli.main", "run", *READ_SYSTEM,
           "--", "/bin/sh", "-c", script]  # fmt: skip
    with subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 42
        finally:
            proc.kill()  # so that a failure cannot leave Popen.__exit__ waiting


# -- 125: stockade's own failure, one line, nothing started -------------------


REFUSED = [
    pytest.param(["--no-such-option"], id="unknown option"),
    pytest.param(["-c", "allow/reed+/x"], id="malformed rule"),
    pytest.param(["-C", "no-such-policy.toml"], id="missing relative -C file"),
    pytest.param(["-C", "{workdir}/unknown-key.toml"], id="TOML with an unknown key"),
    pytest.param(["--net-allow", "*:99999"], id="bad port"),
    pytest.param(["--unshare", "pid,bogus"], id="unknown namespace"),
    pytest.param(["--time-offset", "1.5"], id="fractional time offset"),
    pytest.param(["--time-offset", "realtime=5"], id="unknown clock"),
    pytest.param(["--domainname", "d" * 70], id="domainname too long"),
    pytest.param(["--bind", "/proc:{workdir}"], id="procfs bound elsewhere"),
    pytest.param(["--root", "tmpfs", "-r", "/"], id="root tmpfs with the host's /"),
    pytest.param(["--root", "{workdir}/no-such-root"], id="missing root directory"),
    pytest.param(["--root", "tmpfs", "--bind", "/usr:usr"], id="relative destination"),
    pytest.param(["--root", "tmpfs", "--tmpfs", "/a/../b"], id="destination with .."),
    pytest.param(["--root", "tmpfs", "--cwd", "/usr/no-such-dir"], id="cwd missing in the root"),
    pytest.param(["--bind", "/usr:/no/such/mount/point"], id="bind to a missing point"),
    pytest.param(["--tmpfs", "/etc/passwd"], id="tmpfs over a file"),
    pytest.param(["--hostname", "h" * 70], id="hostname too long"),
    pytest.param(["--ipc", "{workdir}/ctl.sock"], id="ipc"),
    pytest.param(["-r", "{workdir}/no-such-dir"], id="missing -r path"),
    pytest.param(["-m", "12X"], id="bad memory"),
    pytest.param(["--rlimit", "bogus=1"], id="unknown rlimit"),
    pytest.param(["-p", "no-such-profile"], id="unknown profile"),
    pytest.param(["-e", "NOEQUALS"], id="bad env"),
]


@pytest.mark.parametrize("options", REFUSED)
def test_own_failure_is_125_one_line_nothing_started(workdir: Path, options: list[str]) -> None:
    (workdir / "unknown-key.toml").write_text('read = ["/usr"]\nbogus = 1\n')
    marker = workdir / "marker"
    opts = [o.format(workdir=workdir) for o in options]
    proc = run(*READ_SYSTEM, "-w", str(workdir), *opts, "--", "/bin/sh", "-c",
               f"touch {marker}", cwd=workdir)  # fmt: skip
    assert proc.returncode == 125, proc.stderr
    one_line(proc.stderr)
    assert proc.stdout == ""
    assert not marker.exists()
    assert not (workdir / "ctl.sock").exists()


def test_unknown_option_message_names_the_option_and_a_real_command(workdir: Path) -> None:
    proc = run("--no-such-option", "--", "/bin/true", cwd=workdir)
    line = one_line(proc.stderr)
    assert "--no-such-option" in line
    # The hint must name a command that exists ('stockade run --help').
    assert "stockade stockade" not in line


def test_toml_error_names_the_file_and_the_key(workdir: Path) -> None:
    toml = workdir / "job.toml"
    toml.write_text('read = ["/usr"]\nbogus = 1\n')
    proc = run("-C", "job.toml", "--", "/bin/true", cwd=workdir)
    line = one_line(proc.stderr)
    assert str(toml) in line
    assert "bogus" in line


def test_no_command_is_125(workdir: Path) -> None:
    proc = run(*READ_SYSTEM, cwd=workdir)
    assert proc.returncode == 125
    one_line(proc.stderr)


# -- 126 and 127 ---------------------------------------------------------------


@pytest.fixture
def scripts(workdir: Path) -> Path:
    d = workdir / "bin"
    d.mkdir()
    (d / "script.sh").write_text(f"#!/bin/sh\necho script-ran\ntouch {workdir}/marker\n")
    (d / "script.sh").chmod(0o755)
    (d / "noexec.sh").write_text(f"#!/bin/sh\ntouch {workdir}/marker\n")
    (d / "noexec.sh").chmod(0o644)
    return d


def test_script_runs_when_allowed(workdir: Path, scripts: Path) -> None:
    # The control for the 126 cases below: the same script, allowed, runs.
    proc = run(*READ_SYSTEM, "-w", str(workdir), "--", str(scripts / "script.sh"), cwd=workdir)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "script-ran\n", "")
    assert (workdir / "marker").exists()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        pytest.param(["-r", "{bin}"], "noexec.sh", id="not executable, in an allowed tree"),
        pytest.param(["-c", "allow/read+{bin}/***"], "script.sh", id="readable, not executable"),
        pytest.param([], "script.sh", id="outside every rule"),
    ],
)
def test_cannot_execute_is_126(workdir: Path, scripts: Path, options: list[str], name: str) -> None:
    opts = [o.format(bin=scripts) for o in options]
    proc = run(*READ_SYSTEM, *opts, "--", str(scripts / name), cwd=workdir)
    assert proc.returncode == 126, proc.stderr
    line = one_line(proc.stderr)
    assert name in line
    assert proc.stdout == ""
    assert not (workdir / "marker").exists()


@pytest.mark.parametrize("command", ["no-such-command-stockade", "{workdir}/missing"])
def test_command_not_found_is_127(workdir: Path, command: str) -> None:
    # A PATH without unsearchable directories: execvp reports EACCES (126),
    # as env(1) does, when one of them is (the unprivileged run inherits
    # root's PATH).
    env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    proc = run(*READ_SYSTEM, "--", command.format(workdir=workdir), cwd=workdir, env=env)
    assert proc.returncode == 127, proc.stderr
    assert "not found" in one_line(proc.stderr)


# -- informational commands ----------------------------------------------------


def test_version(workdir: Path) -> None:
    proc = cli("--version", cwd=workdir)
    assert proc.returncode == 0
    assert proc.stdout == f"stockade {stockade.__version__}\n"


def test_profiles_lists_default_and_strict(workdir: Path) -> None:
    proc = cli("profiles", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert "default" in names
    assert "strict" in names


def test_print_policy_prints_rules_and_runs_nothing(workdir: Path) -> None:
    marker = workdir / "marker"
    proc = run("--print-policy", "-r", "/usr", "--", "/bin/sh", "-c", f"touch {marker}",
               cwd=workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["allow/read+/usr/***", "allow/exec+/usr/***"]
    assert not marker.exists()
    # The printed rules are a policy: they parse back to the same one.
    policy = stockade.Policy.from_rules(proc.stdout.splitlines())
    assert policy.to_rules() == proc.stdout.splitlines()


# -- options that shape the sandbox ----------------------------------------------


PROBE_FILES = """
attempt("data", lambda: open({data!r}).read())
attempt("other", lambda: open({other!r}).read())
attempt("create out", lambda: os.mkdir({out!r} + "/d"))
attempt("create here", lambda: os.mkdir({here!r} + "/d"))
attempt("K", lambda: os.environ.get("K"))
"""


@pytest.fixture
def files(workdir: Path) -> dict[str, str]:
    (workdir / "data.txt").write_text("data\n")
    (workdir / "other.txt").write_text("other\n")
    (workdir / "out").mkdir()
    return {
        "data": str(workdir / "data.txt"),
        "other": str(workdir / "other.txt"),
        "out": str(workdir / "out"),
        "here": str(workdir),
    }


def test_config_file_applies_read_write_rules_env(workdir: Path, files: dict[str, str]) -> None:
    reads = ", ".join(json.dumps(d) for d in SYSTEM)
    (workdir / "job.toml").write_text(
        f"read = [{reads}]\n"
        f"write = [{json.dumps(files['out'])}]\n"
        f"rules = [{json.dumps('allow/read+' + files['data'])}]\n"
        '[env]\nK = "from-toml"\n'
    )
    body = probe_code(PROBE_FILES.format(**files))
    proc = run("-C", "job.toml", "--", PROBE_PY, "-c", body, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    v = verdicts(proc.stdout)
    assert v["data"]["value"] == "data\n"
    assert v["other"]["errno"] == errno.EACCES
    assert v["create out"]["errno"] == 0
    assert v["create here"]["errno"] == errno.EACCES
    assert v["K"]["value"] == "from-toml"


def test_options_after_a_config_file_refine_it(workdir: Path, files: dict[str, str]) -> None:
    reads = ", ".join(json.dumps(d) for d in SYSTEM)
    (workdir / "job.toml").write_text(f'read = [{reads}]\n[env]\nK = "from-toml"\n')
    body = probe_code(PROBE_FILES.format(**files))
    proc = run("-C", "job.toml", "-w", files["out"], "-e", "K=from-cli", "--", PROBE_PY, "-c",
               body, cwd=workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    v = verdicts(proc.stdout)
    assert v["create out"]["errno"] == 0
    assert v["data"]["errno"] == errno.EACCES
    assert v["K"]["value"] == "from-cli"


def test_rule_option(workdir: Path, files: dict[str, str]) -> None:
    body = probe_code(PROBE_FILES.format(**files))
    proc = run(*READ_SYSTEM, "-c", f"allow/read+{files['data']}",
               "-c", f"allow/create+{files['out']}/***", "--", PROBE_PY, "-c", body,
               cwd=workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    v = verdicts(proc.stdout)
    assert v["data"]["value"] == "data\n"
    assert v["other"]["errno"] == errno.EACCES
    assert v["create out"]["errno"] == 0
    assert v["create here"]["errno"] == errno.EACCES


def test_env_and_clean_env(workdir: Path) -> None:
    env = {**os.environ, "STOCKADE_HOST_ONLY": "leaked"}
    proc = run(*READ_SYSTEM, "-e", "K=V", "-e", "EMPTY=", "--clean-env", "--", "/usr/bin/env",
               cwd=workdir, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted(
        ["PATH=/usr/local/bin:/usr/bin:/bin", "K=V", "EMPTY="]
    )
    # Without --clean-env the host's environment is passed on, -e on top.
    proc = run(*READ_SYSTEM, "-e", "K=V", "--", "/usr/bin/env", cwd=workdir, env=env)
    assert "STOCKADE_HOST_ONLY=leaked" in proc.stdout.splitlines()
    assert "K=V" in proc.stdout.splitlines()


def test_cwd(workdir: Path) -> None:
    proc = run(*READ_SYSTEM, "--cwd", "/usr", "--", "/bin/sh", "-c", "pwd", cwd=workdir)
    assert (proc.returncode, proc.stdout) == (0, "/usr\n")


def test_log_writes_exec_and_exit_events(workdir: Path) -> None:
    log = workdir / "events.jsonl"
    proc = run(*READ_SYSTEM, "--log", str(log), "--", "/bin/sh", "-c", "exit 2", cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["category"] for e in events] == ["exec", "exit"]
    keys = {"time", "pid", "syscall", "category", "target", "action", "errno"}
    for event in events:
        assert keys <= set(event), event
        assert isinstance(event["time"], (int, float))
        assert abs(event["time"] - time.time()) < 120
        assert event["action"] in ("allow", "deny", "audit")
    exec_event, exit_event = events
    assert exec_event["pid"] == exit_event["pid"] > 0
    assert exec_event["syscall"] == "execve"
    # The path the kernel executes, resolved in the sandbox's view.
    assert exec_event["target"] == os.path.realpath("/bin/sh")
    assert exec_event["argv"] == ["/bin/sh", "-c", "exit 2"]
    assert exec_event["rule"] is not None and exec_event["rule"].startswith("allow/exec+")
    assert exit_event["status"] == 2


def test_rlimit_and_memory_in_proc_self_limits(workdir: Path) -> None:
    # No filesystem option: the default profile, which reads /proc.
    proc = run("--rlimit", "nofile=64", "--rlimit", "core=0", "-m", "64M", "--",
               "/bin/cat", "/proc/self/limits", cwd=workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    limits = {line[:26].strip(): line[26:].split()[:2] for line in proc.stdout.splitlines()}
    assert limits["Max open files"] == ["64", "64"]
    assert limits["Max core file size"] == ["0", "0"]
    assert limits["Max data size"] == ["67108864", "67108864"]


def test_default_profile(workdir: Path) -> None:
    body = probe_code(
        """
        tmp = os.environ.get("TMPDIR")
        attempt("TMPDIR", lambda: tmp)
        attempt("tmp mode", lambda: os.stat(tmp).st_mode & 0o777)
        attempt("create in TMPDIR", lambda: open(tmp + "/f", "x").close())
        attempt("create in cwd", lambda: open("made-in-cwd", "x").close())
        attempt("create in /tmp", lambda: open("/tmp/stockade-cli-%d" % os.getpid(), "x").close())
        attempt("read /usr", lambda: os.path.isdir("/usr/bin") and len(os.listdir("/usr/bin")) > 0)
        attempt("read /etc/hostname", lambda: len(open("/etc/passwd").read()) > 0)
        """
    )
    proc = run("--", PROBE_PY, "-c", body, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    v = verdicts(proc.stdout)
    tmp = v["TMPDIR"]["value"]
    assert isinstance(tmp, str)
    assert tmp != "/tmp"
    assert v["tmp mode"]["value"] == 0o700
    assert v["create in TMPDIR"]["errno"] == 0
    assert v["create in cwd"]["errno"] == 0
    assert v["create in /tmp"]["errno"] == errno.EACCES
    assert v["read /usr"]["errno"] == 0
    assert (workdir / "made-in-cwd").exists()
    # Private: removed when the run is over.
    assert not os.path.exists(tmp)
