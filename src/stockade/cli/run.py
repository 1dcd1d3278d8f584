"""``stockade run``: build the policy, start the command, wait, report."""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import sys
import time
from typing import Any

from stockade.cli.main import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    EXIT_OWN_FAILURE,
    EXIT_TIMEOUT,
)
from stockade.errors import StockadeError

#: Signals a user sends to ``stockade`` that are meant for the command.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)  # fmt: skip


def fail(message: str) -> int:
    """Print one line and return the exit status for stockade's own failure."""
    sys.stderr.write(f"stockade: {message}\n")
    return EXIT_OWN_FAILURE


def build_policy(args: argparse.Namespace) -> Any:
    """The policy the options describe (PolicyError on bad input)."""
    from stockade.errors import PolicyError
    from stockade.policy.builder import PolicyBuilder

    cwd = os.getcwd()
    b = PolicyBuilder("stockade run", relative_base=cwd)
    # Under --root DIR, -r /usr names DIR/usr.
    root = getattr(args, "root", None)
    inside = root if root not in (None, "tmpfs") else None
    for kind, value in getattr(args, "access", None) or []:
        if kind in ("read", "write", "exec"):
            path = os.path.join(cwd, value)
            if inside is not None:
                path = os.path.join(cwd, inside, path.lstrip("/"))
            if not os.path.lexists(path):
                raise PolicyError(f"{value}: no such file or directory", f"--{kind}")
            getattr(b, kind)(value)
        elif kind == "config":
            from stockade.policy.tomlfile import apply_toml

            apply_toml(b, os.path.join(cwd, value))
        else:
            getattr(b, kind)(value)
    scalars: dict[str, Any] = {
        "memory": args.memory,
        "max_procs": args.max_procs,
        "timeout": args.timeout,
        "cwd": args.cwd,
        "root": args.root,
        "hostname": args.hostname,
        "domainname": args.domainname,
        "time_offset": args.time_offset,
        "log": args.log,
        "ipc": args.ipc,
        "unshare": args.unshare,
    }
    for key, value in scalars.items():
        if value is not None:
            b.set(key, value)
    for key in ("no_net", "map_root", "clean_env", "lock", "pty", "no_aslr", "no_thp",
                "proc_subset_pid"):  # fmt: skip
        if getattr(args, key):
            b.set(key, True)
    if args.cpus:
        b.set("cpus", _cpu_list(args.cpus))
    for text in args.rlimit:
        b.set("rlimit", text)
    for text in args.env:
        b.set("env", text)
    for text in args.bind:
        b.set("bind", text)
    for text in args.tmpfs:
        b.set("tmpfs", text)
    return b.build()


def _cpu_list(text: str) -> list[int]:
    from stockade.errors import PolicyError

    cpus: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise PolicyError(
            f"bad CPU list {text!r}: expected N, N-M or a comma list", "--cpus"
        ) from None
    return cpus


def run_command(args: argparse.Namespace) -> int:
    """Run ``stockade run``; returns the exit status (SPEC section 2)."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    from stockade.launch import client

    # The sandbox is started by a fork server forked from this small,
    # single-threaded process.  It outlives us just long enough to end
    # everything the command started if we are killed, even with SIGKILL.
    # Forked now, before the policy and plan modules are imported: it is
    # smaller, and gets ready on the other CPU while we build the policy.
    server = client.get(fork=True)
    if argv and not args.print_policy:
        server.start()
    try:
        return _run(args, argv)
    finally:
        server.close()


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from stockade.errors import PolicyError
    from stockade.sandbox import Sandbox

    try:
        policy = build_policy(args)
        if args.print_policy:
            print("\n".join(policy.to_rules()))
            return 0
        if not argv:
            return fail("no command given: expected 'stockade run [OPTIONS] -- COMMAND [ARG...]'")
        sandbox = Sandbox(policy=policy)
        sandbox.plan  # noqa: B018 - compile now: refuse the policy before anything starts
    except (StockadeError, PolicyError) as err:
        return fail(str(err))
    except OSError as err:
        return fail(f"{err.filename or 'setup'}: {errno.errorcode.get(err.errno or 0, '')} "
                    f"({err.strerror})")  # fmt: skip
    if policy.log is not None and policy.log != "-":
        try:
            # Refused before anything starts; the sandbox opens it for real.
            with open(policy.log, "a"):
                pass
        except OSError as err:
            return fail(f"--log {policy.log}: {err.strerror}")
    try:
        return _supervise(sandbox, argv, policy)
    finally:
        if sandbox.event_log is not None:
            sandbox.event_log.close()


class _Forwarder:
    """Signals meant for the command.  Installed before the command exists:
    a signal that arrives while it starts is kept, and delivered as soon as
    it runs."""

    def __init__(self) -> None:
        self.proc: Any = None
        self.early: list[int] = []

    def __call__(self, signum: int, _frame: object) -> None:
        if self.proc is None:
            self.early.append(signum)
        else:
            self.proc.signal_group(signum)

    def attach(self, proc: Any) -> None:
        self.proc = proc
        for signum in self.early:
            proc.signal_group(signum)


def _supervise(sandbox: Any, argv: list[str], policy: Any) -> int:
    forwarder = _Forwarder()
    # Python runs a handler only when the main thread next looks, between
    # bytecodes or when a system call fails with EINTR.  A signal taken
    # after the last look and before the wait's poll begins interrupts
    # nothing: forwarding it would wait as long as the command runs, for
    # ever when the signal was meant to end it.  The C-level handler writes
    # to this pipe whenever it runs, and every wait below polls it.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        for sig in FORWARDED:
            signal.signal(sig, forwarder)
        try:
            return _start_and_wait(sandbox, argv, policy, forwarder, wake_r)
        finally:
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)


def _exited(proc: Any, timeout: float | None, wake_fd: int) -> bool:
    """Wait until *proc* exits (True) or *timeout* passes (False), letting
    every signal's handler run as it arrives (see :func:`_supervise`)."""
    from stockade.launch.terminal import drain_wakeups

    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(proc.exit_fd, select.POLLIN)
    poller.register(wake_fd, select.POLLIN)
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = {fd for fd, _ in poller.poll(None if remaining is None else remaining * 1000)}
        if proc.exit_fd in ready:
            return True
        if wake_fd in ready:
            drain_wakeups(wake_fd)  # the handler has run (on the return from poll)
        elif deadline is not None and time.monotonic() >= deadline:
            return False


def _start_and_wait(
    sandbox: Any, argv: list[str], policy: Any, forwarder: _Forwarder, wake_fd: int
) -> int:
    from stockade.errors import LaunchError

    kwargs: dict[str, Any] = {}
    if policy.pty:
        from stockade.cli import pty

        kwargs["terminal_size"] = pty.initial_size()
    try:
        proc = sandbox.popen(argv, **kwargs)
    except FileNotFoundError:
        sys.stderr.write(f"stockade: {argv[0]}: command not found\n")
        return EXIT_NOT_FOUND
    except OSError as err:
        sys.stderr.write(f"stockade: {argv[0]}: cannot execute: {err.strerror}\n")
        return EXIT_CANNOT_EXECUTE
    except (LaunchError, StockadeError) as err:
        return fail(str(err))
    forwarder.attach(proc)
    if policy.pty:
        exited = pty.interact(proc, policy.timeout, wake_fd)
    else:
        exited = _exited(proc, policy.timeout, wake_fd)
    if not exited:
        proc.timed_out = True
    proc.kill_tree()
    code = proc.wait()
    status = EXIT_TIMEOUT if proc.timed_out else (128 - code if code < 0 else code)
    log = sandbox.event_log
    if log is not None:
        log.write({"time": time.time(), "pid": proc.pid, "syscall": "exit", "category": "exit",
                   "target": argv[0], "action": "audit", "errno": 0, "rule": None,
                   "status": status, "timed_out": proc.timed_out})  # fmt: skip
    if proc.timed_out:
        sys.stderr.write(f"stockade: {argv[0]}: killed after the {policy.timeout:g} s timeout\n")
    return status
