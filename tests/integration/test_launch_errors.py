"""Real faults in the child's setup: LaunchError names the step and the errno.

The faults are ones the kernel really produces (an affinity mask with no
online CPU, an rlimit the caller may not raise), never mocks.  After
failures the test process must hold exactly the descriptors, children,
temporary directories and cgroups it held before.
"""

from __future__ import annotations

import errno
import gc
import os
import pickle
import resource
import tempfile
import time
from pathlib import Path

import pytest

import stockade
from conftest import SYSTEM, is_root, stockade_cli

#: Far above any CPU this machine has: sched_setaffinity answers EINVAL.
NO_SUCH_CPU = 4095


def nr_open() -> int:
    with open("/proc/sys/fs/nr_open") as f:
        return int(f.read())


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def settled_fds() -> set[str]:
    """Our descriptors once what earlier tests left to finish has finished
    (garbage not yet collected, a supervisor session still letting go of
    a listener): the baseline a leak is measured against."""
    fds = open_fds()
    for _ in range(40):
        gc.collect()
        time.sleep(0.05)
        now = open_fds()
        if now == fds:
            break
        fds = now
    return fds


def descendants(pid: int | None = None) -> set[int]:
    """Every live process below *pid* (default: this one), the fork server
    included, its idle spares not: each start uses a spare and forks the
    next one, so their pids change.  A run that has ended forks the next
    in the background, and the server is named like a spare while it
    forks: looked at until two looks agree."""
    seen = _not_spares(pid)
    for _ in range(40):
        time.sleep(0.02)
        now = _not_spares(pid)
        if now == seen:
            break
        seen = now
    return seen


def _not_spares(pid: int | None) -> set[int]:
    return {p for p in _descendants(pid) if _comm(p) != "stockade-spare"}


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _descendants(pid: int | None = None) -> set[int]:
    found: set[int] = set()
    stack = [os.getpid() if pid is None else pid]
    while stack:
        parent = stack.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except (FileNotFoundError, ProcessLookupError):  # gone, or being reaped
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = {int(x) for x in f.read().split()}
            except (FileNotFoundError, ProcessLookupError):
                continue
            stack.extend(kids - found)
            found |= kids
    return found


SPAWNERS = pytest.mark.parametrize("spawner", ["server"])


def touch_command(marker: Path) -> list[str]:
    return ["/bin/sh", "-c", f"touch {marker}"]


def check_error(err: stockade.LaunchError, step: str, number: int) -> None:
    assert err.step == step
    assert err.errno == number
    text = str(err)
    assert "\n" not in text
    assert step in text
    assert errno.errorcode[number] in text
    assert isinstance(err, stockade.StockadeError)
    assert type(err).__module__ == "stockade"
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own object
    assert (type(again), again.step, again.errno, str(again)) == (type(err), step, number, text)


@SPAWNERS
def test_affinity_to_a_missing_cpu_is_einval(workdir: Path, spawner: str) -> None:
    marker = workdir / "marker"
    sb = stockade.Sandbox(read=SYSTEM, write=[workdir], cpus=[NO_SUCH_CPU], spawner=spawner)
    with pytest.raises(stockade.LaunchError) as info:
        sb.run(touch_command(marker))
    check_error(info.value, "sched_setaffinity", errno.EINVAL)
    assert not marker.exists()


@SPAWNERS
def test_affinity_error_from_popen_too(workdir: Path, spawner: str) -> None:
    marker = workdir / "marker"
    sb = stockade.Sandbox(read=SYSTEM, write=[workdir], cpus=[NO_SUCH_CPU], spawner=spawner)
    with pytest.raises(stockade.LaunchError) as info:
        sb.popen(touch_command(marker), stdout=stockade.PIPE)
    check_error(info.value, "sched_setaffinity", errno.EINVAL)
    assert not marker.exists()


@SPAWNERS
def test_valid_affinity_is_applied(spawner: str) -> None:
    cpu = max(os.sched_getaffinity(0))
    sb = stockade.Sandbox(read=SYSTEM, cpus=[cpu], spawner=spawner)
    res = sb.run(
        ["/usr/bin/python3", "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        capture=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"[{cpu}]\n".encode()


@pytest.mark.skipif(is_root(), reason="root may raise its hard limits (CAP_SYS_RESOURCE)")
@SPAWNERS
def test_rlimit_above_the_hard_limit_is_eperm(workdir: Path, spawner: str) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard RLIMIT_NOFILE is unlimited here")
    marker = workdir / "marker"
    sb = stockade.Sandbox(
        read=SYSTEM, write=[workdir], rlimits=[f"nofile={hard + 1}"], spawner=spawner
    )
    with pytest.raises(stockade.LaunchError) as info:
        sb.run(touch_command(marker))
    check_error(info.value, "setrlimit", errno.EPERM)
    assert not marker.exists()


@SPAWNERS
def test_nofile_above_nr_open_is_eperm_for_everyone(workdir: Path, spawner: str) -> None:
    # fs.nr_open caps RLIMIT_NOFILE even for CAP_SYS_RESOURCE.
    marker = workdir / "marker"
    sb = stockade.Sandbox(
        read=SYSTEM, write=[workdir], rlimits=[f"nofile={nr_open() + 1}"], spawner=spawner
    )
    with pytest.raises(stockade.LaunchError) as info:
        sb.run(touch_command(marker))
    check_error(info.value, "setrlimit", errno.EPERM)
    assert not marker.exists()


def test_cli_reports_a_launch_error_with_125_and_one_line(workdir: Path) -> None:
    marker = workdir / "marker"
    proc = stockade_cli(
        "run", *[f"-r{p}" for p in SYSTEM], "-w", str(workdir), "--cpus", str(NO_SUCH_CPU),
        "--", *touch_command(marker),
    )  # fmt: skip
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "sched_setaffinity" in proc.stderr
    assert "EINVAL" in proc.stderr
    assert proc.stdout == ""
    assert not marker.exists()


@SPAWNERS
def test_failed_launches_leak_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, spawner: str
) -> None:
    # Private tmp directories go to a directory of our own, to count them.
    private = workdir / "private-tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.chdir(workdir)
    marker = workdir / "marker"
    failing = [
        stockade.Sandbox(cpus=[NO_SUCH_CPU], spawner=spawner),  # default profile: private tmp
        stockade.Sandbox(read=SYSTEM, rlimits=[f"nofile={nr_open() + 1}"], spawner=spawner),
        stockade.Sandbox(read=SYSTEM, max_procs=5, cpus=[NO_SUCH_CPU], spawner=spawner),
    ]
    # Warm up once, so that what lives as long as the process (the fork
    # server, cached probes) or the sandbox (its cached ruleset) exists
    # before counting.
    for sb in failing:
        with pytest.raises(stockade.LaunchError):
            sb.run(touch_command(marker))
    before_fds, before_procs = settled_fds(), descendants()
    for i in range(20):
        sb = failing[i % len(failing)]
        with pytest.raises(stockade.LaunchError):
            if i % 2:
                sb.run(touch_command(marker), capture=True, input=b"data")
            else:
                sb.popen(touch_command(marker), stdout=stockade.PIPE, stderr=stockade.PIPE)
    assert open_fds() == before_fds
    assert descendants() == before_procs
    assert list(private.iterdir()) == []
    assert not marker.exists()
    # And sandboxes still start afterwards.
    res = stockade.Sandbox(read=SYSTEM, spawner=spawner).run(["/bin/true"])
    assert res.returncode == 0
    assert open_fds() == before_fds
    assert descendants() == before_procs


@pytest.mark.skipif(not is_root(), reason="the pids cgroup is used only as root")
@SPAWNERS
def test_failed_launches_leave_no_cgroup(spawner: str) -> None:
    from stockade.kernel import cgroup

    root = cgroup.pids_root()
    assert root is not None
    prefix = f"stockade-{os.getpid()}-"
    sb = stockade.Sandbox(read=SYSTEM, max_procs=5, cpus=[NO_SUCH_CPU], spawner=spawner)
    for _ in range(3):
        with pytest.raises(stockade.LaunchError):
            sb.run(["/bin/true"])
    assert [n for n in os.listdir(root) if n.startswith(prefix)] == []


@SPAWNERS
def test_missing_command_is_file_not_found_and_leaks_nothing(workdir: Path, spawner: str) -> None:
    sb = stockade.Sandbox(read=SYSTEM, spawner=spawner)
    sb.run(["/bin/true"])
    before_fds, before_procs = settled_fds(), descendants()
    for _ in range(5):
        with pytest.raises(FileNotFoundError) as info:
            sb.run([str(workdir / "no-such-command")])
        assert info.value.errno == errno.ENOENT
    assert open_fds() == before_fds
    assert descendants() == before_procs
