"""The Python API (SPEC section 3) against real sandboxes.

Both spawners are exercised where the process handling differs: the fork
server (the default) and ``spawner="fork"`` (what the command line uses).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, verdicts

SPAWNERS = pytest.mark.parametrize("spawner", ["server"])


def sandbox(spawner: str = "server", **kwargs: Any) -> stockade.Sandbox:
    kwargs["read"] = SYSTEM + list(kwargs.get("read", []))
    return stockade.Sandbox(spawner=spawner, **kwargs)


def process_state(pid: int) -> str | None:
    """The state letter of *pid* from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(")")[2].split()[0]


#: include/linux/sched.h: "getting shut down".
PF_EXITING = 0x00000004


def is_finished(pid: int) -> bool:
    """*pid* is gone, a zombie, or already dying: exiting or SIGKILL pending.

    A SIGKILL sent to an orphan by its killer returns before the victim has
    run its exit path, so "R" with a pending SIGKILL is as dead as "Z".
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return True
    if fields[0] in ("Z", "X") or int(fields[6]) & PF_EXITING:
        return True
    sigkill = 1 << (signal.SIGKILL - 1)
    return any(int(status.get(k, "0"), 16) & sigkill for k in ("SigPnd", "ShdPnd"))


def test_public_names_are_pinned() -> None:
    assert sorted(stockade.__all__) == [
        "DEVNULL", "Denial", "LaunchError", "PIPE", "Policy", "PolicyError", "Result",
        "STDOUT", "Sandbox", "StockadeError", "UnsupportedError", "__version__",
    ]  # fmt: skip
    for name in stockade.__all__:
        assert getattr(stockade, name) is not None


def test_error_classes() -> None:
    assert issubclass(stockade.PolicyError, stockade.StockadeError)
    assert issubclass(stockade.PolicyError, ValueError)
    assert issubclass(stockade.UnsupportedError, stockade.StockadeError)
    assert issubclass(stockade.LaunchError, stockade.StockadeError)
    for cls in (stockade.PolicyError, stockade.UnsupportedError, stockade.LaunchError):
        assert cls.__module__ == "stockade"
    err = stockade.UnsupportedError("Landlock", "Linux 5.13")
    assert "Landlock" in str(err)
    assert "Linux 5.13" in str(err)


@SPAWNERS
def test_run_result_fields(spawner: str) -> None:
    res = sandbox(spawner).run(
        ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"], capture=True, timeout=30
    )
    assert isinstance(res, stockade.Result)
    assert res.args == ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"]
    assert res.returncode == 7
    assert res.stdout == b"out\n"
    assert res.stderr == b"err\n"
    assert res.timed_out is False
    assert res.signal is None
    assert 0 < res.duration < 30
    assert res.denials == []
    with pytest.raises(subprocess.CalledProcessError):
        res.check_returncode()


@SPAWNERS
def test_run_reports_the_killing_signal(spawner: str) -> None:
    res = sandbox(spawner).run(
        ["/bin/sh", "-c", "echo before; kill -TERM $$; echo after"], capture=True, timeout=30
    )
    assert res.stdout == b"before\n"
    assert res.returncode == -signal.SIGTERM
    assert res.signal == signal.SIGTERM
    assert res.timed_out is False


def test_run_without_capture_returns_no_output() -> None:
    res = sandbox().run(["/bin/true"])
    assert res.returncode == 0
    assert res.stdout is None
    assert res.stderr is None


@SPAWNERS
def test_run_input_goes_to_stdin(spawner: str) -> None:
    sb = sandbox(spawner)
    res = sb.run(["/bin/cat"], input=b"hello sandbox", capture=True, timeout=30)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"hello sandbox", b"")
    # More than a pipe holds, both ways at once.
    big = os.urandom(1 << 20)
    res = sb.run(["/bin/cat"], input=big, capture=True, timeout=30)
    assert res.returncode == 0
    assert res.stdout == big


@SPAWNERS
def test_popen_pipes_and_communicate(spawner: str) -> None:
    sb = sandbox(spawner)
    with sb.popen(
        ["/bin/sh", "-c", "tr a-z A-Z; echo done >&2"],
        stdin=stockade.PIPE,
        stdout=stockade.PIPE,
        stderr=stockade.PIPE,
    ) as proc:
        assert isinstance(proc, subprocess.Popen)
        out, err = proc.communicate(b"abc", timeout=30)
    assert (out, err) == (b"ABC", b"done\n")
    assert proc.returncode == 0


@SPAWNERS
def test_popen_text_mode(spawner: str) -> None:
    with sandbox(spawner).popen(
        ["/bin/cat"], stdin=stockade.PIPE, stdout=stockade.PIPE, text=True
    ) as proc:
        out, _ = proc.communicate("grüße\n", timeout=30)
    assert out == "grüße\n"
    assert proc.returncode == 0


@SPAWNERS
def test_popen_poll_kill_wait(spawner: str) -> None:
    proc = sandbox(spawner).popen(["/bin/sleep", "60"])
    try:
        assert proc.pid > 0
        assert proc.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
        assert process_state(proc.pid) in ("S", "R")
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert proc.poll() == -signal.SIGKILL
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


@SPAWNERS
def test_popen_terminate_and_send_signal(spawner: str) -> None:
    sb = sandbox(spawner)
    proc = sb.popen(["/bin/sleep", "60"])
    proc.terminate()
    assert proc.wait(timeout=10) == -signal.SIGTERM
    proc = sb.popen(["/bin/sleep", "60"])
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=10) == -signal.SIGUSR1


@SPAWNERS
def test_popen_context_manager_waits(spawner: str) -> None:
    with sandbox(spawner).popen(["/bin/sh", "-c", "sleep 0.2; exit 5"]) as proc:
        pass
    assert proc.returncode == 5


@SPAWNERS
def test_timeout_kills_and_reports(spawner: str) -> None:
    sb = sandbox(spawner, timeout=1)
    start = time.monotonic()
    res = sb.run(["/bin/sh", "-c", "echo started; sleep 30"], capture=True)
    elapsed = time.monotonic() - start
    assert res.stdout == b"started\n"
    assert res.timed_out is True
    assert res.returncode == -signal.SIGKILL
    assert res.signal == signal.SIGKILL
    assert 1 <= elapsed < 6
    assert 1 <= res.duration < 6


def test_run_timeout_argument_overrides_the_policy() -> None:
    res = sandbox(timeout=60).run(["/bin/sleep", "30"], timeout=0.5)
    assert res.timed_out is True
    assert res.returncode == -signal.SIGKILL
    assert res.duration < 5


#: sh gives a background job /dev/null as stdin; without it the job dies at once.
DEV_NULL = ["allow/read+/dev/null"]
#: Start a background sleeper, prove it runs, print its pid and exit.
BACKGROUND = "sleep 60 & pid=$!; sleep 0.1; kill -0 $pid && echo $pid"


@SPAWNERS
def test_background_child_is_dead_when_run_returns(spawner: str) -> None:
    res = sandbox(spawner, rules=DEV_NULL).run(
        ["/bin/sh", "-c", BACKGROUND], capture=True, timeout=30
    )
    assert res.stderr == b""
    assert res.returncode == 0
    pid = int(res.stdout or b"")
    # Gone, a zombie or dying; never still sleeping.
    assert is_finished(pid), (pid, process_state(pid))


@SPAWNERS
def test_grandchildren_that_leave_the_group_are_dead_too(spawner: str) -> None:
    # A daemon-style double fork: the grandchild's parent exits at once.
    res = sandbox(spawner, rules=DEV_NULL).run(
        ["/bin/sh", "-c", f"({BACKGROUND}) ; sleep 0.2"], capture=True, timeout=30
    )
    assert res.stderr == b""
    assert res.returncode == 0
    pid = int(res.stdout or b"")
    assert is_finished(pid), (pid, process_state(pid))


@SPAWNERS
def test_exit_status_is_exact_when_leftovers_are_killed(spawner: str) -> None:
    # The command exits 0 while its background child still holds stdout; the
    # leftover is killed, but the status reported is the command's own.
    sb = sandbox(spawner, rules=DEV_NULL)
    codes = Counter(
        sb.run(["/bin/sh", "-c", "sleep 60 & echo $!"], capture=True, timeout=30).returncode
        for _ in range(100)
    )
    assert codes == {0: 100}


def test_env_clean_env_and_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_HOST_ONLY", "leaked")
    body = """
    attempt("K", lambda: os.environ.get("K"))
    attempt("host", lambda: os.environ.get("STOCKADE_HOST_ONLY"))
    attempt("PATH", lambda: os.environ.get("PATH"))
    attempt("cwd", lambda: os.getcwd())
    """
    res, v = run_probe(body, env={"K": "V"}, clean_env=True, cwd="/usr")
    assert res.returncode == 0, res.stderr
    assert v["K"]["value"] == "V"
    assert v["host"]["value"] is None
    assert v["PATH"]["value"] == "/usr/local/bin:/usr/bin:/bin"
    assert v["cwd"]["value"] == "/usr"
    # Without clean_env the host's environment is passed on.
    res, v = run_probe(body, env={"K": "V2"})
    assert v["host"]["value"] == "leaked"
    assert v["K"]["value"] == "V2"


@SPAWNERS
def test_command_starts_in_the_callers_current_directory(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, spawner: str
) -> None:
    # As with subprocess: no cwd given means the caller's directory *now*.
    sb = sandbox(spawner)
    seen = []
    for name in ("first", "second"):
        (workdir / name).mkdir()
        monkeypatch.chdir(workdir / name)
        res = sb.run(["/bin/pwd"], capture=True, timeout=30)
        assert res.returncode == 0, res.stderr
        seen.append((res.stdout or b"").decode().strip())
    assert seen == [str(workdir / "first"), str(workdir / "second")]


def test_run_cwd_and_env_arguments() -> None:
    res = sandbox().run(
        [PROBE_PY, "-c", "import os; print(os.getcwd(), os.environ.get('X'))"],
        cwd="/etc",
        env={"X": "from-run"},
        capture=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"/etc from-run\n"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"memory": "12X"}, "memory"),
        ({"read": ["relative/path"]}, "read"),
        ({"write": ["/no/such/dir/anywhere"]}, "write"),
        ({"rules": ["allow/reed+/x"]}, "rules"),
        ({"net_allow": ["*:99999"]}, "net_allow"),
        ({"net_bind": ["http"]}, "net_bind"),
        ({"max_procs": 0}, "max_procs"),
        ({"timeout": -1}, "timeout"),
        ({"rlimits": ["bogus=1"]}, "rlimit"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"cwd": "relative"}, "cwd"),
        ({"profile": "nonexistent"}, "profile"),
    ],
)
def test_invalid_arguments_raise_policy_error_at_construction(
    kwargs: dict[str, Any], key: str
) -> None:
    with pytest.raises(stockade.PolicyError) as info:
        stockade.Sandbox(**kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert "\n" not in str(err)
    assert key in str(err)


@pytest.mark.parametrize(
    "bad",
    [
        {"preexec_fn": "call"},
        {"pass_fds": "pipe"},
        {"close_fds": False},
        {"start_new_session": True},
        {"shell": True},
        {"user": 0},
    ],
)
def test_popen_refuses_arguments_that_undo_the_sandbox(workdir: Path, bad: dict[str, Any]) -> None:
    marker = workdir / "marker"
    called = workdir / "preexec-called"
    r, w = os.pipe()
    try:
        if bad.get("preexec_fn") == "call":
            bad = {"preexec_fn": called.touch}
        if bad.get("pass_fds") == "pipe":
            bad = {"pass_fds": [w]}
        with pytest.raises(stockade.PolicyError) as info:
            sandbox(write=[workdir]).popen(["/bin/sh", "-c", f"touch {marker}"], **bad)
        assert next(iter(bad)) in str(info.value)
    finally:
        os.close(r)
        os.close(w)
    assert not marker.exists()
    assert not called.exists()


def test_policy_and_options_together_is_an_error() -> None:
    policy = stockade.Policy.from_rules(["allow/read+/usr/***"])
    with pytest.raises(stockade.PolicyError):
        stockade.Sandbox(policy=policy, read=["/etc"])


def test_policy_from_rules(workdir: Path) -> None:
    out = workdir / "out"
    out.mkdir()
    (workdir / "secret").write_text("secret\n")
    lines = [
        *(f"allow/{c}+{d}/***" for d in SYSTEM for c in ("read", "exec")),
        *(f"allow/{c}+{out}/***" for c in ("read", "write", "create", "delete")),
    ]
    policy = stockade.Policy.from_rules(lines)
    sb = stockade.Sandbox(policy=policy)
    body = f"""
    attempt("create", lambda: open({str(out / "f")!r}, "x").close())
    attempt("create outside", lambda: open({str(workdir / "f")!r}, "x").close())
    attempt("read outside", lambda: open({str(workdir / "secret")!r}).read())
    """
    res = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60)
    v = verdicts(res.stdout or b"")
    assert res.returncode == 0, res.stderr
    assert v["create"]["errno"] == 0
    assert v["create outside"]["errno"] == errno.EACCES
    assert v["read outside"]["errno"] == errno.EACCES
    assert (out / "f").exists()


def test_policy_from_toml(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_HOST_ONLY", "leaked")
    out = workdir / "out"
    out.mkdir()
    toml = workdir / "job.toml"
    reads = ", ".join(f'"{d}"' for d in [*SYSTEM, "/proc"])
    toml.write_text(
        f"read = [{reads}]\n"
        f'write = ["{out}"]\n'
        "clean_env = true\n"
        '[env]\nJOB = "nightly"\n'
        "[rlimit]\nnofile = 100\n"
    )
    policy = stockade.Policy.from_toml(str(toml))
    body = f"""
    attempt("JOB", lambda: os.environ.get("JOB"))
    attempt("host", lambda: os.environ.get("STOCKADE_HOST_ONLY"))
    attempt("create", lambda: open({str(out / "f")!r}, "x").close())
    attempt("create outside", lambda: open({str(workdir / "f")!r}, "x").close())
    limits = open("/proc/self/limits").read().splitlines()
    attempt("nofile", lambda: [x for x in limits if "open files" in x][0].split()[3:5])
    """
    res = stockade.Sandbox(policy=policy).run(
        [PROBE_PY, "-c", probe_code(body)], capture=True, timeout=60
    )
    v = verdicts(res.stdout or b"")
    assert res.returncode == 0, res.stderr
    assert v["JOB"]["value"] == "nightly"
    assert v["host"]["value"] is None
    assert v["create"]["errno"] == 0
    assert v["create outside"]["errno"] == errno.EACCES
    assert v["nofile"]["value"] == ["100", "100"]


def test_policy_from_toml_errors_name_the_file_and_key(workdir: Path) -> None:
    toml = workdir / "bad.toml"
    toml.write_text('read = ["/usr"]\nmemroy = "1G"\n')
    with pytest.raises(stockade.PolicyError) as info:
        stockade.Policy.from_toml(str(toml))
    assert str(toml) in str(info.value)
    assert "memroy" in str(info.value)


def test_policy_prints_back_to_an_equal_policy(workdir: Path) -> None:
    sb = stockade.Sandbox(
        read=SYSTEM,
        write=[workdir],
        exec=["/usr/local"],
        rules=[f"allow/read+{workdir}/one.txt", "sandbox/ioctl:off"],
        net_allow=["*:443", "*:8000-8010"],
        net_bind=["9000"],
    )
    lines = sb.policy.to_rules()
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    assert f"allow/write+{workdir}/***" in lines
    again = stockade.Policy.from_rules(lines)
    assert again == sb.policy
    assert again.to_rules() == lines
    assert hash(again) == hash(sb.policy)


@SPAWNERS
def test_twenty_concurrent_runs(workdir: Path, spawner: str) -> None:
    n = 20
    for i in range(n):
        d = workdir / f"t{i}"
        d.mkdir()
        (d / "data").write_text(f"data {i}\n")
    results: dict[int, tuple[stockade.Result, dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            mine, other = workdir / f"t{i}", workdir / f"t{(i + 1) % n}"
            allowed = i % 2 == 0
            body = f"""
            attempt("mine", lambda: open({str(mine / "data")!r}).read())
            attempt("other", lambda: open({str(other / "data")!r}).read())
            attempt("write", lambda: open({str(mine / "out")!r}, "x").write("{i}"))
            """
            kwargs: dict[str, Any] = {"write": [mine]} if allowed else {"read": [mine]}
            sb = sandbox(spawner, **kwargs)
            res = sb.run([PROBE_PY, "-c", probe_code(body)], capture=True, timeout=120)
            results[i] = (res, verdicts(res.stdout or b""))
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert errors == []
    assert sorted(results) == list(range(n))
    for i, (res, v) in results.items():
        assert res.returncode == 0, (i, res.stderr)
        assert v["mine"]["value"] == f"data {i}\n"
        assert v["other"]["errno"] == errno.EACCES
        if i % 2 == 0:
            assert v["write"] == {"name": "write", "errno": 0, "value": len(str(i))}
            assert (workdir / f"t{i}" / "out").read_text() == str(i)
        else:
            assert v["write"]["errno"] == errno.EACCES
            assert not (workdir / f"t{i}" / "out").exists()


def test_one_sandbox_object_shared_by_threads(workdir: Path) -> None:
    sb = sandbox(write=[workdir])
    codes: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        res = sb.run(["/bin/sh", "-c", f"echo {i} > {workdir}/f{i}; exit {i}"], timeout=60)
        with lock:
            codes.append(res.returncode)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(codes) == list(range(10))
    assert sorted(p.name for p in workdir.iterdir()) == sorted(f"f{i}" for i in range(10))


@SPAWNERS
def test_missing_and_unexecutable_commands(workdir: Path, spawner: str) -> None:
    script = workdir / "script.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    sb = sandbox(spawner, read=[workdir])
    with pytest.raises(FileNotFoundError):
        sb.run([str(workdir / "missing")])
    with pytest.raises(PermissionError) as info:
        sb.run([str(script)])
    assert info.value.errno == errno.EACCES


def test_fork_spawner_needs_a_subreaper(workdir: Path) -> None:
    """Forking from a process that is not a child subreaper would let a
    daemon outlive its command out of reach: refused before anything runs
    (the command line, a subreaper, is where the fork spawner is used)."""
    marker = workdir / "marker"
    sb = stockade.Sandbox(read=SYSTEM, write=[str(workdir)], spawner="fork")
    with pytest.raises(stockade.PolicyError) as info:
        sb.run([PROBE_PY, "-c", f"open({str(marker)!r}, 'w')"])
    assert "subreaper" in str(info.value)
    assert not marker.exists()
