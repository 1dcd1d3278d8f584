"""Start-up cost of each namespace, as ratios to a run without namespaces.

Runs ``Sandbox.run(['/bin/true'])`` through the fork server with each
namespace stockade supports (and all of them together, a mount mask, and a
private tmpfs root with the system directories bound in and its /dev),
alternating the variants rep by rep so that drift hits all of them, and
prints medians, ratios to the plain run and the milliseconds added.

Usage: python bench/namespaces.py [--reps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import stockade

SYSTEM = ["/usr", "/lib", "/lib64", "/bin", "/etc"]
TRUE = "/bin/true"

VARIANTS: dict[str, dict[str, object]] = {
    "none": {},
    "user": {"unshare": ["user"]},
    "uts (--hostname)": {"hostname": "bench"},
    "ipc": {"unshare": ["ipc"]},
    "net (--no-net, loopback up)": {"no_net": True},
    "mount": {"unshare": ["mount"]},
    "mask (--deny /etc/shadow)": {"deny": ["/etc/shadow"]},
    "root tmpfs (5 binds, /dev, pivot_root)": {"root": "tmpfs"},
    "all of them": {
        "unshare": ["user", "mount", "ipc"],
        "hostname": "bench",
        "no_net": True,
        "deny": ["/etc/shadow"],
    },
    "all of them + root tmpfs": {
        "unshare": ["user", "mount", "ipc"],
        "hostname": "bench",
        "no_net": True,
        "deny": ["/etc/shadow"],
        "root": "tmpfs",
    },
}


def runner(options: dict[str, object]) -> Callable[[], None]:
    sandbox = stockade.Sandbox(read=SYSTEM, **options)  # type: ignore[arg-type]

    def run() -> None:
        result = sandbox.run([TRUE])
        if result.returncode != 0:
            raise RuntimeError(f"{options}: exit {result.returncode}")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args()
    runs = {name: runner(opts) for name, opts in VARIANTS.items()}
    for run in runs.values():  # warm-up: the fork server, caches
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            start = time.perf_counter()
            runs[name]()
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["none"])
    print(f"# Sandbox.run(['/bin/true']) through the fork server, {args.reps} reps each")
    print("| namespaces | median ms | ratio | added ms |")
    print("|---|---|---|---|")
    for name in names:
        med = statistics.median(samples[name])
        print(f"| {name} | {med * 1e3:.2f} | {med / base:.2f}x | {(med - base) * 1e3:+.2f} |")


if __name__ == "__main__":
    main()
