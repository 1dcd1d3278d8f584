"""Which memory rlimit do real runtimes survive?  RLIMIT_AS vs RLIMIT_DATA.

Runs a small and a large allocation in Python and Node, and ``java
-version``, under each limit, and prints the outcome.  Results and the
decision they led to are in docs/limits.md.  Usage: python bench/memory_limits.py
"""

from __future__ import annotations

import functools
import resource
import shutil
import subprocess

PROGRAMS = {
    "python-50M": ["/usr/bin/python3", "-c", "x=bytearray(50*2**20); print('ok')"],
    "python-400M": ["/usr/bin/python3", "-c", "x=bytearray(400*2**20); print('ok')"],
    "node-50M": ["node", "-e", "const b=Buffer.alloc(50*2**20,1); console.log('ok')"],
    "node-400M": ["node", "-e", "const b=Buffer.alloc(400*2**20,1); console.log('ok')"],
    "java-version": ["java", "-Xshare:auto", "-version"],
}


def _limit(res: int, value: int) -> None:
    resource.setrlimit(res, (value, value))


def main() -> None:
    for name in ("AS", "DATA"):
        res = getattr(resource, "RLIMIT_" + name)
        for mib in (256, 1024):
            for prog, argv in PROGRAMS.items():
                if shutil.which(argv[0]) is None:
                    print(f"{name:4} {mib:5}M {prog:14} skipped: {argv[0]} not installed")
                    continue
                p = subprocess.run(
                    argv,
                    preexec_fn=functools.partial(_limit, res, mib << 20),
                    capture_output=True,
                    text=True,
                    check=False,
                )
                out = (p.stdout + p.stderr).strip().splitlines()
                last = out[-1][:70] if out else ""
                print(f"{name:4} {mib:5}M {prog:14} rc={p.returncode:4} {last}")


if __name__ == "__main__":
    main()
