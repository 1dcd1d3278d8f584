"""What ``-i`` (a pseudo-terminal of the sandbox's own) costs.

Two measurements, each alternating its variants rep by rep so that drift
hits all of them, with medians and ratios to the native run of the same
rep set:

1. Start-up: ``Sandbox.run(['/bin/true'])`` with and without ``pty=True``
   (through the fork server), beside native ``subprocess.run``.
2. Output relay: a command writing OUTPUT_MB megabytes to its stdout, read
   to the end by this process: native ``cat`` into a pipe; ``script``
   (util-linux, a native pseudo-terminal relay) when installed; the
   sandbox without a terminal (a pipe); the sandbox with ``pty=True``
   (every byte crosses the terminal and stockade's relay).

Usage: python bench/pty.py [--reps N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import stockade

SYSTEM = ["/usr", "/lib", "/lib64", "/bin", "/etc"]
OUTPUT_MB = 16


def measure(variants: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    for run in variants.values():  # warm-up: the fork server, caches
        run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def table(title: str, medians: dict[str, float], base: str) -> None:
    print(f"# {title}")
    print(f"| variant | median ms | ratio to {base} |")
    print("|---|---|---|")
    for name, med in medians.items():
        print(f"| {name} | {med * 1e3:.2f} | {med / medians[base]:.2f}x |")
    print()


def checked(name: str, code: int) -> None:
    if code != 0:
        raise RuntimeError(f"{name}: exit {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    plain = stockade.Sandbox(read=SYSTEM)
    on_pty = stockade.Sandbox(read=SYSTEM, pty=True)

    startup = {
        "native subprocess.run": lambda: checked(
            "native", subprocess.run(["/bin/true"], check=True).returncode
        ),
        "Sandbox.run": lambda: checked("plain", plain.run(["/bin/true"]).returncode),
        "Sandbox(pty=True).run": lambda: checked(
            "pty", on_pty.run(["/bin/true"], capture=True).returncode
        ),
    }
    table(
        f"start-up of /bin/true, {args.reps} reps",
        measure(startup, args.reps),
        "native subprocess.run",
    )

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        with open(data, "wb") as f:
            f.write(b"0123456789abcdef" * (OUTPUT_MB << 16))
        reader = stockade.Sandbox(read=[*SYSTEM, tmp])
        reader_pty = stockade.Sandbox(read=[*SYSTEM, tmp], pty=True)

        def native() -> None:
            checked(
                "cat",
                subprocess.run(["/bin/cat", data], stdout=subprocess.PIPE, check=True).returncode,
            )

        relay = {
            "native cat to a pipe": native,
            "Sandbox.run (pipe)": lambda: checked(
                "sandbox", reader.run(["/bin/cat", data], capture=True).returncode
            ),
            "Sandbox(pty=True).run": lambda: checked(
                "sandbox pty", reader_pty.run(["/bin/cat", data], capture=True).returncode
            ),
        }
        script = shutil.which("script")
        if script is not None:
            relay["script -qc cat (native pty)"] = lambda: checked(
                "script",
                subprocess.run(
                    [script, "-qec", f"/bin/cat {data}", "/dev/null"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    check=True,
                ).returncode,
            )
        table(f"{OUTPUT_MB} MB of output read to the end, {args.reps} reps",
              measure(relay, args.reps), "native cat to a pipe")  # fmt: skip


if __name__ == "__main__":
    main()
