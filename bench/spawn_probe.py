"""In-process start-up probe for stockade (rows 1b and 1c of ``run.py``).

Alternates, in this one process, ``subprocess.run(['/bin/true'])`` with
stockade's ``Sandbox.run(['/bin/true'])`` through each spawner: the fork
server (the API's default; supervised, unsupervised and with the default
profile, see ``VARIANTS``) and ``spawner="fork"`` (a fork of this process,
which needs it to be a child subreaper: this probe makes itself one).
With ``--hold-mb`` it first touches that much memory.  Prints the samples
as one JSON line; run it with ``src`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import ctypes
import resource

from spawnlib import TRUE, Spawner, alternate, emit, hold_memory, native_true
from stockade import PolicyError, Sandbox

#: What /bin/true needs: the loader and libc under /usr (with the
#: merged-/usr symlinks) and /etc for ld.so.cache.
TRUE_READ = ["/usr", "/lib", "/lib64", "/bin", "/etc"]


#: Variants of the sandbox: keyword arguments beside ``spawner``.  The
#: first restricts writes (as every policy does unless told otherwise), so
#: the supervisor starts beside each run; the second turns the categories
#: that need it off, so that a run has no supervisor; the third is the
#: default profile (a private tmp directory per run, a larger ruleset).
VARIANTS: dict[str, dict[str, object]] = {
    "": {"read": TRUE_READ},
    ", no supervisor": {"read": TRUE_READ, "rules": ["sandbox/write:off", "sandbox/net/bind:off"]},
    ", default profile": {"profile": "default"},
}


def sandboxed(spawner: str, options: dict[str, object]) -> Spawner | None:
    """Sandbox.run of /bin/true through *spawner*, or None if unsupported."""
    try:
        sandbox = Sandbox(**options, spawner=spawner)  # type: ignore[arg-type]
    except (TypeError, PolicyError):
        return None

    def run() -> int:
        return sandbox.run([TRUE]).returncode

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--hold-mb", type=int, default=0)
    args = parser.parse_args()
    hold_memory(args.hold_mb)
    # spawner="fork" needs a subreaper, which kills and reaps what a sandbox
    # leaves behind; this short-lived probe can be one.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    spawners: dict[str, Spawner] = {"native": native_true}
    for spawner in ("server", "fork"):
        for label, options in VARIANTS.items():
            if spawner == "fork" and label:
                continue  # the fork spawner's cost is its fork: one variant shows it
            run = sandboxed(spawner, options)
            if run is not None:
                spawners[f"stockade ({spawner}{label})"] = run
    result = alternate(spawners, args.reps)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(result)


if __name__ == "__main__":
    main()
