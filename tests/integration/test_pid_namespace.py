"""pid, time and cgroup namespaces, the init, and the private /proc,
observed from inside.

Every test runs as root and as uid 65534.  Processes of a sandbox are found
from the host by a unique token in their command line: their pids inside
mean nothing outside.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, stockade_cli

PROC = {"read": ["/proc"]}


def host_processes(token: str) -> list[int]:
    """Live host processes whose argv[0] is *token*."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline.split(b"\0")[0] == token.encode() and state != "Z":
            found.append(int(entry))
    return found


def wait_count(token: str, count: int, timeout: float = 10) -> int:
    """Wait until *count* processes carry *token* (exec may lag "ready")."""
    deadline = time.monotonic() + timeout
    while len(found := host_processes(token)) != count and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(found)


def wait_gone(token: str, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = host_processes(token)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# -- the pid namespace, from inside ----------------------------------------------


def test_the_command_is_pid_2_and_sees_only_its_own_processes() -> None:
    res, v = run_probe(
        """
        attempt("ids", lambda: [os.getpid(), os.getppid()])
        r, w = os.pipe()
        kid = os.fork()
        if kid == 0:
            os.read(r, 1)
            os._exit(0)
        attempt("kid", lambda: kid)
        attempt("proc", lambda: sorted(int(e) for e in os.listdir("/proc") if e.isdigit()))
        attempt("init", lambda: open("/proc/1/status").read())
        os.write(w, b"x")
        os.waitpid(kid, 0)
        """,
        unshare=["pid"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert v["ids"]["value"] == [2, 1]
    # The init is there (our parent) but invisible: hidepid=4 and not dumpable.
    assert v["proc"]["value"] == [2, v["kid"]["value"]]
    assert v["init"]["errno"] == errno.ENOENT


def test_ps_lists_only_the_sandbox() -> None:
    sb = stockade.Sandbox(read=[*SYSTEM, "/proc"], unshare=["pid"])
    res = sb.run(["/bin/sh", "-c", "ps -e -o pid=,comm="], capture=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.decode().splitlines()]
    assert rows == [["2", "sh"], [rows[1][0], "ps"]]


def test_host_processes_cannot_be_signalled_nor_the_init() -> None:
    host = os.getpid()
    res, v = run_probe(
        f"""
        import signal
        attempt("host", lambda: os.kill({host}, 0))
        attempt("host_term", lambda: os.kill({host}, signal.SIGTERM))
        attempt("init_term", lambda: os.kill(1, signal.SIGTERM))
        attempt("init_kill", lambda: os.kill(1, signal.SIGKILL))
        attempt("ptrace_init", lambda: sys_call(101, 16, 1, 0, 0))  # PTRACE_ATTACH
        attempt("group", lambda: os.killpg(1, signal.SIGTERM))
        """,
        unshare=["pid"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert v["host"]["errno"] == errno.ESRCH
    assert v["host_term"]["errno"] == errno.ESRCH
    # Landlock's signal scope: the init is outside the command's domain.
    assert v["init_term"]["errno"] == errno.EPERM
    assert v["init_kill"]["errno"] == errno.EPERM
    assert v["ptrace_init"]["errno"] == errno.EPERM
    assert v["group"]["errno"] in (errno.EPERM, errno.ESRCH)
    assert os.getpid() == host  # and we are still here


def test_orphans_are_reaped_by_the_init() -> None:
    """Children whose parent exited are re-parented to pid 1, which must
    wait for them: none may stay a zombie."""
    res, v = run_probe(
        """
        import time
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:
            for _ in range(20):
                if os.fork() == 0:
                    os.write(w, b"%d\\n" % os.getpid())
                    time.sleep(0.2)  # still alive when the middle one leaves
                    os._exit(0)
            os._exit(0)
        os.close(w)
        os.waitpid(middle, 0)
        orphans = [int(x) for x in os.fdopen(r).read().split()]
        attempt("count", lambda: len(orphans))
        def parent(p):
            try:
                return int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:  # exited (and reaped) meanwhile
                return None
        attempt("parents", lambda: sorted({parent(p) for p in orphans} - {None}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [p for p in orphans if os.path.exists(f"/proc/{p}")]
            if not left:
                break
            time.sleep(0.05)
        states = []
        for p in left:
            try:
                states.append(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        attempt("left", lambda: states)
        """,
        unshare=["pid"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert v["count"]["value"] == 20
    # They were the init's (or already gone) after their parent exited...
    assert v["parents"]["value"] in ([], [1])
    # ...and the init reaped every one: no zombie, nothing left.
    assert v["left"]["value"] == []


# -- exit status and signals -------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "api", "cli"),
    [
        ("exit 3", 3, 3),
        ("exit 0", 0, 0),
        ("kill -TERM $$", -signal.SIGTERM, 128 + signal.SIGTERM),
        ("kill -KILL $$", -signal.SIGKILL, 128 + signal.SIGKILL),
        ("kill -SEGV $$", -signal.SIGSEGV, 128 + signal.SIGSEGV),
    ],
)
def test_exit_status_is_preserved(script: str, api: int, cli: int) -> None:
    sb = stockade.Sandbox(read=SYSTEM, unshare=["pid"])
    assert sb.run(["/bin/sh", "-c", script], timeout=60).returncode == api
    access = [a for p in SYSTEM for a in ("-r", p)]
    proc = stockade_cli("run", *access, "--unshare", "pid", "--", "/bin/sh", "-c", script)
    assert proc.returncode == cli, proc.stderr


HANDLER = """
import signal, sys, time
def on(sig, _frame):
    # os.write: the signal may land while print() is still flushing "ready".
    os.write(1, f"got {signal.Signals(sig).name}\\n".encode())
    os._exit(7)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, on)
print("ready", os.getpid(), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
def test_a_signal_to_stockade_reaches_the_command(sig: int) -> None:
    access = [a for p in SYSTEM for a in ("-r", p)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade.cli.main", "run", *access, "--unshare", "pid", "--",
         PROBE_PY, "-c", probe_code(HANDLER)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["ready", "2"]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert out.split() == ["got", signal.Signals(sig).name], err
    assert proc.returncode == 7


def test_a_signal_that_kills_the_command_is_its_status() -> None:
    access = [a for p in SYSTEM for a in ("-r", p)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade.cli.main", "run", *access, "--unshare", "pid", "--",
         "/bin/sh", "-c", "echo ready; exec sleep 60"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_popen_send_signal_reaches_the_command() -> None:
    sb = stockade.Sandbox(read=SYSTEM, unshare=["pid"])
    with sb.popen([PROBE_PY, "-c", probe_code(HANDLER)], stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        assert p.stdout.readline().split() == ["ready", "2"]
        p.send_signal(signal.SIGUSR1)
        assert p.stdout.readline().split() == ["got", "SIGUSR1"]
        assert p.wait(timeout=30) == 7


# -- the end of the sandbox ends everything in it ------------------------------------

DAEMON = """
import os, sys, time
token = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        os.execv("/bin/sleep", [token, "600"])
    os._exit(0)
os.wait()
if os.fork() == 0:
    os.execv("/bin/sleep", [token, "600"])
print("ready", flush=True)
if sys.argv[2] == "sleep":
    time.sleep(600)
"""


def test_timeout_kills_every_process_in_the_namespace() -> None:
    token = f"stockade-{secrets.token_hex(6)}"
    sb = stockade.Sandbox(read=SYSTEM, unshare=["pid"], timeout=3)
    proc = sb.popen([PROBE_PY, "-c", DAEMON, token, "sleep"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        assert wait_count(token, 2) == 2
    finally:
        proc.kill()  # the stub outside: the init follows it, and the namespace the init
        proc.wait()
        proc.stdout.close()
    assert wait_gone(token) == []
    res = sb.run([PROBE_PY, "-c", DAEMON, token, "sleep"], capture=True)
    assert res.timed_out
    assert res.stdout == b"ready\n"
    assert wait_gone(token) == []

    access = [a for p in SYSTEM for a in ("-r", p)]
    cli = stockade_cli("run", *access, "--unshare", "pid", "-t", "2", "--",
                       PROBE_PY, "-c", DAEMON, token, "sleep")  # fmt: skip
    assert cli.returncode == 124, cli.stderr
    assert cli.stdout == "ready\n"
    assert wait_gone(token) == []


def test_the_command_exiting_ends_its_daemons() -> None:
    token = f"stockade-{secrets.token_hex(6)}"
    sb = stockade.Sandbox(read=SYSTEM, unshare=["pid"])
    res = sb.run([PROBE_PY, "-c", DAEMON, token, "exit"], capture=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"ready\n"
    assert wait_gone(token) == []


def test_cli_killed_ends_every_process_in_the_namespace() -> None:
    token = f"stockade-{secrets.token_hex(6)}"
    access = [a for p in SYSTEM for a in ("-r", p)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade.cli.main", "run", *access, "--unshare", "pid", "--",
         PROBE_PY, "-c", DAEMON, token, "sleep"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        assert wait_count(token, 2) == 2
        proc.kill()
        proc.wait()
        assert wait_gone(token) == []
    finally:
        proc.kill()
        proc.wait()


# -- /proc -----------------------------------------------------------------------


def test_proc_subset_pid_hides_everything_but_processes() -> None:
    body = """
        attempt("sys", lambda: os.listdir("/proc/sys"))
        attempt("self", lambda: open("/proc/self/stat").read().split()[0])
        attempt("entries", lambda: sorted(e for e in os.listdir("/proc") if not e.isdigit()))
        """
    _, full = run_probe(body, unshare=["pid"], **PROC)
    res, subset = run_probe(body, proc_subset_pid=True, **PROC)
    assert res.returncode == 0, res.stderr
    assert full["sys"]["errno"] == 0
    assert subset["sys"]["errno"] == errno.ENOENT
    assert subset["self"]["value"] == "2"
    assert subset["entries"]["value"] == ["self", "thread-self"]


def test_a_deny_under_proc_holds_over_the_private_proc() -> None:
    res, v = run_probe(
        """
        attempt("hostname", lambda: open("/proc/sys/kernel/hostname").read())
        attempt("ostype", lambda: open("/proc/sys/kernel/ostype").read())
        attempt("status", lambda: open("/proc/self/status").read()[:4])
        """,
        unshare=["pid"],
        deny=["/proc/sys/kernel"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert v["hostname"]["errno"] == errno.EACCES
    assert v["ostype"]["errno"] == errno.EACCES
    assert v["status"]["errno"] == 0


def test_proc_is_not_readable_without_a_grant() -> None:
    res, v = run_probe('attempt("proc", lambda: os.listdir("/proc"))', unshare=["pid"])
    assert res.returncode == 0, res.stderr
    assert v["proc"]["errno"] == errno.EACCES


@pytest.mark.parametrize("source", ["/proc", "/proc/self", "/proc/1"])
def test_a_procfs_is_never_bound_elsewhere(source: str, workdir: Path) -> None:
    sb = stockade.Sandbox(read=SYSTEM, binds=[f"{source}:{workdir}"], unshare=["pid"])
    with pytest.raises(stockade.PolicyError, match="procfs"):
        sb.run(["/bin/true"])


def test_the_private_proc_is_not_visible_outside() -> None:
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    res, v = run_probe('attempt("pid", lambda: os.getpid())', unshare=["pid"], **PROC)
    assert res.returncode == 0 and v["pid"]["value"] == 2
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before


# -- time, uts, cgroup -------------------------------------------------------------


def test_time_offsets_shift_monotonic_and_boottime() -> None:
    mono, boot = 100_000, 250_000
    before = (time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME))
    res, v = run_probe(
        """
        import time
        attempt("clocks", lambda: [str(time.clock_gettime(time.CLOCK_MONOTONIC)),
                                   str(time.clock_gettime(time.CLOCK_BOOTTIME)),
                                   str(time.time())])
        """,
        time_offset=f"monotonic={mono},boottime={boot}",
    )
    after = (time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME))
    assert res.returncode == 0, res.stderr
    inside = [float(x) for x in v["clocks"]["value"]]
    assert before[0] + mono <= inside[0] <= after[0] + mono
    assert before[1] + boot <= inside[1] <= after[1] + boot
    # The wall clock is not namespaced.
    assert abs(inside[2] - time.time()) < 60


def test_one_time_offset_applies_to_both_clocks() -> None:
    res, v = run_probe(
        """
        import time
        attempt("m", lambda: str(time.clock_gettime(time.CLOCK_MONOTONIC)))
        """,
        time_offset=3600,
    )
    assert res.returncode == 0, res.stderr
    assert float(v["m"]["value"]) >= time.clock_gettime(time.CLOCK_MONOTONIC) + 3600 - 60


def test_a_negative_offset_beyond_zero_is_a_launch_error() -> None:
    sb = stockade.Sandbox(read=SYSTEM, time_offset=-(10**8))
    with pytest.raises(stockade.LaunchError, match="time-offset"):
        sb.run(["/bin/true"])


def test_domainname_is_private() -> None:
    with open("/proc/sys/kernel/domainname") as f:
        before = f.read()
    res, v = run_probe(
        'attempt("d", lambda: open("/proc/sys/kernel/domainname").read().strip())',
        domainname="sbx.example",
        hostname="sbx",
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert v["d"]["value"] == "sbx.example"
    with open("/proc/sys/kernel/domainname") as f:
        assert f.read() == before


def test_cgroup_namespace_roots_every_hierarchy() -> None:
    res, v = run_probe(
        'attempt("cg", lambda: open("/proc/self/cgroup").read().splitlines())',
        unshare=["cgroup"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    lines = v["cg"]["value"]
    assert "0::/" in lines
    assert all(line.endswith(":/") for line in lines), lines


def test_unshare_all() -> None:
    res, v = run_probe(
        """
        attempt("pid", lambda: os.getpid())
        attempt("cg", lambda: open("/proc/self/cgroup").read().splitlines())
        """,
        unshare="all",
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert v["pid"]["value"] == 2
    assert "0::/" in v["cg"]["value"]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"time_offset": "1.5"}, "time_offset"),
        ({"time_offset": "monotonic=1,realtime=2"}, "time_offset"),
        ({"time_offset": "monotonic=1,monotonic=2"}, "time_offset"),
        ({"time_offset": 10**10}, "time_offset"),
        ({"time_offset": True}, "time_offset"),
        ({"domainname": "a b"}, "domainname"),
        ({"domainname": "d" * 65}, "domainname"),
    ],
)
def test_bad_values_are_policy_errors(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(stockade.PolicyError) as info:
        stockade.Sandbox(read=SYSTEM, **kwargs)  # type: ignore[arg-type]
    assert key in str(info.value)


def test_cli_and_toml_take_the_same_options(workdir: Path) -> None:
    policy = workdir / "p.toml"
    policy.write_text(
        f"read = {[*SYSTEM, '/proc']!r}\n".replace("'", '"')
        + 'domainname = "toml.example"\ntime_offset = "boottime=5000"\nproc_subset_pid = true\n'
    )
    script = "domainname; ls /proc | grep sys | wc -l"
    proc = stockade_cli("run", "-C", str(policy), "--", "/bin/sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    access = [a for p in [*SYSTEM, "/proc"] for a in ("-r", p)]
    cli = stockade_cli(
        "run", *access, "--domainname", "cli.example", "--time-offset", "boottime=5000",
        "--", "/bin/sh", "-c", "domainname; awk '{print $1}' /proc/uptime",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    name, uptime = cli.stdout.split()
    assert name == "cli.example"
    with open("/proc/uptime") as f:
        assert float(uptime) >= float(f.read().split()[0]) + 5000 - 60
    # subset=pid: no /proc/sys.
    assert proc.stdout.split() == ["toml.example", "0"]
    for key, value in (("proc_subset_pid", '"yes"'), ("time_offset", '"soon"')):
        bad = workdir / "bad.toml"
        bad.write_text(f"{key} = {value}\n")
        refused = stockade_cli("run", "-C", str(bad), "--", "/bin/true")
        assert refused.returncode == 125
        assert key in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_unprivileged_callers_get_a_user_namespace_with_it() -> None:
    res, v = run_probe(
        'attempt("uid_map", lambda: open("/proc/self/uid_map").read().split())',
        unshare=["pid"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    if os.geteuid() != 0:
        assert v["uid_map"]["value"] == [str(os.getuid()), str(os.getuid()), "1"]
    else:
        assert v["uid_map"]["value"][:2] == ["0", "0"]


def test_a_private_root_gets_the_private_proc() -> None:
    res, v = run_probe(
        """
        attempt("root", lambda: sorted(os.listdir("/")))
        attempt("proc", lambda: sorted(int(e) for e in os.listdir("/proc") if e.isdigit()))
        attempt("stdout", lambda: os.readlink("/dev/stdout"))
        attempt("fd1", lambda: os.path.samestat(os.stat("/dev/stdout"), os.fstat(1)))
        attempt("mounts", lambda: [l.split()[4] for l in open("/proc/self/mountinfo")
                                   if l.split()[4] in ("/proc", "/")])
        """,
        root="tmpfs",
        unshare=["pid"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert "proc" in v["root"]["value"] and "home" not in v["root"]["value"]
    assert v["proc"]["value"] == [2]
    assert v["fd1"]["value"] is True
    assert sorted(v["mounts"]["value"]) == ["/", "/proc"]


def test_a_deny_under_proc_holds_in_a_private_root_too() -> None:
    res, v = run_probe(
        """
        attempt("hostname", lambda: open("/proc/sys/kernel/hostname").read())
        attempt("status", lambda: open("/proc/self/status").read()[:4])
        """,
        root="tmpfs",
        unshare=["pid"],
        deny=["/proc/sys/kernel"],
        **PROC,
    )
    assert res.returncode == 0, res.stderr
    assert v["hostname"]["errno"] == errno.EACCES
    assert v["status"]["errno"] == 0


def test_max_procs_counts_the_command_s_processes_not_the_init() -> None:
    """The stub outside and the init are added to the limit: the command
    and its children may be max_procs processes, no more."""
    res, v = run_probe(
        """
        started, failure, kids = 0, 0, []
        for _ in range(30):
            try:
                pid = os.fork()
            except OSError as e:
                failure = e.errno
                break
            if pid == 0:
                import time
                time.sleep(5)
                os._exit(0)
            kids.append(pid)
            started += 1
        for pid in kids:
            os.kill(pid, 9)
        attempt("fork", lambda: [started, failure])
        """,
        unshare=["pid"],
        max_procs=10,
    )
    assert res.returncode == 0, res.stderr
    assert v["fork"]["value"] == [9, errno.EAGAIN]


def test_job_control_on_a_terminal_in_a_pid_namespace(workdir: Path) -> None:
    """With -i the stub outside leads the session; the command's own group
    takes the terminal's foreground, so an interactive shell runs jobs."""
    from test_pty import BASH, Session, wait_foreground

    if not os.path.exists(BASH):
        pytest.skip("needs bash")
    bash = Session(["--unshare", "pid", "--", BASH, "--norc", "--noprofile", "-i"], workdir)
    try:
        bash.run("echo ready-$((40+2)) $$", r"ready-(42) 2")
        bash.run("sleep 30 & echo bg-$((2+2))", r"(bg-4)")
        assert bash.run("jobs", r"\[1\]\+\s+(Running)\s+sleep 30 &") == b"Running"
        bash.run("kill %1; wait; echo killed-$((3+3))", r"(killed-6)")
        bash.type("sleep 47.75\n")
        wait_foreground("sleep", "47.75")
        bash.type("\x1a")
        assert bash.expect(r"\[1\]\+\s+(Stopped)\s+sleep 47.75").group(1) == b"Stopped"
        bash.type("fg\n")
        bash.expect(r"sleep 47.75")
        wait_foreground("sleep", "47.75")
        bash.type("\x03")
        assert bash.run("echo status-$?-$((1))", r"status-(\d+)-1") == b"130"
        bash.type("exit 7\n")
        assert bash.wait() == 7
    finally:
        bash.close()
