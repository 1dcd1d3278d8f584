"""What closing the exec and abstract-connect races costs (stockade issue 5).

Two rows, each timed inside the sandbox by a small C program (built here
with gcc), median per call over batches:

1. ``exec``: fork, ``execve`` of a program that exits at once, wait; the
   exec rules are routed to the supervisor (a deny glob inside the exec
   tree), so every exec is decided, continued and (since the fix) traced
   to its PTRACE_EVENT_EXEC stop and checked.  ``landlock`` is the same
   policy without the glob (no supervisor round trip), for scale.
2. ``abstract``: ``connect`` of a one-thread caller to an abstract UNIX
   listener of its own, then accept and close; writes are restricted, so
   the connect goes to the supervisor, which (since the fix) checks that
   nobody else can rewrite the address before it lets the kernel run it.

Variants alternate within each rep; medians of reps.  Compare trees by
running the script with ``--src`` pointing at another checkout's src.
Usage: python bench/exec_connect.py [--reps N] [--src DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = parser.parse_args()
    sys.path.insert(0, args.src)
    import stockade

    work = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    work.chmod(0o755)
    (work / "loop.c").write_text(LOOP_C)
    (work / "true.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O2", "-o", str(work / "loop"), str(work / "loop.c")], check=True)
    subprocess.run(["gcc", "-O2", "-o", str(work / "true"), str(work / "true.c")], check=True)
    exec_tree = [str(work), "/usr", "/lib", "/lib64"]
    (work / "w").mkdir()
    variants = {
        "exec/landlock": (stockade.Sandbox(read=SYSTEM, exec=exec_tree), ["exec", "100"]),
        "exec/routed": (
            stockade.Sandbox(read=SYSTEM, exec=exec_tree, rules=[f"deny/exec+{work}/no-*"]),
            ["exec", "100"],
        ),
        "abstract/routed": (
            stockade.Sandbox(read=SYSTEM, exec=exec_tree, write=[str(work / "w")]),
            ["abstract", "500"],
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            sandbox, argv = variants[name]
            res = sandbox.run([str(work / "loop"), *argv, str(work / "true")], capture=True)
            assert res.returncode == 0, (name, res.returncode, res.stderr)
            assert res.stdout is not None
            results[name].append(float(res.stdout))
    print(f"stockade from {args.src}")
    for name, values in results.items():
        print(f"{name:18} {statistics.median(values):8.1f} us per call")
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
