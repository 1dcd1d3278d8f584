"""``stockade learn [-o FILE] -- COMMAND``: run permissively, write a policy.

The command runs with every category off (nothing is denied) under a
supervisor in audit mode (:func:`stockade.plan.compile_plan` with
``audit=True``): every open, exec, write, create, delete, ioctl, connect,
bind and send reaches it and becomes an event.  The events are collapsed
(:mod:`stockade.policy.learn`) into a TOML policy (``-o FILE``, or standard
output) under which the same command runs without a denial.  The exit
status is the command's, as for ``stockade run``.

Everything else a sandbox does still applies to the learning run: the
seccomp filter, the scoping of signals and abstract sockets, a private
tmp, no new privileges.  Learning a program therefore does not let it
escape; it only lets it touch the files and addresses it asks for.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

from stockade.cli.main import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_OWN_FAILURE
from stockade.errors import StockadeError

#: Private tmp directories of the learning runs (launch/spawn.py names them
#: so): what the program did there is not part of the policy, which asks
#: for a private tmp of its own.
PRIVATE_TMP_PREFIX = "stockade-tmp-"


def fail(message: str) -> int:
    sys.stderr.write(f"stockade: learn: {message}\n")
    return EXIT_OWN_FAILURE


class _Collector:
    """The ``on_event`` callback: keeps every event, judges nothing (a
    worker thread calls it)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        with self._lock:
            self.events.append(event)


def learn_command(args: argparse.Namespace) -> int:
    """Run ``stockade learn``; returns the exit status."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        return fail("expected a command after '--' (stockade learn [-o FILE] -- COMMAND)")
    output = args.output
    if output is not None and output != "-":
        try:
            with open(output, "a"):
                pass  # refused before anything runs
        except OSError as err:
            return fail(f"-o {output}: {err.strerror}")
    import tempfile

    from stockade.policy.learn import LearnOptions, accesses_from_events, learned_policy
    from stockade.policy.model import Policy
    from stockade.policy.tomlfile import dump_toml

    collector = _Collector()
    try:
        status = _run(Policy(enabled=frozenset(), private_tmp=True), argv, collector)
    except StockadeError as err:
        return fail(str(err))
    if status in (EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND) and not collector.events:
        return status
    tmp_root = os.path.join(os.path.realpath(tempfile.gettempdir()), PRIVATE_TMP_PREFIX)
    accesses = accesses_from_events(collector.events)
    policy = learned_policy(
        accesses, is_dir=os.path.isdir, options=LearnOptions(ignore=(tmp_root,))
    )
    text = dump_toml(policy)
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(output, "w") as f:
            f.write(text)
    sys.stderr.write(
        f"stockade: learn: {len(policy.rules)} rules from {len(accesses)} accesses"
        + (f", written to {output}\n" if output not in (None, "-") else "\n")
    )
    return status


def _run(policy: Any, argv: list[str], collector: _Collector) -> int:
    from stockade.plan import compile_plan
    from stockade.sandbox import Sandbox, kernel_facts

    class _Learning(Sandbox):
        """A sandbox whose plan audits every category."""

        @property
        def plan(self) -> Any:
            with self._lock:
                if self._plan is None:
                    self._plan = compile_plan(
                        self.policy, kernel_facts(), audit=True, is_dir=os.path.isdir
                    )
                return self._plan

    sandbox = _Learning(policy=policy, on_event=collector)
    try:
        result = sandbox.run(argv)
    except FileNotFoundError:
        sys.stderr.write(f"stockade: learn: {argv[0]}: command not found\n")
        return EXIT_NOT_FOUND
    except PermissionError:
        sys.stderr.write(f"stockade: learn: {argv[0]}: cannot execute\n")
        return EXIT_CANNOT_EXECUTE
    code = result.returncode
    return 128 - code if code < 0 else code
