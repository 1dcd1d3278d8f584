"""Drive sandlock (https://pypi.org/project/sandlock/) for ``run.py``.

sandlock's wheel has no command line, so the benchmark runs this script with
the python of ``bench/.venv-sandlock`` and reads one JSON line back:

``startup --reps N [--hold-mb M]``
    alternate ``subprocess.run(['/bin/true'])`` and sandlock's
    ``Sandbox(...).run(['/bin/true'])`` in this process (rows 1b/1c);
``workload SPEC``
    run one workload once, ``SPEC`` being JSON with ``cmd``, ``read``,
    ``write`` and ``ports``, and report the seconds from spawn to exit
    (``Sandbox.popen`` with stdout/stderr to /dev/null, then ``wait``), the
    way ``run.py`` times ``subprocess.run`` for the native side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandlock import Sandbox, StdioMode

from spawnlib import TRUE, alternate, emit, hold_memory, native_true

TRUE_READ = ["/usr", "/lib", "/lib64", "/bin", "/etc"]


def startup(reps: int, hold_mb: int) -> None:
    hold_memory(hold_mb)
    sandbox = Sandbox(fs_readable=TRUE_READ)

    def sandboxed_true() -> int:
        result = sandbox.run([TRUE])
        return int(result.exit_code) if result.success else -1

    emit(alternate({"native": native_true, "sandlock": sandboxed_true}, reps))


def workload(spec: dict[str, list[str]]) -> None:
    sandbox = Sandbox(
        fs_readable=spec["read"],
        fs_writable=spec["write"],
        net_allow=[f"tcp://*:{port}" for port in spec["ports"]],
    )
    start = time.perf_counter()
    proc = sandbox.popen(spec["cmd"], stdout=StdioMode.NULL, stderr=StdioMode.NULL)
    result = proc.wait()
    seconds = time.perf_counter() - start
    emit({"seconds": seconds, "returncode": result.exit_code, "error": result.error})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    start = sub.add_parser("startup")
    start.add_argument("--reps", type=int, default=200)
    start.add_argument("--hold-mb", type=int, default=0)
    work = sub.add_parser("workload")
    work.add_argument("spec", type=json.loads)
    args = parser.parse_args()
    if args.mode == "startup":
        startup(args.reps, args.hold_mb)
    else:
        workload(args.spec)


if __name__ == "__main__":
    main()
