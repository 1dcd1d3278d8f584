"""Events (SPEC section 6): denials that name their rule, the ``on_event``
callback (allow, deny, errno, audit; exceptions deny; exec with argv), and
``--log`` as JSON lines."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, stockade_cli, verdicts


def _files(workdir: Path) -> None:
    for name in ("allow.txt", "deny.txt", "errno.txt", "audit.txt", "raise.txt"):
        (workdir / name).write_text(name)


def test_on_event_verdicts(workdir: Path) -> None:
    _files(workdir)
    seen: list[Any] = []
    lock = threading.Lock()

    def on_event(event: Any) -> Any:
        with lock:
            seen.append(event)
        name = os.path.basename(event.target)
        if name == "deny.txt":
            return "deny"
        if name == "errno.txt":
            return errno.ENOENT
        if name == "audit.txt":
            return "audit"
        if name == "raise.txt":
            raise RuntimeError("callback bug")
        return None

    body = "".join(
        f"attempt({name!r}, lambda: open({str(workdir / name)!r}).read())\n"
        for name in ("allow.txt", "deny.txt", "errno.txt", "audit.txt", "raise.txt")
    )
    res, v = run_probe(body, read=[workdir], on_event=on_event)
    assert v["allow.txt"]["value"] == "allow.txt"
    assert v["deny.txt"]["errno"] == errno.EACCES
    assert v["errno.txt"]["errno"] == errno.ENOENT
    assert v["audit.txt"]["value"] == "audit.txt"
    assert v["raise.txt"]["errno"] == errno.EACCES  # an exception denies
    by_target = {e.target: e for e in seen}
    assert by_target[str(workdir / "allow.txt")].action == "allow"
    assert by_target[str(workdir / "allow.txt")].rule == f"allow/read+{workdir}/***"
    denied = {d.target: d for d in res.denials}
    assert denied[str(workdir / "deny.txt")].rule == "on_event"
    assert denied[str(workdir / "errno.txt")].errno == errno.ENOENT
    assert str(workdir / "allow.txt") not in denied
    # The callback sees the command's own exec, with its argv.
    execs = [e for e in seen if e.category == "exec"]
    assert execs and execs[0].argv is not None and execs[0].argv[0] == PROBE_PY
    assert execs[0].syscall == "execve"
    for e in seen:
        assert {"time", "pid", "syscall", "category", "target", "action", "errno"} <= set(
            e.to_dict()
        )


def test_on_event_cannot_grant_what_the_policy_denies(workdir: Path) -> None:
    (workdir / "outside").write_text("secret")
    res, v = run_probe(
        f'attempt("outside", lambda: open({str(workdir / "outside")!r}).read())',
        on_event=lambda event: "allow",
    )
    assert v["outside"]["errno"] == errno.EACCES
    assert any(d.target == str(workdir / "outside") and d.rule is None for d in res.denials)


def test_on_event_sees_connects(workdir: Path) -> None:
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = workdir / "s.sock"
    server.bind(str(path))
    server.listen()
    seen: list[Any] = []
    try:
        _, v = run_probe(
            f"""
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
attempt("connect", lambda: s.connect({str(path)!r}))
""",
            write=[workdir],
            on_event=lambda e: seen.append(e) or ("deny" if e.syscall == "connect" else None),
        )
    finally:
        server.close()
    assert v["connect"]["errno"] == errno.EACCES
    assert [e.target for e in seen if e.syscall == "connect"] == [str(path)]


def test_on_event_must_be_callable() -> None:
    try:
        stockade.Sandbox(read=SYSTEM, on_event="deny")  # type: ignore[arg-type]
    except stockade.PolicyError as err:
        assert "on_event" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("a non-callable on_event was accepted")


def test_log_to_stderr_names_denials_and_their_rules(workdir: Path) -> None:
    (workdir / "no.txt").write_text("x")
    proc = stockade_cli(
        "run", *[f"-r{p}" for p in SYSTEM], "-r", str(workdir),
        "--deny", f"{workdir}/no*", "--log", "-", "--",
        PROBE_PY, "-c", probe_code(f'attempt("no", lambda: open({str(workdir / "no.txt")!r}))'),
        cwd=workdir,
    )  # fmt: skip
    assert verdicts(proc.stdout)["no"]["errno"] == errno.EACCES
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    denial = [e for e in events if e["action"] == "deny" and e["target"].startswith(str(workdir))]
    assert denial and denial[0]["target"] == str(workdir / "no.txt")
    assert denial[0]["rule"] == f"deny/read+{workdir}/no*/***"  # --deny denies the tree
    assert denial[0]["syscall"] == "openat" and denial[0]["errno"] == errno.EACCES
    assert [e["category"] for e in events if e["action"] != "deny"] == ["exec", "exit"]


def test_denials_of_a_run_with_several_processes(workdir: Path) -> None:
    (workdir / "x.txt").write_text("x")
    sb = stockade.Sandbox(read=SYSTEM, rules=[f"allow/read+{workdir}/*.bin"])
    res = sb.run(
        [PROBE_PY, "-c", probe_code(f"""
import subprocess
subprocess.run([sys.executable, "-c", "open({str(workdir / 'x.txt')!r})"])
attempt("x", lambda: open({str(workdir / "x.txt")!r}))
""")],
        capture=True,
    )  # fmt: skip
    pids = {d.pid for d in res.denials if d.target == str(workdir / "x.txt")}
    assert len(pids) == 2
