"""``stockade check``: what this kernel supports, and what is missing costs.

Prints one line per feature (name, yes/no, what the probe saw), one line per
Landlock ABI level, and under each missing feature what stops working and
how to get it; ends with whether stockade can run here.  ``--json`` prints
the same as one JSON object.  Exit status 0 when stockade can run, 1 when
it cannot.

This module is imported only for the ``check`` subcommand, but the main
parser may import it to call ``add_arguments``: the probes (and ctypes) are
imported inside ``run_check``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict
from typing import Any

from stockade.errors import errno_name

__all__ = ["add_arguments", "run_check"]

_INDENT = "      "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` subcommand's options (``--json``) to *parser*."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the findings as one JSON object instead of a table",
    )


def _report() -> dict[str, Any]:
    """Run every probe and gather the answers as plain data."""
    # Lazy: the main parser imports this module for add_arguments alone.
    from stockade.kernel import probe

    abi = probe.landlock_abi()
    ok, reasons = probe.usable()
    levels = [
        {
            "abi": level.abi,
            "kernel": f"{level.kernel[0]}.{level.kernel[1]}",
            "adds": level.adds,
            "needed_for": level.needed_for,
            "available": abi is not None and abi >= level.abi,
        }
        for level in probe.LANDLOCK_LEVELS
    ]
    sizes = probe.seccomp_notif_sizes()
    return {
        "kernel": platform.release(),
        "kernel_version": list(probe.kernel_version()),
        "machine": platform.machine(),
        "uid": os.getuid(),
        "usable": ok,
        "reasons": reasons,
        "features": [asdict(feat) for feat in [*probe.all_features(), _compiled_receiver()]],
        "landlock": {"abi": abi, "levels": levels},
        "seccomp": {
            "actions": probe.seccomp_actions(),
            "notify_flags": probe.seccomp_notify_flags(),
            "notif_sizes": (
                None
                if sizes is None
                else dict(
                    zip(("seccomp_notif", "seccomp_notif_resp", "seccomp_data"), sizes, strict=True)
                )
            ),
        },
    }


def _compiled_receiver() -> Any:
    """Not the kernel's, but what this installation has: the supervisor's
    compiled receiver (stockade.supervisor.fastpath)."""
    from stockade.kernel import probe
    from stockade.supervisor import fastpath

    return probe.Feature(
        "compiled receiver",
        fastpath.ENABLED,
        fastpath.status(),
        "speed only: every supervised call is answered in Python, a brokered open "
        "costs about 3x more",
        "a C compiler and Python's headers when stockade is installed (Debian: "
        "apt-get install gcc python3-dev), then install stockade again; or unset "
        "STOCKADE_FASTPATH=0",
    )


def _row(name: str, here: str | bool, detail: str, width: int) -> str:
    if isinstance(here, bool):
        here = "yes" if here else "no"
    return f"{name:<{width}}  {here:<4} {detail}".rstrip()


def _costs(needed_for: str, how_to_get: str) -> list[str]:
    lines = [f"{_INDENT}costs:  {needed_for}"]
    if how_to_get:
        lines.append(f"{_INDENT}to get: {how_to_get}")
    return lines


def _table(report: dict[str, Any]) -> list[str]:
    """The report as aligned lines of text, for people."""
    features: list[dict[str, Any]] = report["features"]
    landlock = report["landlock"]
    abi: int | None = landlock["abi"]
    level_names = [f"  ABI {lv['abi']} (Linux {lv['kernel']})" for lv in landlock["levels"]]
    width = max(len(name) for name in [*(f["name"] for f in features), *level_names, "feature"])
    lines = [
        f"stockade check: Linux {report['kernel']} ({report['machine']}), uid {report['uid']}",
        "",
        _row("feature", "here", "detail", width),
    ]
    for feat in features:
        lines.append(_row(feat["name"], feat["available"], feat["detail"], width))
        if not feat["available"]:
            lines.extend(_costs(feat["needed_for"], feat["how_to_get"]))
        if feat["name"] != "landlock":
            continue
        for name, level in zip(level_names, landlock["levels"], strict=True):
            lines.append(_row(name, level["available"], level["adds"], width))
            # Without Landlock at all, the landlock line already says what it costs.
            if abi is not None and not level["available"]:
                how = f"Linux {level['kernel']} or later (this kernel has ABI {abi})"
                lines.extend(_costs(level["needed_for"], how))
        if abi is not None and abi > len(level_names):
            lines.append(_row(f"  ABI {abi}", True, "newer than this stockade knows", width))
    lines.append("")
    if report["usable"]:
        lines.append("stockade can run here")
    else:
        lines.append("stockade cannot run here: " + "; ".join(report["reasons"]))
    return lines


def run_check(args: argparse.Namespace | None = None) -> int:
    """Probe the kernel, print the findings, and return 0 if stockade can run here.

    Prints a table to stdout, or one JSON object when ``args.json`` is set.
    Returns 1 when a required feature is missing (the reasons are printed),
    or when a probe could not run at all (fork refused: one line on stderr).
    """
    as_json = bool(getattr(args, "json", False))
    try:
        report = _report()
    except OSError as err:
        # Only forking a probe child can fail here (EAGAIN at RLIMIT_NPROC).
        name = errno_name(err.errno or 0)
        print(f"stockade check: could not run a probe: {name} ({err.strerror})", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(_table(report)))
    return 0 if report["usable"] else 1


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stockade check", description="What this kernel supports for stockade."
    )
    add_arguments(parser)
    return run_check(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_main())
