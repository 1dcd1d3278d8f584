"""Resource limits seen from inside real sandboxes.

Each limit is checked twice: by its witness, ``/proc/self/limits`` read by
the sandboxed process, and by its effect (an allocation, a fork, a write
or a busy loop failing the way the kernel documents).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
from pathlib import Path
from typing import Any

import pytest

import stockade
from conftest import SYSTEM, is_root, run_probe

#: Reading /proc/self/limits needs /proc.
PROC = ["/proc"]


def probe(body: str, **sandbox: Any) -> tuple[stockade.Result, dict[str, dict[str, Any]]]:
    """``run_probe`` with /proc readable too."""
    sandbox["read"] = PROC + list(sandbox.get("read", []))
    return run_probe(body, **sandbox)


LIMITS = """
import resource
def setrlimit(res, soft, hard):
    # resource.setrlimit turns EPERM into ValueError; report the errno.
    try:
        resource.setrlimit(res, (soft, hard))
    except ValueError as e:
        raise OSError(errno.EPERM, str(e)) from None
def limit(title):
    with open("/proc/self/limits") as f:
        for line in f:
            if line.startswith(title):
                return line[len(title):].split()[:2]
    return None
"""


def test_memory_limit_is_rlimit_data() -> None:
    res, v = probe(
        LIMITS
        + """
def alloc(mb):
    try:
        block = bytearray(mb << 20)
        block[-1] = 1
        return len(block) >> 20
    except MemoryError:
        return "MemoryError"
attempt("limits", lambda: limit("Max data size"))
attempt("20M", lambda: alloc(20))
attempt("200M", lambda: alloc(200))
attempt("20M again", lambda: alloc(20))
""",
        memory="64M",
    )
    assert res.returncode == 0, res.stderr
    assert v["limits"]["value"] == ["67108864", "67108864"]
    assert v["20M"]["value"] == 20
    assert v["200M"]["value"] == "MemoryError"
    assert v["20M again"]["value"] == 20


def test_no_memory_option_leaves_data_unlimited() -> None:
    res, v = probe(LIMITS + 'attempt("limits", lambda: limit("Max data size"))\n')
    assert res.returncode == 0, res.stderr
    assert v["limits"]["value"] == ["unlimited", "unlimited"]


FORK_MANY = """
import time
def fork_many(n):
    r, w = os.pipe()
    kids, failure = [], 0
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError as e:
            failure = e.errno
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        kids.append(pid)
    os.close(w)
    for pid in kids:
        os.waitpid(pid, 0)
    return [len(kids), failure]
"""


@pytest.mark.skipif(is_root(), reason="RLIMIT_NPROC does not bind root; root uses a cgroup")
def test_max_procs_unprivileged_is_rlimit_nproc() -> None:
    res, v = probe(LIMITS + 'attempt("limits", lambda: limit("Max processes"))\n', max_procs=7)
    assert res.returncode == 0, res.stderr
    assert v["limits"]["value"] == ["7", "7"]


@pytest.mark.skipif(is_root(), reason="RLIMIT_NPROC does not bind root; root uses a cgroup")
def test_max_procs_one_unprivileged_forbids_fork() -> None:
    # RLIMIT_NPROC counts every process of the real uid, and the probe is one.
    res, v = probe(FORK_MANY + 'attempt("fork", lambda: fork_many(3))\n', max_procs=1)
    assert res.returncode == 0, res.stderr
    assert v["fork"]["value"] == [0, errno.EAGAIN]


@pytest.mark.skipif(not is_root(), reason="the pids cgroup is used only as root")
def test_max_procs_as_root_uses_a_pids_cgroup() -> None:
    n = 10
    res, v = probe(
        FORK_MANY
        + LIMITS
        + f"""
attempt("fork", lambda: fork_many({n + 5}))
attempt("cgroup", lambda: open("/proc/self/cgroup").read())
attempt("limits", lambda: limit("Max processes"))
""",
        max_procs=n,
    )
    assert res.returncode == 0, res.stderr
    started, failure = v["fork"]["value"]
    assert failure == errno.EAGAIN
    # The probe itself is one of the n.
    assert n - 2 <= started <= n - 1
    assert "stockade-" in v["cgroup"]["value"]
    with open("/proc/self/limits") as f:
        host_nproc = next(line for line in f if line.startswith("Max processes")).split()[2:4]
    assert v["limits"]["value"] == host_nproc


@pytest.mark.skipif(not is_root(), reason="the pids cgroup is used only as root")
def test_max_procs_cgroup_is_removed_after_the_run() -> None:
    res, v = probe('attempt("cgroup", lambda: open("/proc/self/cgroup").read())\n', max_procs=4)
    assert res.returncode == 0, res.stderr
    text = v["cgroup"]["value"]
    path = next(line.split(":", 2)[2] for line in text.splitlines() if "stockade-" in line)
    leftovers = [
        root for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
        if os.path.exists(root + path)
    ]  # fmt: skip
    assert leftovers == []


def test_rlimit_nofile() -> None:
    res, v = probe(
        LIMITS
        + """
def open_many():
    fds = []
    try:
        while len(fds) < 1000:
            fds.append(os.open("/usr", os.O_RDONLY))
    except OSError as e:
        return [max(fds), e.errno]
    finally:
        for fd in fds:
            os.close(fd)
attempt("limits", lambda: limit("Max open files"))
attempt("open", open_many)
""",
        rlimits=["nofile=64"],
    )
    assert res.returncode == 0, res.stderr
    assert v["limits"]["value"] == ["64", "64"]
    assert v["open"]["value"] == [63, errno.EMFILE]


def test_rlimit_core_zero_and_mapping_form() -> None:
    res, v = probe(
        LIMITS
        + """
attempt("core", lambda: limit("Max core file size"))
attempt("stack", lambda: limit("Max stack size"))
""",
        rlimits={"core": 0, "stack": "4M"},
    )
    assert res.returncode == 0, res.stderr
    assert v["core"]["value"] == ["0", "0"]
    assert v["stack"]["value"] == ["4194304", "4194304"]


def test_rlimit_fsize_gives_efbig_to_a_process_ignoring_sigxfsz(workdir: Path) -> None:
    # CPython ignores SIGXFSZ, so the write itself reports EFBIG.
    target = workdir / "big"
    res, v = probe(
        LIMITS
        + f"""
import signal
attempt("sigxfsz ignored", lambda: int(signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN))
fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT, 0o644)
attempt("limits", lambda: limit("Max file size"))
attempt("up to the limit", lambda: os.write(fd, b"x" * 1000))
attempt("past the limit", lambda: os.write(fd, b"y"))
""",
        write=[workdir],
        rlimits=["fsize=1000"],
    )
    assert res.returncode == 0, res.stderr
    assert v["sigxfsz ignored"]["value"] == 1
    assert v["limits"]["value"] == ["1000", "1000"]
    assert v["up to the limit"]["value"] == 1000
    assert v["past the limit"]["errno"] == errno.EFBIG
    assert target.stat().st_size == 1000


def test_rlimit_fsize_kills_a_shell_with_sigxfsz(workdir: Path) -> None:
    target = workdir / "big"
    sb = stockade.Sandbox(read=SYSTEM, write=[workdir], rlimits=["fsize=1000"])
    res = sb.run(
        ["/bin/sh", "-c", f"echo started; printf '%5000s' x > {target}; echo survived"],
        capture=True,
        timeout=30,
    )
    assert res.stdout == b"started\n"
    assert res.returncode == -signal.SIGXFSZ
    assert res.signal == signal.SIGXFSZ
    assert target.stat().st_size <= 1000


def test_rlimit_cpu_kills_a_busy_loop() -> None:
    sb = stockade.Sandbox(read=SYSTEM, rlimits=["cpu=1"])
    res = sb.run(["/bin/sh", "-c", "echo started; while :; do :; done"], capture=True, timeout=30)
    assert res.stdout == b"started\n"
    assert not res.timed_out
    assert res.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert res.duration < 20


def test_rlimit_soft_and_hard() -> None:
    res, v = probe(
        LIMITS
        + """
attempt("limits", lambda: limit("Max open files"))
attempt("raise soft to hard", lambda: setrlimit(resource.RLIMIT_NOFILE, 64, 64))
attempt("after", lambda: limit("Max open files"))
attempt("raise hard", lambda: setrlimit(resource.RLIMIT_NOFILE, 64, 65))
""",
        rlimits=["nofile=32:64"],
    )
    assert res.returncode == 0, res.stderr
    assert v["limits"]["value"] == ["32", "64"]
    assert v["raise soft to hard"]["errno"] == 0
    assert v["after"]["value"] == ["64", "64"]
    # Even a root caller's sandbox has no CAP_SYS_RESOURCE to raise it back.
    assert v["raise hard"]["errno"] == errno.EPERM


def test_rlimit_soft_unlimited_text() -> None:
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard != resource.RLIM_INFINITY and not is_root():
        pytest.skip("needs an unlimited hard core limit to ask for 0:unlimited")
    res, v = probe(
        LIMITS + 'attempt("core", lambda: limit("Max core file size"))\n',
        rlimits=["core=0:unlimited"],
    )
    assert res.returncode == 0, res.stderr
    assert v["core"]["value"] == ["0", "unlimited"]


def test_soft_above_hard_is_a_policy_error() -> None:
    with pytest.raises(stockade.PolicyError, match="SOFT <= HARD"):
        stockade.Sandbox(read=SYSTEM, rlimits=["nofile=64:32"])
