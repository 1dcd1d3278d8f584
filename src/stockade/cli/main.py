"""The ``stockade`` command line: run, check, ctl, learn, profiles.

Exit status of ``stockade run`` (SPEC section 2): the command's own; 128+N
when killed by signal N; 124 on ``--timeout``; 125 for stockade's own
failure, with one line on stderr and nothing started; 126 when the command
cannot be executed; 127 when it is not found.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_TIMEOUT = 124
EXIT_OWN_FAILURE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: Options whose order matters (later refine earlier), kept in one list.
ORDERED = {
    "read": ("-r", "--read"),
    "write": ("-w", "--write"),
    "exec": ("-x", "--exec"),
    "deny": ("--deny",),
    "rule": ("-c", "--rule"),
    "config": ("-C", "--config"),
    "profile": ("-p", "--profile"),
    "net_allow": ("--net-allow",),
    "net_bind": ("--net-bind",),
}


class _Ordered(argparse.Action):
    """Append ``(kind, value)`` to one shared list, in command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, "access", None) or []
        items.append((self.dest, values))
        namespace.access = items


class _Parser(argparse.ArgumentParser):
    """argparse with stockade's exit status (125) and one-line errors."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse makes a formatter for every argument it adds (to check the
        # metavar), and each one asks the terminal for its size: ask once.
        return self.formatter_class(prog=self.prog, width=_terminal_width())  # type: ignore[call-arg]

    def error(self, message: str) -> Any:
        sys.stderr.write(f"stockade: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_OWN_FAILURE)


#: The subcommands, in the order ``--help`` lists them.
COMMANDS = ("run", "check", "ctl", "learn", "profiles")


@functools.cache
def _terminal_width() -> int:
    import shutil

    # What argparse's HelpFormatter computes when given no width.
    return shutil.get_terminal_size().columns - 2


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with *only*, just that subcommand's (each
    argparse parser costs start-up time, and a command line names one)."""
    from stockade._version import __version__

    parser = _Parser(
        prog="stockade",
        description="Run untrusted programs confined by Landlock, seccomp and namespaces.",
    )
    parser.add_argument("--version", action="version", version=f"stockade {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    if only in (None, "run"):
        _add_run(sub)
    if only in (None, "check"):
        check = sub.add_parser("check", help="what this kernel supports")
        # Defined here, not by importing stockade.cli.check: every `run`
        # would pay for that import.
        check.add_argument(
            "--json", action="store_true", help="print the findings as one JSON object"
        )
    if only in (None, "ctl"):
        ctl = sub.add_parser("ctl", help="talk to a running sandbox's control socket")
        ctl.add_argument("socket")
        ctl.add_argument("words", nargs="*")
    if only in (None, "learn"):
        learn = sub.add_parser("learn", help="run permissively and write a policy")
        learn.add_argument(
            "-o", "--output", metavar="FILE", help="write the TOML policy here (default: stdout)"
        )
        learn.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    if only in (None, "profiles"):
        sub.add_parser("profiles", help="list built-in profiles")
    return parser


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run a command in a sandbox")
    for dest, flags in ORDERED.items():
        run.add_argument(*flags, dest=dest, action=_Ordered, metavar=_METAVARS[dest],
                         help=_HELP[dest])  # fmt: skip
    run.add_argument(
        "--no-net", action="store_true", help="private network namespace, loopback only"
    )
    run.add_argument(
        "--unshare",
        metavar="LIST",
        help="namespaces: user,mount,pid,net,uts,ipc,cgroup,time or all",
    )
    run.add_argument("--map-root", action="store_true", help="appear as root in a user namespace")
    run.add_argument(
        "--root",
        metavar="tmpfs|DIR",
        help="a private root: an empty tmpfs (the -r/-w paths are bound in) or DIR",
    )
    run.add_argument(
        "--bind", action="append", default=[], metavar="SRC:DST[:ro]", help="bind-mount SRC at DST"
    )
    run.add_argument(
        "--tmpfs", action="append", default=[], metavar="DST", help="a fresh tmpfs at DST"
    )
    run.add_argument("--hostname", metavar="NAME", help="hostname in a private UTS namespace")
    run.add_argument(
        "--domainname", metavar="NAME", help="NIS domain name in a private UTS namespace"
    )
    run.add_argument(
        "--time-offset",
        metavar="SECONDS|monotonic=S,boottime=S",
        help="shift the monotonic and boot-time clocks in a private time namespace",
    )
    run.add_argument(
        "--proc-subset-pid",
        action="store_true",
        help="the pid namespace's /proc shows only process directories",
    )
    run.add_argument("-m", "--memory", metavar="SIZE", help="memory limit (512M, 2G)")
    run.add_argument("-P", "--max-procs", metavar="N", help="limit on processes and threads")
    run.add_argument(
        "-t", "--timeout", metavar="SECONDS", help="wall-clock limit; the whole sandbox is killed"
    )
    run.add_argument(
        "--rlimit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setrlimit(2) resource",
    )
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable",
    )
    run.add_argument("--clean-env", action="store_true", help="start from an empty environment")
    run.add_argument("--cwd", metavar="DIR", help="working directory inside the sandbox")
    run.add_argument("--ipc", metavar="SOCKET", help="serve the control protocol on SOCKET")
    run.add_argument("--lock", action="store_true", help="freeze the policy")
    run.add_argument("--log", metavar="FILE", help="write events as JSON lines (- for stderr)")
    run.add_argument("-i", "--pty", action="store_true", help="run on a new pseudo-terminal")
    run.add_argument("--no-aslr", action="store_true", help="disable address-space randomisation")
    run.add_argument("--no-thp", action="store_true", help="disable transparent huge pages")
    run.add_argument("--cpus", metavar="LIST", help="CPU affinity, e.g. 0,2-3")
    run.add_argument(
        "--print-policy", action="store_true", help="print the policy as rules and exit"
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")


_METAVARS = {
    "read": "PATH", "write": "PATH", "exec": "PATH", "deny": "PATH", "rule": "RULE",
    "config": "FILE", "profile": "NAME", "net_allow": "SPEC", "net_bind": "PORTS",
}  # fmt: skip
_HELP = {
    "read": "allow reading and executing PATH and everything beneath it",
    "write": "allow reading, writing, creating and deleting under PATH",
    "exec": "allow executing under PATH",
    "deny": "deny all access to PATH (a path or glob)",
    "rule": "one rule in the rule language",
    "config": "a TOML policy file",
    "profile": "a built-in profile; later options refine it",
    "net_allow": "allow outbound TCP: *:PORTS, HOST[:PORTS], IP[/PREFIX][:PORTS], *",
    "net_bind": "allow listening on these ports",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stockade`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    if args.command == "run":
        from stockade.cli.run import run_command

        return run_command(args)
    if args.command == "check":
        from stockade.cli.check import run_check

        return 0 if run_check(args) == 0 else EXIT_OWN_FAILURE
    if args.command == "profiles":
        from stockade.policy.profiles import list_profiles

        for prof in list_profiles():
            print(f"{prof.name:10} {prof.summary}")
        return 0
    if args.command == "learn":
        from stockade.cli.learn import learn_command

        return learn_command(args)
    if args.command == "ctl":
        sys.stderr.write(
            "stockade: ctl: needs the control socket, which this release does not have yet\n"
        )
        return EXIT_OWN_FAILURE
    build_parser().print_help(sys.stderr)
    return EXIT_OWN_FAILURE


def entry() -> NoReturn:
    """The ``stockade`` command: :func:`main`, then exit without the
    interpreter's teardown (about 10 ms of a ``stockade run`` here, and
    nothing of ours needs it: every file and child is closed by then)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = 120  # what the interpreter exits with when this fails
    os._exit(code)


if __name__ == "__main__":
    entry()
