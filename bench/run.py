"""stockade benchmarks: start-up and workloads, native vs sandboxed vs peers.

    python bench/run.py [--quick] [--json FILE]

Every comparison is measured in this one run, with the compared variants
alternated rep by rep (the order rotates) so that drift on a noisy machine
hits every side.  Figures are medians; ratios are ratios of medians.  See
bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"
sys.path.insert(0, str(SRC))

from stockade import Sandbox  # noqa: E402
from stockade._version import __version__ as STOCKADE_VERSION  # noqa: E402

#: The interpreter itself, not a pyenv shim (the shim alone costs ~200 ms).
PYTHON = os.path.realpath(sys.executable)
SYSTEM_PYTHON = "/usr/bin/python3"
SANDLOCK_VENV = BENCH / ".venv-sandlock"
SANDLOCK_RUNNER = BENCH / "peers" / "sandlock_runner.py"
TIMEOUT = 600.0
#: Where our interpreter caches bytecode for the runs (see stockade_env).
PYCACHE = Path(tempfile.gettempdir()) / "stockade-bench-pycache"

#: Read access for /bin/true in the start-up rows (merged-/usr symlinks
#: included so the rule set is the one a non-merged system needs).
TRUE_READ = ("/usr", "/lib", "/lib64", "/bin", "/etc")
#: Everything the workloads run lives under /usr (the loader via /lib64 ->
#: usr/lib64), so that is their whole read grant.
WORKLOAD_READ = ("/usr",)
#: bubblewrap's arguments before the command (the README's command line).
BWRAP_BASE = (
    *(arg for path in TRUE_READ for arg in ("--ro-bind", path, path)),
    *("--proc", "/proc", "--dev", "/dev"),
)

#: 50 stdlib modules that a bare ``python3 -I -c`` has not imported yet.
# fmt: off
MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "inspect", "ipaddress", "json", "logging", "lzma", "pathlib", "pickle",
    "pprint", "queue", "random", "shlex", "shutil", "socket", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "typing", "zipfile",
)
# fmt: on
CHURN = (
    "import os, sys\n"
    "d = sys.argv[1]\n"
    "for i in range(5000):\n"
    "    p = f'{d}/f{i}'\n"
    "    os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))\n"
    "    os.unlink(p)\n"
)
CONNECT = (
    "import socket, sys\n"
    "port = int(sys.argv[1])\n"
    "for _ in range(2000):\n"
    "    socket.create_connection(('127.0.0.1', port)).close()\n"
)


# --------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Sample:
    seconds: float
    returncode: int


Variant = Callable[[], Sample]


def interleave(variants: dict[str, Variant], reps: int, warmup: int = 1) -> dict[str, list[Sample]]:
    """Run every variant once per rep, rotating the order each rep."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> Sample:
    """Wall time of one command, stdout and stderr to /dev/null, cwd /.

    No timeout: with one, ``Popen.wait`` polls with sleeps of up to 50 ms.
    """
    start = time.perf_counter()
    proc = subprocess.run(
        argv, cwd="/", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return Sample(time.perf_counter() - start, proc.returncode)


def median_ms(samples: Sequence[Sample] | Sequence[float]) -> float:
    values = [s.seconds if isinstance(s, Sample) else s for s in samples]
    return statistics.median(values) * 1e3


def returncodes(samples: Sequence[Sample]) -> list[int]:
    return sorted({s.returncode for s in samples})


# ------------------------------------------------------------------- peers


@dataclass
class Peers:
    bwrap: str | None = None
    sandlock_python: str | None = None
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def find_bwrap(peers: Peers) -> None:
    path = shutil.which("bwrap")
    if path is None:
        peers.notes.append("bubblewrap: skipped, no `bwrap` on PATH (apt-get install bubblewrap)")
        return
    check = subprocess.run(
        [path, *BWRAP_BASE, "--", "/bin/true"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        peers.notes.append(
            f"bubblewrap: skipped, `bwrap ... /bin/true` failed: {check.stderr.strip()}"
        )
        return
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    peers.versions["bubblewrap"] = version.stdout.strip()
    peers.bwrap = path


def sandlock_python() -> Path:
    return SANDLOCK_VENV / "bin" / "python"


def sandlock_version(python: Path) -> str | None:
    probe = subprocess.run(
        [python, "-c", "import sandlock; print(sandlock.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def install_sandlock() -> str | None:
    """Create bench/.venv-sandlock and pip-install sandlock; the error, or None."""
    steps = [
        [PYTHON, "-m", "venv", str(SANDLOCK_VENV)],
        [str(sandlock_python()), "-m", "pip", "install", "--quiet", "sandlock"],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return f"`{' '.join(step[1:])}` exited {proc.returncode}: " + " | ".join(lines[-3:])
    return None


def find_sandlock(peers: Peers) -> None:
    python = sandlock_python()
    version = sandlock_version(python) if python.exists() else None
    if version is None:
        print(f"# setting up {SANDLOCK_VENV} (pip install sandlock)...", file=sys.stderr)
        error = install_sandlock()
        if error is not None:
            peers.notes.append(f"sandlock: skipped, {error}")
            return
        version = sandlock_version(python)
    if version is None:
        peers.notes.append("sandlock: skipped, installed but `import sandlock` fails")
        return
    peers.versions["sandlock"] = version
    peers.sandlock_python = str(python)


# ---------------------------------------------------------------- start-up


def stockade_env() -> dict[str, str]:
    """The environment of our own interpreter's processes: ``src`` on the
    path, and bytecode cached as after an install (under :data:`PYCACHE`,
    not in ``src``) even where PYTHONDONTWRITEBYTECODE is set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def stockade_cli(
    cmd: Sequence[str], read: Sequence[str], write: Sequence[str] = (), ports: Sequence[int] = ()
) -> list[str]:
    """``stockade run`` with these grants, through the same interpreter."""
    argv = [PYTHON, "-m", "stockade.cli.main", "run"]
    argv += [arg for path in read for arg in ("-r", path)]
    argv += [arg for path in write for arg in ("-w", path)]
    argv += [arg for port in ports for arg in ("--net-allow", f"*:{port}")]
    return [*argv, "--", *cmd]


def startup_commands(peers: Peers) -> dict[str, Variant]:
    env = stockade_env()
    variants: dict[str, Variant] = {
        "native /bin/true": lambda: timed(["/bin/true"]),
        "python -c pass": lambda: timed([PYTHON, "-c", "pass"], env),
        "stockade --version": lambda: timed([PYTHON, "-m", "stockade.cli.main", "--version"], env),
        "stockade run -- /bin/true": lambda: timed(stockade_cli(["/bin/true"], TRUE_READ), env),
    }
    if peers.bwrap is not None:
        argv = [peers.bwrap, *BWRAP_BASE, "--", "/bin/true"]
        variants["bwrap -- /bin/true"] = lambda: timed(argv)
    return variants


def run_probe(argv: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        argv, cwd="/", env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... exited {proc.returncode}: {proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def spawn_probes(peers: Peers, reps: int, hold_mb: int) -> dict[str, dict[str, Any]]:
    """Rows 1b/1c: in-process spawns, each implementation in its own process
    (``{"samples": {variant: [seconds]}, "failures": {variant: [status]}}``)."""
    args = ["--reps", str(reps), "--hold-mb", str(hold_mb)]
    probes = {"stockade": run_probe([PYTHON, str(BENCH / "spawn_probe.py"), *args], stockade_env())}
    if peers.sandlock_python is not None:
        argv = [peers.sandlock_python, str(SANDLOCK_RUNNER), "startup", *args]
        probes["sandlock"] = run_probe(argv)
    return probes


# --------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    cmd: tuple[str, ...]
    write: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    reps: int = 15
    quick_reps: int = 5


def workloads(scratch: str, port: int) -> list[Workload]:
    py = (SYSTEM_PYTHON, "-I", "-c")
    return [
        Workload("find /usr > /dev/null", ("/usr/bin/find", "/usr"), reps=7, quick_reps=2),
        Workload("python3: import 50 stdlib modules", (*py, "import " + ", ".join(MODULES))),
        Workload(
            "python3: create+unlink 5,000 files in /dev/shm",
            (*py, CHURN, scratch),
            write=(scratch,),
        ),
        Workload(
            "python3: 2,000 TCP connects to 127.0.0.1", (*py, CONNECT, str(port)), ports=(port,)
        ),
    ]


def api_variant(w: Workload) -> Variant:
    sandbox = Sandbox(
        read=WORKLOAD_READ, write=w.write, net_allow=[f"*:{port}" for port in w.ports]
    )

    def run() -> Sample:
        start = time.perf_counter()
        result = sandbox.run(w.cmd, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return Sample(time.perf_counter() - start, result.returncode)

    return run


def sandlock_variant(python: str, w: Workload) -> Variant:
    spec = json.dumps(
        {
            "cmd": list(w.cmd),
            "read": list(WORKLOAD_READ),
            "write": list(w.write),
            "ports": list(w.ports),
        }
    )

    def run() -> Sample:
        result = run_probe([python, str(SANDLOCK_RUNNER), "workload", spec])
        return Sample(float(result["seconds"]), int(result["returncode"]))

    return run


def workload_variants(w: Workload, peers: Peers) -> dict[str, Variant]:
    env = stockade_env()
    cli = stockade_cli(w.cmd, WORKLOAD_READ, w.write, w.ports)
    variants: dict[str, Variant] = {
        "native": lambda: timed(w.cmd),
        "stockade CLI": lambda: timed(cli, env),
        "stockade API (server)": api_variant(w),
    }
    if peers.bwrap is not None:
        binds = [arg for path in w.write for arg in ("--bind", path, path)]
        bwrap = [peers.bwrap, *BWRAP_BASE, *binds, "--", *w.cmd]
        variants["bwrap"] = lambda: timed(bwrap)
    if peers.sandlock_python is not None:
        variants["sandlock API"] = sandlock_variant(peers.sandlock_python, w)
    return variants


@contextmanager
def tcp_sink() -> Iterator[int]:
    """A listener on 127.0.0.1, outside every sandbox; yields its port."""
    proc = subprocess.Popen([PYTHON, str(BENCH / "tcp_sink.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------- report


def fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def startup_rows(cmds: dict[str, list[Sample]]) -> list[list[str]]:
    """Row 1a: whole commands, against native /bin/true and python -c pass."""
    native = median_ms(cmds["native /bin/true"])
    python = median_ms(cmds["python -c pass"])
    rows = []
    for name, samples in cmds.items():
        ms = median_ms(samples)
        added = f"+{ms - native:.2f} ms"
        rows.append(
            ["1a", f"`{name}`", fmt_ms(ms), fmt_ratio(ms, native), fmt_ratio(ms, python), added]
        )
    return rows


def probe_rows(row: str, label: str, probes: dict[str, Any]) -> list[list[str]]:
    """Rows 1b/1c: each probe's sandboxes against its own subprocess.run."""
    rows = []
    for impl, probe in probes.items():
        samples = probe["samples"]
        base = median_ms(samples["native"])
        rows.append([row, f"subprocess.run ({impl} probe){label}", fmt_ms(base), "1.00x", "", ""])
        for variant in list(samples)[1:]:
            ms = median_ms(samples[variant])
            what = f"{variant} Sandbox.run{label}"
            rows.append([row, what, fmt_ms(ms), fmt_ratio(ms, base), "", f"+{ms - base:.2f} ms"])
    return rows


def startup_table(cmds: dict[str, list[Sample]], probes: dict[str, Any]) -> str:
    rows = startup_rows(cmds)
    rows += probe_rows("1b", "", probes["1b"])
    rows += probe_rows("1c", ", parent holds 500 MB", probes["1c"])
    header = ["row", "what", "median ms", "ratio to baseline", "ratio to python -c pass", "added"]
    return table(header, rows)


def probe_notes(probes: dict[str, Any]) -> list[str]:
    notes = []
    for row, by_impl in probes.items():
        for probe in by_impl.values():
            for variant, statuses in probe["failures"].items():
                if statuses:
                    reps = len(probe["samples"][variant])
                    notes.append(
                        f"{row} {variant}: {len(statuses)} of {reps} runs of /bin/true "
                        f"exited {sorted(set(statuses))}"
                    )
    return notes


def workload_table(results: dict[str, dict[str, list[Sample]]]) -> str:
    columns = list(dict.fromkeys(name for r in results.values() for name in r))
    rows = []
    for wname, variants in results.items():
        native = median_ms(variants["native"])
        cells = [wname]
        for column in columns:
            if column not in variants:
                cells.append("—")
                continue
            ms = median_ms(variants[column])
            cell = fmt_ms(ms) if column == "native" else f"{fmt_ms(ms)} ({fmt_ratio(ms, native)})"
            cells.append(cell)
        rows.append(cells)
    return table(["workload", *(f"{c} ms" for c in columns)], rows)


def returncode_notes(results: dict[str, dict[str, list[Sample]]]) -> list[str]:
    notes = []
    for wname, variants in results.items():
        expected = returncodes(variants["native"])
        for vname, samples in variants.items():
            codes = returncodes(samples)
            if codes != expected:
                notes.append(f"{wname}: {vname} exited {codes} (native: {expected})")
    return notes


def environment(peers: Peers, quick: bool) -> dict[str, str]:
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname -r": platform.release(),
        "cpus": str(os.cpu_count()),
        "python": f"{PYTHON} ({platform.python_version()})",
        "stockade": STOCKADE_VERSION,
        "mode": "quick" if quick else "default",
    }
    return info | peers.versions


# ------------------------------------------------------------------- main


@dataclass(frozen=True)
class Config:
    quick: bool
    startup_reps: int
    spawn_reps: int
    bigrss_reps: int


def config(quick: bool) -> Config:
    if quick:
        return Config(quick, startup_reps=10, spawn_reps=60, bigrss_reps=20)
    return Config(quick, startup_reps=30, spawn_reps=300, bigrss_reps=60)


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def measure_startup(cfg: Config, peers: Peers) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    log(f"1a: start-up of whole commands, {cfg.startup_reps} reps")
    cmds = interleave(startup_commands(peers), cfg.startup_reps, warmup=2)
    log(f"1b: in-process spawns, {cfg.spawn_reps} each")
    probes = {"1b": spawn_probes(peers, cfg.spawn_reps, 0)}
    log(f"1c: in-process spawns from a 500 MB parent, {cfg.bigrss_reps} each")
    probes["1c"] = spawn_probes(peers, cfg.bigrss_reps, 500)
    return cmds, probes


def measure_workloads(cfg: Config, peers: Peers) -> dict[str, dict[str, list[Sample]]]:
    results = {}
    scratch = tempfile.mkdtemp(prefix="stockade-bench-", dir="/dev/shm")
    try:
        with tcp_sink() as port:
            for w in workloads(scratch, port):
                reps = w.quick_reps if cfg.quick else w.reps
                log(f"2: {w.name}, {reps} reps")
                results[w.name] = interleave(workload_variants(w, peers), reps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def as_json(
    env: dict[str, str],
    cmds: dict[str, list[Sample]],
    probes: dict[str, Any],
    results: dict[str, dict[str, list[Sample]]],
    notes: list[str],
) -> dict[str, Any]:
    def seconds(samples: list[Sample]) -> dict[str, Any]:
        return {
            "median_ms": median_ms(samples),
            "seconds": [s.seconds for s in samples],
            "returncodes": returncodes(samples),
        }

    return {
        "environment": env,
        "startup_commands": {name: seconds(s) for name, s in cmds.items()},
        "spawn_probes": probes,
        "workloads": {w: {v: seconds(s) for v, s in r.items()} for w, r in results.items()},
        "notes": notes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer reps (about a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args(argv)
    cfg = config(args.quick)
    started = time.perf_counter()
    peers = Peers()
    find_bwrap(peers)
    find_sandlock(peers)
    env = environment(peers, cfg.quick)
    cmds, probes = measure_startup(cfg, peers)
    results = measure_workloads(cfg, peers)
    notes = peers.notes + probe_notes(probes) + returncode_notes(results)
    print(" · ".join(f"{k}: {v}" for k, v in env.items()))
    print("\n## 1. Start-up\n")
    print(startup_table(cmds, probes))
    print("\n## 2. Workloads (ratio to native)\n")
    print(workload_table(results))
    if notes:
        print("\n" + "\n".join(f"- {note}" for note in notes))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(env, cmds, probes, results, notes), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
