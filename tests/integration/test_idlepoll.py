"""The supervisor's idle poller (supervisor/idlepoll.py): a separate process
at SCHED_IDLE that spins while notifications flow and sleeps otherwise,
hands nothing to sandboxes, and dies with the process that started it.

Observed from outside, as the kernel reports it: its scheduling policy,
its state and CPU time in /proc, its descriptors, its exit.  No speed is
asserted: only that it spins at all, and stops."""

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
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, verdicts
from stockade.supervisor import engine
from stockade.supervisor.idlepoll import START_AFTER, IdlePoller

#: Generous: the poller runs at the lowest priority, and other processes
#: may keep both CPUs busy.
SETTLE_SECONDS = 20.0

needs_poller = pytest.mark.skipif(
    not IdlePoller.wanted(), reason="no idle poller here (one CPU, or STOCKADE_IDLE_POLL=0)"
)


def _glob(d: Path) -> list[str]:
    # A glob rule: reads of d go to the supervisor.
    return [f"allow/read+{d}/*"]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of *pid*, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # After the command: state is field 3, starttime field 22.
    return fields[0], int(fields[19])


def _cpu_ns(pid: int) -> int:
    """CPU time *pid* has used, in ns (schedstat: exact, where utime and
    stime are sampled at the tick)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except FileNotFoundError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _poller_pid() -> int:
    """The poller's pid, waiting for its start (it is started from a
    thread of its own once :data:`START_AFTER` calls were seen)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while (pid := engine.get()._poller.pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid is not None
    return pid


def _wait_asleep(pid: int) -> int:
    """Wait until *pid* sleeps and uses no CPU across 200 ms; returns its
    CPU time then.  Fails if it never does."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        stat = _stat(pid)
        assert stat is not None, "the poller exited"
        if stat[0] == "S":
            before = _cpu_ns(pid)
            time.sleep(0.2)
            stat = _stat(pid)
            after = _cpu_ns(pid)
            if stat is not None and stat[0] == "S" and after == before:
                return after
        time.sleep(0.05)
    raise AssertionError(f"the poller never settled: {_stat(pid)}")


def _read_probe(workdir: Path) -> None:
    """A sandbox whose reads of *workdir* are routed reads a file there,
    enough times for this process's poller to be started."""
    (workdir / "f").write_text("content\n")
    body = f"""
for _ in range({START_AFTER}):
    os.close(os.open({str(workdir / "f")!r}, os.O_RDONLY))
attempt("read", lambda: open({str(workdir / "f")!r}).read())
"""
    _, v = run_probe(body, rules=_glob(workdir))
    assert v["read"] == {"name": "read", "errno": 0, "value": "content\n"}


@needs_poller
def test_poller_runs_at_idle_priority_and_sleeps_once_calls_stop(workdir: Path) -> None:
    _read_probe(workdir)
    pid = _poller_pid()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [b"-I", b"-S", b"-c"]
    # It sets its own policy once it runs: wait for that, not for a speed.
    deadline = time.monotonic() + SETTLE_SECONDS
    while os.sched_getscheduler(pid) != os.SCHED_IDLE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    _wait_asleep(pid)
    # One poller per process: the next sandbox is served by the same one.
    _read_probe(workdir)
    assert _poller_pid() == pid


@needs_poller
def test_poller_spins_while_trapped_calls_flow(workdir: Path) -> None:
    """While a sandbox opens a file in a loop, the poller uses CPU and is
    runnable (R) in most samples: it spins.  A poller that only woke for
    each notification and slept again would mostly be seen asleep (S)."""
    (workdir / "f").write_text("content\n")
    _read_probe(workdir)
    pid = _poller_pid()
    body = f"""
import time
print("burst", flush=True)
end = time.monotonic() + 1.0
n = 0
while time.monotonic() < end:
    os.close(os.open({str(workdir / "f")!r}, os.O_RDONLY))
    n += 1
attempt("opens", lambda: n)
"""
    sb = stockade.Sandbox(read=SYSTEM, rules=_glob(workdir))
    # At the lowest priority the poller may get no CPU for a while on a
    # busy machine: try a few bursts before calling it broken.
    seen = []
    for _ in range(10):
        before = _wait_asleep(pid)
        states: list[str] = []
        proc = sb.popen([PROBE_PY, "-c", probe_code(body)], stdout=stockade.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"burst\n"
            while proc.poll() is None:
                stat = _stat(pid)
                assert stat is not None, "the poller exited"
                states.append(stat[0])
                time.sleep(0.005)
            opens = verdicts(proc.stdout.read())["opens"]
        finally:
            proc.kill_tree()
            proc.wait()
        assert opens["errno"] == 0 and opens["value"] > 0
        used = _cpu_ns(pid) - before
        seen.append((used, states.count("R"), len(states)))
        if used > 0 and states.count("R") * 2 > len(states):
            break
    else:
        raise AssertionError(f"the poller did not spin (ns used, R samples, samples): {seen}")
    # And it stops once they do.
    _wait_asleep(pid)


@needs_poller
def test_a_sandbox_cannot_signal_or_trace_the_poller(workdir: Path) -> None:
    """The poller is a host process: from inside, a signal to it fails
    with EPERM (Landlock's signal scope), and so does attaching to it."""
    _read_probe(workdir)
    pid = _poller_pid()
    body = f"""
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
attempt("kill", lambda: os.kill({pid}, signal.SIGKILL))
attempt("stop", lambda: os.kill({pid}, signal.SIGSTOP))
def seize():
    if libc.ptrace(0x4206, {pid}, 0, 0) != 0:  # PTRACE_SEIZE
        raise OSError(ctypes.get_errno(), "ptrace")
attempt("ptrace", seize)
"""
    _, v = run_probe(body, rules=_glob(workdir))
    assert v["kill"]["errno"] == errno.EPERM
    assert v["stop"]["errno"] == errno.EPERM
    assert v["ptrace"]["errno"] == errno.EPERM
    stat = _stat(pid)
    assert stat is not None and stat[0] not in "TZX"


@needs_poller
def test_sandbox_inherits_none_of_the_pollers_descriptors(workdir: Path) -> None:
    _read_probe(workdir)
    pid = _poller_pid()
    # The memfd and the pipe, as the poller holds them (its stdio is
    # /dev/null), and our write end.
    theirs = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        if int(name) > 2:
            st = os.stat(f"/proc/{pid}/fd/{name}")
            theirs.add((st.st_dev, st.st_ino))
    st = os.fstat(engine.get()._poller._write)
    theirs.add((st.st_dev, st.st_ino))
    assert len(theirs) >= 2  # the memfd and the pipe
    body = """
fds = []
for fd in range(3, 4096):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    fds.append([fd, st.st_dev, st.st_ino])
attempt("fds", lambda: fds)
"""
    _, v = run_probe(body, rules=_glob(workdir))
    assert v["fds"]["errno"] == 0
    inherited = [fd for fd, dev, ino in v["fds"]["value"] if (dev, ino) in theirs]
    assert inherited == []


def _shared_pages() -> set[str]:
    """Our descriptors on a poller's shared page, by number."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if "stockade-idlepoll" in os.readlink(f"/proc/self/fd/{name}"):
                out.add(name)
        except FileNotFoundError:
            pass
    return out


def test_a_poller_that_cannot_start_stays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that cannot be run: no poller, no descriptor left
    behind, and touching it afterwards never fails (the receiver calls it
    on every notification)."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    monkeypatch.delenv("STOCKADE_IDLE_POLL", raising=False)
    poller = IdlePoller()
    if not poller.wanted():
        pytest.skip("no idle poller here (one CPU)")
    before = _shared_pages()
    poller.start()
    assert poller.pid is None
    # What it opened for the poller is closed again: its pipe's other end,
    # and the shared page (compared with what was open before, the pages
    # of this process's own poller included, not by count: other threads
    # open descriptors of their own).
    assert poller._write == -1
    assert _shared_pages() <= before
    for _ in range(2 * START_AFTER):
        poller.touch()
    assert poller.pid is None


def test_touch_before_start_does_nothing() -> None:
    poller = IdlePoller()
    poller.touch()
    poller.touch()
    assert poller.pid is None


# -- in a process of its own --------------------------------------------------------

#: A host that runs one supervised sandbox, then prints the sandbox's exit
#: status and output and its poller's identity, and exits (or waits on
#: stdin to be killed).
HOST = """
import json, os, sys
import stockade
from stockade.supervisor import engine
d, system, then, burst = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sb = stockade.Sandbox(read=system, rules=[f"allow/read+{d}/*"])
code = (f"import os, sys\\nfor _ in range({burst}): os.close(os.open({d!r} + '/f', os.O_RDONLY))\\n"
        f"sys.stdout.write(open({d!r} + '/f').read())")
res = sb.run(["/usr/bin/python3", "-c", code], capture=True, timeout=60)
pid = None
if burst and os.environ.get("STOCKADE_IDLE_POLL") != "0":
    import time
    deadline = time.monotonic() + 20
    while (pid := engine.get()._poller.pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
else:
    pid = engine.get()._poller.pid
ident = None
if pid is not None:
    with open(f"/proc/{pid}/stat") as f:
        ident = f.read().rsplit(")", 1)[1].split()[19]
print(json.dumps({"rc": res.returncode, "out": res.stdout.decode(), "pid": pid,
                  "start": ident}), flush=True)
if then == "wait":
    sys.stdin.read()
elif then == "kill-poller":
    # Killed while it sleeps, so that the next notification finds its
    # pipe broken; the sandboxes after must not notice.
    import signal, time
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "S":
                break
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    engine.get()._poller._proc.wait()
    for _ in range(3):
        res = sb.run(["/usr/bin/python3", "-c", code], capture=True, timeout=60)
        print(json.dumps({"rc": res.returncode, "out": res.stdout.decode(), "pid": pid,
                          "start": ident, "err": res.stderr.decode()[-500:]}), flush=True)
"""


def _host(workdir: Path, then: str, burst: int = START_AFTER, **env: str) -> subprocess.Popen[str]:
    (workdir / "f").write_text("content\n")
    # The package as this test imported it (a source tree or an install).
    src = str(Path(stockade.__file__).resolve().parent.parent)
    environ = {k: v for k, v in os.environ.items() if k != "STOCKADE_IDLE_POLL"}
    environ.update(PYTHONPATH=src, **env)
    return subprocess.Popen(
        [sys.executable, "-c", HOST, str(workdir), json.dumps(SYSTEM), then, str(burst)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        text=True,
    )


def _report(host: subprocess.Popen[str]) -> dict[str, object]:
    """The host's next report, of a run that must have read the file."""
    assert host.stdout is not None
    line = host.stdout.readline()
    assert line, host.stderr.read() if host.stderr else ""
    report: dict[str, object] = json.loads(line)
    assert report["rc"] == 0 and report["out"] == "content\n", report
    return report


def _exited(host: subprocess.Popen[str]) -> dict[str, object]:
    """The report of a host told to exit after it, which it did (status 0)."""
    try:
        report = _report(host)
        assert host.wait(timeout=60) == 0
    finally:
        host.kill()
        host.wait()
    return report


def _wait_gone(pid: int, start: str) -> None:
    """Wait for the process *pid* that started at *start* to exit (gone,
    a zombie, or its pid reused)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        stat = _stat(pid)
        if stat is None or stat[0] in "ZX" or str(stat[1]) != start:
            return
        time.sleep(0.05)
    raise AssertionError(f"the poller {pid} outlived its host: {_stat(pid)}")


@needs_poller
def test_poller_exits_with_its_host(workdir: Path) -> None:
    report = _exited(_host(workdir, "exit"))
    pid, start = report["pid"], report["start"]
    assert isinstance(pid, int) and isinstance(start, str)
    _wait_gone(pid, start)


@needs_poller
def test_poller_exits_when_its_host_is_killed(workdir: Path) -> None:
    host = _host(workdir, "wait")
    try:
        report = _report(host)
        pid, start = report["pid"], report["start"]
        assert isinstance(pid, int) and isinstance(start, str)
        # Alive while its host is.
        stat = _stat(pid)
        assert stat is not None and str(stat[1]) == start and stat[0] != "Z"
        host.send_signal(signal.SIGKILL)
        assert host.wait(timeout=60) == -signal.SIGKILL
    finally:
        host.kill()
        host.wait()
    _wait_gone(pid, start)


def test_no_poller_for_a_short_run(workdir: Path) -> None:
    """A run with few trapped calls does not pay for starting a poller."""
    report = _exited(_host(workdir, "exit", burst=0))
    assert report["pid"] is None


def test_no_poller_when_turned_off(workdir: Path) -> None:
    report = _exited(_host(workdir, "exit", STOCKADE_IDLE_POLL="0"))
    assert report["pid"] is None


@needs_poller
def test_sandboxes_carry_on_when_the_poller_is_killed(workdir: Path) -> None:
    """The poller is an optimisation: with it gone, the supervisor serves
    trapped calls as before (it once gave up the listener instead, and the
    sandbox's opens failed with ENOSYS)."""
    host = _host(workdir, "kill-poller")
    try:
        for _ in range(4):
            _report(host)
        assert host.wait(timeout=60) == 0
    finally:
        host.kill()
        host.wait()
