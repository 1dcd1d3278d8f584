"""What closing the exec and abstract-connect races costs (stockade issue 5).

Two rows, each timed inside the sandbox by a small C program (built here
with gcc), median per call over 20 batches:

1. ``exec``: fork, ``execve`` of a static program that exits at once,
   wait; the exec rules are routed to the supervisor (a deny glob inside
   the exec tree), so every exec is decided and continued, and traced to
   its PTRACE_EVENT_EXEC stop and checked (``checked``).
2. ``abstract``: ``connect`` of a one-thread caller to an abstract UNIX
   listener of its own, then accept and close; writes are restricted, so
   the connect goes to the supervisor, which checks that nobody else can
   rewrite the address before it lets the kernel run it (``checked``).

``unchecked`` is the same run with the check replaced, in this process,
by a plain continue (what the supervisor did before the fix), so the
difference is the check alone.  Variants alternate within each rep, in
an order that reverses every rep; medians of reps, and the median of the
per-rep differences.  Usage: python bench/exec_connect.py [--reps N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

LOOP_C = r"""
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int batches = 20, per = atoi(argv[2]);
    double t[20];
    int server = -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    socklen_t len = 0;
    if (strcmp(argv[1], "abstract") == 0) {
        snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "bench-%d", getpid());
        len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(addr.sun_path + 1);
        server = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(server, (struct sockaddr *)&addr, len) || listen(server, 16))
            return 2;
    }
    for (int b = 0; b < batches; b++) {
        double start = now();
        for (int i = 0; i < per; i++) {
            if (server >= 0) {
                int c = socket(AF_UNIX, SOCK_STREAM, 0);
                if (connect(c, (struct sockaddr *)&addr, len))
                    return 3;
                close(accept(server, NULL, NULL));
                close(c);
            } else {
                pid_t pid = fork();
                if (pid == 0) {
                    char *av[] = {"t", NULL};
                    execv(argv[3], av);
                    _exit(9);
                }
                int status;
                waitpid(pid, &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status))
                    return 4;
            }
        }
        t[b] = (now() - start) / per;
    }
    qsort(t, batches, sizeof t[0], cmp);
    printf("%.2f\n", t[batches / 2] * 1e6);
    return 0;
}
"""

SYSTEM = ["/usr", "/lib", "/lib64", "/bin", "/etc"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import stockade
    from stockade.supervisor import fs, net

    checked_exec, checked_abstract = fs._exec_verified, net._unshared

    def plain_exec(s: Any, w: Any, n: Any, *_: Any) -> None:
        w.resp.cont(s.listener, n.id)

    def plain_abstract(*_: Any) -> None:
        return None

    work = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    work.chmod(0o755)
    (work / "w").mkdir()
    (work / "loop.c").write_text(LOOP_C)
    (work / "true.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O2", "-o", str(work / "loop"), str(work / "loop.c")], check=True)
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", str(work / "true"), str(work / "true.c")], check=True
    )
    tree = [str(work), "/usr", "/lib", "/lib64"]
    routed_exec = stockade.Sandbox(read=SYSTEM, exec=tree, rules=[f"deny/exec+{work}/no-*"])
    routed_write = stockade.Sandbox(read=SYSTEM, exec=tree, write=[str(work / "w")])
    names = ["exec checked", "exec unchecked", "abstract checked", "abstract unchecked"]
    results: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            exec_check = checked_exec if name == "exec checked" else plain_exec
            abstract_check = checked_abstract if name == "abstract checked" else plain_abstract
            fs._exec_verified = exec_check
            net._unshared = abstract_check
            if name.startswith("exec"):
                sandbox, argv = routed_exec, ["exec", "100"]
            else:
                sandbox, argv = routed_write, ["abstract", "500"]
            res = sandbox.run([str(work / "loop"), *argv, str(work / "true")], capture=True)
            assert res.returncode == 0, (name, res.returncode, res.stderr)
            assert res.stdout is not None
            results[name].append(float(res.stdout))
    fs._exec_verified = checked_exec
    net._unshared = checked_abstract
    for name, values in results.items():
        print(f"{name:20} {statistics.median(values):8.1f} us per call")
    for row in ("exec", "abstract"):
        checked, unchecked = results[f"{row} checked"], results[f"{row} unchecked"]
        diff = statistics.median(a - b for a, b in zip(checked, unchecked, strict=True))
        print(f"{row} check: {diff:+.1f} us per call (median of per-rep differences)")
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
