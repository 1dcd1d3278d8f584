"""Races against the open fast path (supervisor/fs.py, ``q_open``), which
decides a path as text before it opens it, and answers in the thread
that receives every sandbox's calls.

- ``..`` is applied as text: ``allowed/sub/../data`` is decided as
  ``allowed/data``.  Here a process outside the sandbox moves ``sub``
  between the allowed and the denied directory while the sandbox opens
  that path in a loop: if the supervisor opened a ``..`` that ran under a
  rename, some opens would read the denied directory's ``data``.
- A FIFO swapped in for a regular file after the receiver looked at it:
  the receiver's open must not wait for a writer (it opens without
  blocking and hands the FIFO to a worker), so another sandbox's opens
  go on throughout.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from conftest import run_probe

SECONDS = 3.0


def test_moving_a_directory_under_dotdot_never_reads_the_denied_file(workdir: Path) -> None:
    allowed, denied = workdir / "ok", workdir / "no"
    for d, text in ((allowed, "PUBLIC\n"), (denied, "SECRET\n")):
        d.mkdir()
        (d / "data").write_text(text)
    (allowed / "sub").mkdir()
    stop = threading.Event()

    def mover() -> None:
        while not stop.is_set():
            for src, dst in ((allowed / "sub", denied / "sub"), (denied / "sub", allowed / "sub")):
                try:
                    os.rename(src, dst)
                except OSError:
                    pass

    t = threading.Thread(target=mover)
    t.start()
    try:
        res, v = run_probe(
            f"""
import time
PATH = {str(allowed / "sub" / ".." / "data")!r}
counts = {{"public": 0, "secret": 0, "errors": {{}}}}
stop = time.monotonic() + {SECONDS}
while time.monotonic() < stop:
    try:
        fd = os.open(PATH, os.O_RDONLY)
    except OSError as e:
        counts["errors"][e.errno] = counts["errors"].get(e.errno, 0) + 1
        continue
    data = os.read(fd, 64)
    os.close(fd)
    counts["secret" if b"SECRET" in data else "public"] += 1
attempt("counts", lambda: json.dumps(counts))
""",
            rules=[f"allow/read+{allowed}/**", f"allow/read+{allowed}"],
            timeout=60,
        )
    finally:
        stop.set()
        t.join()
    assert res.returncode == 0, res.stderr
    counts = json.loads(v["counts"]["value"])
    assert counts["secret"] == 0, counts
    # The race ran: some opens found sub in place, some did not.
    assert counts["public"] > 0, counts
    assert set(counts["errors"]) <= {"2", "13"}, counts  # ENOENT, EACCES


def test_a_fifo_swapped_in_never_stalls_the_receiver(workdir: Path) -> None:
    """The sandbox opens ``target`` (blocking) in a loop while a process
    outside swaps a regular file and a FIFO under that name; another
    process outside releases any reader waiting on the FIFO.  A receiver
    that waited on the FIFO would stall every sandbox: a second sandbox's
    opens must complete throughout."""
    target = workdir / "target"
    fifo, plain = workdir / "fifo", workdir / "plain"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    alias = workdir / "fifo-alias"
    os.link(fifo, alias)  # reachable whatever name it has at the moment
    plain.write_text("plain\n")
    (workdir / "other").write_text("other\n")
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            for src in (fifo, plain):
                try:
                    os.link(src, workdir / "next")
                    os.rename(workdir / "next", target)
                except OSError:
                    try:
                        os.unlink(workdir / "next")
                    except OSError:
                        pass

    def releaser() -> None:
        while not stop.is_set():
            try:
                os.close(os.open(alias, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                time.sleep(0.001)

    threads = [threading.Thread(target=swapper), threading.Thread(target=releaser)]
    for t in threads:
        t.start()
    results: dict[str, object] = {}

    def first() -> None:
        results["swapped"] = run_probe(
            f"""
import time
n = {{"file": 0, "fifo": 0}}
stop = time.monotonic() + {SECONDS}
while time.monotonic() < stop:
    try:
        with open({str(target)!r}) as f:
            n["file" if f.read() == "plain\\n" else "fifo"] += 1
    except OSError:
        pass
attempt("n", lambda: json.dumps(n))
""",
            rules=[f"allow/read+{workdir}/**"],
            timeout=60,
        )

    try:
        t1 = threading.Thread(target=first)
        t1.start()
        rounds = 0
        while t1.is_alive():
            _, v = run_probe(
                f"""
n = 0
for _ in range(50):
    n += open({str(workdir / "other")!r}).read() == "other\\n"
attempt("n", lambda: n)
""",
                rules=[f"allow/read+{workdir}/**"],
                timeout=60,
            )
            assert v["n"]["value"] == 50
            rounds += 1
        t1.join()
    finally:
        stop.set()
        for t in threads:
            t.join()
    res, v = results["swapped"]  # type: ignore[misc]
    assert res.returncode == 0, res.stderr
    n = json.loads(v["n"]["value"])
    assert n["file"] > 0, n
    assert rounds > 0
