"""No descriptor crosses into the sandbox, and none leaks out (SPEC section 8).

A descriptor opened before the sandbox was entered keeps the access it was
opened with: Landlock checks at open time.  So one inheritable descriptor
to a secret is a complete escape, and the only defence is that the sandbox
starts with exactly 0, 1 and 2.  The test process opens inheritable
descriptors to a secret, then looks from inside through every spawner: the
fork server (the API's default), ``spawner="fork"``, and the command line
(which receives the descriptors itself, as a careless caller would pass
them).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, stockade_cli, verdicts

HIDDEN = "top secret\n"

PROBE = """
attempt("fds", lambda: sorted(int(n) for n in os.listdir("/proc/self/fd")))
for n in LEAKED:
    attempt(f"fstat_{n}", lambda: os.fstat(n).st_size)
    attempt(f"read_{n}", lambda: os.read(n, 64).decode())
    attempt(f"proc_{n}", lambda: open(f"/proc/self/fd/{n}").read())
    attempt(f"parent_{n}", lambda: open(f"/proc/{os.getppid()}/fd/{n}").read())
attempt("secret", lambda: open(SECRET_PATH).read())
"""


@pytest.fixture
def leaked(workdir: Path) -> Iterator[tuple[Path, list[int]]]:
    """Inheritable descriptors to a secret (low, high, a socket) held by
    this process; yields the secret's path and the descriptor numbers."""
    secret = workdir / "secret.txt"
    secret.write_text(HIDDEN)
    low = os.open(secret, os.O_RDONLY)
    high = os.dup2(low, 77, inheritable=True)
    sock_a, sock_b = socket.socketpair()
    sock_b.sendall(HIDDEN.encode())
    fds = [low, high, sock_a.fileno()]
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        yield secret, fds
    finally:
        os.close(low)
        os.close(high)
        sock_a.close()
        sock_b.close()


def body(secret: Path, fds: list[int]) -> str:
    return f"LEAKED = {fds!r}\nSECRET_PATH = {str(secret)!r}\n" + PROBE


def check(v: dict[str, dict[str, object]], fds: list[int], parent_holds: bool) -> None:
    # 3 is the descriptor listdir itself holds open.
    assert v["fds"] == {"name": "fds", "errno": 0, "value": [0, 1, 2, 3]}
    for n in fds:
        assert v[f"fstat_{n}"]["errno"] == errno.EBADF
        assert v[f"read_{n}"]["errno"] == errno.EBADF
        assert v[f"proc_{n}"]["errno"] == errno.ENOENT
        # The parent's copy is out of reach (ptrace-mode check, EACCES).  The
        # fork server never held them: no such entry (ENOENT), or one of its
        # own descriptors under that number, out of reach all the same
        # (tests that need it check from outside that none is the secret).
        expected = {errno.EACCES} if parent_holds else {errno.ENOENT, errno.EACCES}
        assert v[f"parent_{n}"]["errno"] in expected
    # And the path itself is denied, so the descriptors were the only way.
    assert v["secret"]["errno"] == errno.EACCES


@pytest.mark.parametrize("spawner", ["server"])
def test_api_starts_with_stdio_only(leaked: tuple[Path, list[int]], spawner: str) -> None:
    secret, fds = leaked
    res, v = run_probe(body(secret, fds), read=["/proc"], spawner=spawner)
    assert res.returncode == 0, res.stderr
    check(v, fds, parent_holds=spawner == "fork")
    if spawner == "server":
        # Seen from here: nothing the fork server or its spare holds is the
        # secret.
        from stockade.launch import client

        server = client.get()._pid
        spares = Path(f"/proc/{server}/task/{server}/children").read_text().split()
        for pid in [server, *map(int, spares)]:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except FileNotFoundError:
                    continue
                assert target != str(secret)


def test_cli_does_not_pass_on_what_it_inherited(leaked: tuple[Path, list[int]]) -> None:
    secret, fds = leaked
    args = [a for path in [*SYSTEM, "/proc"] for a in ("-r", path)]
    proc = stockade_cli(
        "run", *args, "--", PROBE_PY, "-c", probe_code(body(secret, fds)), pass_fds=fds
    )
    assert proc.returncode == 0, proc.stderr
    # The command's parent is the CLI's fork server, which never held them.
    check(verdicts(proc.stdout), fds, parent_holds=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pass_fds": [0]},
        {"close_fds": False},
        {"preexec_fn": lambda: None},
        {"start_new_session": False},
        {"user": 0},
    ],
    ids=["pass_fds", "close_fds", "preexec_fn", "start_new_session", "user"],
)
def test_popen_refuses_what_would_undo_the_sandbox(
    leaked: tuple[Path, list[int]], kwargs: dict[str, object]
) -> None:
    sb = stockade.Sandbox(read=SYSTEM)
    with pytest.raises(stockade.PolicyError):
        sb.popen([PROBE_PY, "-c", "pass"], **kwargs)


def test_pass_fds_of_a_secret_is_refused(leaked: tuple[Path, list[int]]) -> None:
    _, fds = leaked
    sb = stockade.Sandbox(read=SYSTEM)
    with pytest.raises(stockade.PolicyError, match="pass_fds"):
        sb.popen([PROBE_PY, "-c", "import os; os.read(3, 1)"], pass_fds=fds)


def open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("spawner", ["server"])
def test_no_descriptor_leaks_into_the_host(spawner: str) -> None:
    sb = stockade.Sandbox(read=SYSTEM, spawner=spawner)
    # The first run may start the fork server, which keeps one socket.
    sb.run([PROBE_PY, "-c", "pass"], capture=True)
    before = open_fds()
    for code in ("pass", "raise SystemExit(3)", "import os; os.kill(os.getpid(), 9)"):
        sb.run([PROBE_PY, "-c", code], capture=True, input=b"x")
    with sb.popen([PROBE_PY, "-c", "print(1)"], stdout=stockade.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read() == b"1\n"
    assert proc.returncode == 0
    with pytest.raises(FileNotFoundError):
        sb.run(["/nonexistent/command"])
    assert open_fds() == before
