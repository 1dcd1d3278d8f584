"""The supervisor engine: one receiver, a worker pool, several sandboxes
at once, a slow handler blocking nobody else, a failing handler denying
only its own call (SPEC section 8), idle workers retiring."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, probe_code, run_probe, verdicts
from stockade.kernel import syscalls
from stockade.supervisor import engine, session


def _glob(d: Path) -> list[str]:
    # A glob rule: reads of d go to the supervisor.
    return [f"allow/read+{d}/*"]


def test_several_sandboxes_at_once(workdir: Path) -> None:
    for i in range(4):
        (workdir / f"f{i}").write_text(f"content {i}\n")
    body = """
import sys
n = 0
for _ in range(200):
    with open(sys.argv[1]) as f:
        n += f.read().startswith("content")
attempt("opens", lambda: n)
"""
    results: list[Any] = [None] * 4

    def one(i: int) -> None:
        sb = stockade.Sandbox(read=SYSTEM, rules=_glob(workdir))
        res = sb.run([PROBE_PY, "-c", probe_code(body), str(workdir / f"f{i}")], capture=True,
                     timeout=60)  # fmt: skip
        results[i] = res

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results:
        assert res.returncode == 0, res.stderr
        assert verdicts(res.stdout)["opens"]["value"] == 200
        assert [d for d in res.denials if d.target.startswith(str(workdir))] == []


def test_a_blocked_handler_blocks_nobody_else(workdir: Path) -> None:
    """One sandbox's open of a FIFO blocks in a worker (the supervisor opens
    it); another sandbox, and another thread of the first, carry on."""
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    (workdir / "plain").write_text("plain\n")
    sb = stockade.Sandbox(read=SYSTEM, rules=_glob(workdir))
    blocked = sb.popen(
        [PROBE_PY, "-c", probe_code(f"""
import threading
def other():
    for _ in range(50):
        open({str(workdir / "plain")!r}).read()
    print("other thread done", flush=True)
threading.Thread(target=other).start()
attempt("fifo", lambda: open({str(fifo)!r}).read())
""")],
        stdout=stockade.PIPE,
        stderr=stockade.PIPE,
    )  # fmt: skip
    try:
        assert blocked.stdout is not None
        assert blocked.stdout.readline() == b"other thread done\n"
        _, v = run_probe(
            f'attempt("plain", lambda: open({str(workdir / "plain")!r}).read())',
            rules=_glob(workdir),
        )
        assert v["plain"] == {"name": "plain", "errno": 0, "value": "plain\n"}
        assert blocked.poll() is None
        with open(fifo, "w") as f:
            f.write("through\n")
        out, err = blocked.communicate(timeout=30)
        assert verdicts(out)["fifo"]["value"] == "through\n", err
    finally:
        blocked.kill_tree()
        blocked.wait()


def test_a_failing_handler_denies_that_call_and_the_supervisor_goes_on(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "boom").write_text("boom\n")
    (workdir / "fine").write_text("fine\n")
    real = session.HANDLERS[syscalls.nr("openat")]

    def failing(s: Any, w: Any, n: Any, caller: Any) -> None:
        path = w.mem.cstring(n.pid, n.data.args[1])
        if path.endswith(b"/boom"):
            raise RuntimeError("injected failure")
        real(s, w, n, caller)

    monkeypatch.setitem(session.HANDLERS, syscalls.nr("openat"), failing)
    res, v = run_probe(
        f"""
attempt("boom", lambda: open({str(workdir / "boom")!r}).read())
attempt("fine", lambda: open({str(workdir / "fine")!r}).read())
attempt("boom again", lambda: open({str(workdir / "boom")!r}).read())
""",
        rules=_glob(workdir),
    )
    assert v["boom"]["errno"] == errno.EACCES
    assert v["fine"] == {"name": "fine", "errno": 0, "value": "fine\n"}
    assert v["boom again"]["errno"] == errno.EACCES
    failures = [d for d in res.denials if d.rule == "handler failure"]
    assert len(failures) == 2 and failures[0].syscall == "openat"
    # And the next sandbox is served as usual.
    monkeypatch.setitem(session.HANDLERS, syscalls.nr("openat"), real)
    _, v = run_probe(f'attempt("boom", lambda: open({str(workdir / "boom")!r}).read())',
                     rules=_glob(workdir))  # fmt: skip
    assert v["boom"]["value"] == "boom\n"


def test_idle_workers_retire(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three calls blocked at once need three workers; once idle, all but
    one retire."""
    monkeypatch.setattr(engine, "IDLE_SECONDS", 0.3)
    fifos = [workdir / f"fifo{i}" for i in range(3)]
    for f in fifos:
        os.mkfifo(f)
    sb = stockade.Sandbox(read=SYSTEM, rules=_glob(workdir))
    body = "import threading\n" + "".join(
        f"threading.Thread(target=lambda: open({str(f)!r}).read()).start()\n" for f in fifos
    )
    proc = sb.popen([PROBE_PY, "-c", probe_code(body)])
    try:
        deadline = time.monotonic() + 20
        while engine.get().workers < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.get().workers >= 3
        for f in fifos:
            with open(f, "w") as w:
                w.write("x")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill_tree()
        proc.wait()
    deadline = time.monotonic() + 20
    while engine.get().workers > engine.MIN_WORKERS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.get().workers == engine.MIN_WORKERS
