"""The supervisor's cost: one brokered open, and whole workloads whose
reads all go through it, against native and against Landlock alone.

Three variants of the same access policy (read /usr, /lib, /lib64, /bin,
/etc; execute /usr):

- ``native``: no sandbox;
- ``landlock``: ``Sandbox(read=...)``, enforced by Landlock (no round trip);
- ``supervisor``: the same trees written as globs (``allow/read+/usr/**``
  and the directory itself), which only the supervisor can hold: every
  open that reads goes through it (openat2 in the sandbox's root, the
  descriptor injected with SECCOMP_IOCTL_NOTIF_ADDFD), answered by the
  compiled receiver (``supervisor/_fastpath.c``) where it can;
- ``python``: the same, with the compiled receiver's quick opens off, so
  that every call is answered in Python (as on a machine where stockade
  was installed without a C compiler).

Rows:

1. ``open``: a small C program times 20,000 ``openat``+``close`` calls of
   one file under /usr, one by one; the median per call.  The supervisor's
   median minus native's is the round trip of a brokered open.
2. ``find /usr > /dev/null`` (unreadable directories, for root without
   capabilities, are skipped alike in every variant).
3. ``python3 -c 'import <50 stdlib modules>'``.

Then the floors (the same C loop answered other ways), and ``find /usr``
under a minimal C supervisor (``c_supervisor.c``: the kernel-facing steps
of the broker, with no policy and no Python), to show how much of the
cost is the machine's (``--no-c-reference`` skips it).

Variants alternate within each rep, in an order that rotates; medians of
the reps, ratios to native.  Usage: python bench/supervisor.py [--reps N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import stockade
from stockade.supervisor import fastpath

TREES = ["/usr", "/lib", "/lib64", "/bin", "/etc"]
TARGET = "/usr/share/common-licenses/GPL-3"

MODULES = [
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "inspect",
    "io",
    "ipaddress",
    "json",
    "logging",
    "lzma",
    "math",
    "mimetypes",
    "numbers",
    "operator",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "shlex",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "tomllib",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "xml.etree.ElementTree",
    "zipfile",
][:50]

OPEN_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static int cmp(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b; return (x > y) - (x < y);
}
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    long *t = malloc(sizeof(long) * n);
    struct timespec a, b;
    for (int i = 0; i < 1000; i++) close(openat(AT_FDCWD, argv[1], O_RDONLY | O_CLOEXEC));
    for (int i = 0; i < n; i++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        int fd = openat(AT_FDCWD, argv[1], O_RDONLY | O_CLOEXEC);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (fd < 0) { perror("openat"); return 1; }
        close(fd);
        t[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    }
    qsort(t, n, sizeof(long), cmp);
    printf("%ld\n", t[n / 2]);
    return 0;
}
"""


def sandboxes() -> dict[str, stockade.Sandbox | None]:
    globs = [rule for tree in TREES for rule in (f"allow/read+{tree}", f"allow/read+{tree}/**")]
    return {
        "native": None,
        "landlock": stockade.Sandbox(read=TREES, rules=["allow/write+/dev/null"]),
        "supervisor": stockade.Sandbox(
            rules=[
                *globs,
                "allow/exec+/usr/***",
                "allow/exec+/bin/***",
                "allow/exec+/lib/***",
                "allow/exec+/lib64/***",
                "allow/write+/dev/null",
                "allow/read+/dev/null",
            ],
        ),
    }


@contextlib.contextmanager
def python_only(on: bool = True) -> Iterator[None]:
    """Sessions made meanwhile answer every call in Python (no DirCache)."""
    saved = fastpath.ENABLED
    fastpath.ENABLED = saved and not on
    try:
        yield
    finally:
        fastpath.ENABLED = saved


def timed(sandbox: stockade.Sandbox | None, argv: list[str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    if sandbox is None:
        proc = subprocess.run(argv, capture_output=True, check=False)
        out, code, err = proc.stdout, proc.returncode, proc.stderr
    else:
        res = sandbox.run(argv, capture=True)
        out, code, err = res.stdout or b"", res.returncode, res.stderr or b""
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{argv[0]} exited {code}: {err.decode(errors='replace')[-300:]}")
    return elapsed, out


def rows(tool: str) -> dict[str, Callable[[stockade.Sandbox | None], float]]:
    imports = "import " + ", ".join(MODULES)
    return {
        "open (median ns per openat, C)": lambda sb: float(
            timed(sb, [tool, TARGET, "20000"])[1].decode()
        ),
        "find /usr > /dev/null (ms)": lambda sb: (
            1000 * timed(sb, ["/bin/sh", "-c", "find /usr > /dev/null 2>&1; true"])[0]
        ),
        f"python3 -c 'import {len(MODULES)} stdlib modules' (ms)": lambda sb: (
            1000 * timed(sb, ["/usr/bin/python3", "-S", "-c", imports])[0]
        ),
    }


def floors(tool: str, sandbox: stockade.Sandbox | None, reps: int, native: float) -> None:
    """The same C loop with the supervisor's ``openat`` answered other
    ways (measured here, in the same conditions): a bare CONTINUE, and
    reading the path + ID_VALID + CONTINUE, each by a worker (after the
    hand-off of the receiver role) and by the receiver itself (no
    hand-off: a measuring hack, unsafe); the real handler in a worker;
    and the brokered open as it runs in the receiver, in Python and
    compiled.  What the brokered open adds over them is the broker's own
    cost."""
    from stockade.kernel import syscalls
    from stockade.supervisor import fs, session

    nr = syscalls.nr("openat")
    real = session.HANDLERS[nr]
    quick = session.QUICK[nr]

    def cont(s: Any, w: Any, n: Any, _caller: Any) -> None:
        w.resp.cont(s.listener, n.id)

    def read_cont(s: Any, w: Any, n: Any, _caller: Any) -> None:
        w.mem.cstring(n.pid, n.data.args[1])
        s.valid(w, n)
        w.resp.cont(s.listener, n.id)

    def worker(s: Any, w: Any, n: Any, caller: Any) -> None:
        real(s, w, n, caller)  # not the registered handler: no fast path

    def q_cont(s: Any, w: Any, n: Any) -> bool:
        cont(s, w, n, None)
        return True

    def q_read_cont(s: Any, w: Any, n: Any) -> bool:
        read_cont(s, w, n, None)
        return True

    # name -> (handler, fast path or None)
    variants: dict[str, tuple[Any, Any]] = {
        "continue, worker": (cont, None),
        "continue, receiver": (real, q_cont),
        "read path + ID_VALID + continue, worker": (read_cont, None),
        "read path + ID_VALID + continue, receiver": (real, q_read_cont),
        "brokered, worker (the hand-off)": (worker, None),
        "brokered, receiver, in Python (fs.q_open)": (real, fs.q_open),
        "brokered, receiver, compiled (_fastpath.c)": (real, fs.q_open),
    }
    got: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for rep in range(reps):
            names = list(variants)
            for k in range(len(names)):
                name = names[(rep + k) % len(names)]
                session.HANDLERS[nr], fast = variants[name]
                session.QUICK[nr] = fast if fast is not None else quick
                assert sandbox is not None
                # The compiled receiver would answer these opens itself.
                with python_only(not name.endswith("compiled (_fastpath.c)")):
                    out = timed(sandbox, [tool, TARGET, "20000"])[1]
                got[name].append(float(out.decode()))
    finally:
        session.HANDLERS[nr] = real
        session.QUICK[nr] = quick
    print("floors, same C loop (median us per openat, minus native):")
    for name, values in got.items():
        print(f"  {name:50} {(statistics.median(values) - native) / 1000:10.1f}")


SPINNER = """
import os
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    pass
"""


def c_reference(work: Path, reps: int) -> None:
    """``find /usr`` under a minimal C supervisor (c_supervisor.c): the
    floor of the mechanism on this machine, with no policy and no
    Python.  Its broker with and without an idle-priority busy loop
    beside it (what stockade's idle poller does), and its CONTINUE."""
    binary = work / "c_supervisor"
    source = Path(__file__).with_name("c_supervisor.c")
    subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    find = ["/usr/bin/find", "/usr"]

    def native() -> float:
        start = time.perf_counter()
        subprocess.run(find, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return 1000 * (time.perf_counter() - start)

    def under(mode: str, spin: bool) -> float:
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER]) if spin else None
        try:
            proc = subprocess.run(
                [str(binary), mode, *find], stdout=subprocess.DEVNULL, capture_output=False,
                stderr=subprocess.PIPE, check=False,
            )  # fmt: skip
            return float(proc.stderr.decode().split()[-1])
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()

    variants: dict[str, Callable[[], float]] = {
        "native": native,
        "C broker (ADDFD)": lambda: under("broker", False),
        "C broker, idle-priority busy loop beside": lambda: under("broker", True),
        "C continue": lambda: under("continue", False),
    }
    got: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps + 1):
        for k in range(len(names)):
            name = names[(rep + k) % len(names)]
            value = variants[name]()
            if rep:
                got[name].append(value)
    base = statistics.median(got["native"])
    print("find /usr under a minimal C supervisor (no policy; ms, ratio to native):")
    for name, values in got.items():
        med = statistics.median(values)
        print(f"  {name:50} {med:10.1f} {med / base:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--no-c-reference", action="store_true", help="skip find under the minimal C supervisor"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stockade-bench-", dir="/tmp"))
    try:
        work.chmod(0o755)
        src = work / "open.c"
        src.write_text(OPEN_C)
        tool = str(work / "open")
        subprocess.run(["cc", "-O2", "-o", tool, str(src)], check=True)
        os.chmod(tool, 0o755)  # noqa: S103 - run by the sandbox's user
        sbs = sandboxes()
        # The tool lives outside the policy's trees: grant it to both.
        for name in ("landlock", "supervisor"):
            sb = sbs[name]
            assert sb is not None
            sbs[name] = stockade.Sandbox(
                policy=stockade.Policy.from_rules(
                    [*sb.policy.to_rules(), f"allow/read+{work}/***", f"allow/exec+{work}/***"]
                )
            )
        sbs["python"] = sbs["supervisor"]
        samples: dict[tuple[str, str], list[float]] = {}
        order = list(sbs)
        for rep in range(args.reps + 1):
            for row, fn in rows(tool).items():
                for k in range(len(order)):
                    name = order[(rep + k) % len(order)]
                    with python_only(name == "python"):
                        value = fn(sbs[name])
                    if rep:  # the first rep warms up
                        samples.setdefault((row, name), []).append(value)
        print(f"compiled receiver: {fastpath.status()}")
        print(f"{'row':52} {'native':>10} {'landlock':>10} {'superv.':>10} {'python':>10} "
              f"{'LL/nat':>7} {'sup/nat':>7} {'py/nat':>7}")  # fmt: skip
        for row in rows(tool):
            med = {name: statistics.median(samples[(row, name)]) for name in order}
            nat = med["native"]
            print(f"{row:52} {nat:10.1f} {med['landlock']:10.1f} {med['supervisor']:10.1f} "
                  f"{med['python']:10.1f} {med['landlock'] / nat:7.2f} "
                  f"{med['supervisor'] / nat:7.2f} {med['python'] / nat:7.2f}")  # fmt: skip
            if row.startswith("open"):
                for name in ("supervisor", "python"):
                    rt = (med[name] - nat) / 1000
                    label = f"  brokered open round trip ({name} - native, us)"
                    print(f"{label:52} {rt:10.1f}")
        floors(
            tool,
            sbs["supervisor"],
            args.reps,
            statistics.median(samples[(next(iter(rows(tool))), "native")]),
        )
        if not args.no_c_reference:
            c_reference(work, args.reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
