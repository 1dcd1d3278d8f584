"""Pieces shared by the in-process spawn probes.

Used by ``spawn_probe.py`` (stockade, run with the benchmark's interpreter)
and ``peers/sandlock_runner.py`` (sandlock, run with its own venv), so both
measure start-up the same way.  Standard library only.
"""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

TRUE = "/bin/true"

#: Touched memory kept alive for the whole probe; see :func:`hold_memory`.
_HELD: list[bytearray] = []


def hold_memory(megabytes: int) -> None:
    """Allocate *megabytes* and write every page, so the parent's RSS really
    grows (a fork then has that many more pages to copy-on-write)."""
    if megabytes <= 0:
        return
    buf = bytearray(megabytes * 2**20)
    for offset in range(0, len(buf), mmap.PAGESIZE):
        buf[offset] = 1
    _HELD.append(buf)


#: A spawner runs /bin/true once and returns its exit status.
Spawner = Callable[[], int]


def native_true() -> int:
    """The baseline: ``subprocess.run(['/bin/true'])`` (vfork in CPython 3.11)."""
    return subprocess.run([TRUE], check=False).returncode


def alternate(spawners: Mapping[str, Spawner], reps: int, warmup: int = 3) -> dict[str, Any]:
    """Call every spawner once per rep, in turn, and time each call.

    The order rotates every rep so drift hits all sides.  Returns
    ``{"samples": {name: [seconds...]}, "failures": {name: [status...]}}``:
    a run that exits non-zero is timed all the same and its status kept.
    """
    names = list(spawners)
    for _ in range(warmup):
        for name in names:
            spawners[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    failures: dict[str, list[int]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            status = spawners[name]()
            samples[name].append(time.perf_counter() - start)
            if status != 0:
                failures[name].append(status)
    return {"samples": samples, "failures": failures}


def emit(result: Mapping[str, object]) -> None:
    """Print *result* as one JSON line, the probes' only output."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
