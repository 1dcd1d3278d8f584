"""The fork server: a small process that starts every sandbox of its host.

Why: forking from Python costs copy-on-write faults in proportion to the
forking process's memory (LIMITS.md: 2.6 ms from 13 MB, 27 ms from 525 MB),
and a process that forks sandboxes must be their subreaper to end them all.
A host that embeds stockade may be large, multithreaded, and unwilling to
adopt orphans.  So the host starts this server once (a fresh interpreter
with only the launch modules imported) and sends it one request per run.

How it keeps the guarantees:

- It dies with its host: its parent-death signal is SIGTERM, which it
  handles by killing every run's whole tree before it exits (a SIGKILL
  would take it down before it could, and leave the commands' children
  to init).  Every command also dies with the server (the command's own
  PDEATHSIG), so no sandbox outlives the host.
- It is a child subreaper, and so is every command it starts (the flag
  survives exec).  A daemon that double-forks away from its command is
  reparented to the command while the command lives; once the command has
  exited, anything reparented to the server belongs to a finished run and
  is killed.  When a command exits, its process group and everything found
  beneath it are killed *before* its zombie is reaped, so neither its pid
  nor its group id can have been reused.
- Each run has its own socket pair: the host sends signals and tree kills
  over it, and the server sends the exit status.  Only the host closes it:
  closing with the host's last request unread would make the host's read
  fail with ECONNRESET before it sees the exit status.  A host that drops
  its end (or dies) before the exit gets its run killed.

The server is single-threaded (it forks) and runs one selector loop.
Requests are pickles from the host, which runs as the same user and
started it: the server trusts its host, and nothing else can reach the
socket pair.
"""

from __future__ import annotations

import array
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from stockade.errors import LaunchError
from stockade.kernel import _ffi, caps
from stockade.kernel.seccomp import PreparedFilter
from stockade.launch.child import (
    ChildSetup,
    decode_record,
    failed_target,
    notify_setup,
    read_record,
)
from stockade.launch.options import bounding_to_drop
from stockade.launch.reaper import children, kill_tree

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MAX_FDS = 8
MAX_MESSAGE = 1 << 20


@dataclass
class Request:
    """One sandbox to start; the descriptors travel beside it (SCM_RIGHTS).

    ``fds`` names the received descriptors, in order: ``conn`` always, then
    ``stdin``/``stdout``/``stderr``/``ruleset``/``cgroup``/``notify`` when
    present.  ``notify`` is the child's end of the supervisor's hand-off
    socket; with it, ``notify_program`` is installed last with a listener.
    """

    args: list[str]
    env: dict[str, str]
    cwd: str | None
    fds: list[str]
    #: :class:`ChildSetup` keyword arguments (see ``options.child_options``).
    setup: dict[str, Any] = field(default_factory=dict)
    filter_program: bytes = b""
    filter_flags: int = 0
    notify_program: bytes = b""


def send_message(sock: socket.socket, obj: object, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    """Send one pickled message with *fds* attached."""
    data = pickle.dumps(obj)
    if len(data) > MAX_MESSAGE:
        raise ValueError("fork-server message too large")
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def recv_message(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """Receive one message and its descriptors; None at end of stream."""
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    received = list(fds)
    if not data:
        for fd in received:
            os.close(fd)
        return None
    return pickle.loads(data), received  # noqa: S301 - our own host, over a private socketpair


class _Run:
    def __init__(self, conn: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        self.conn = conn
        self.proc = proc
        self.pid = proc.pid


class Server:
    """The server loop.  Build it in the server process only."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.sel = selectors.DefaultSelector()
        self.runs: dict[int, _Run] = {}
        # Read once: the server's bounding set does not change after start,
        # and reading it is one prctl per capability.
        self._bounding_empty = caps.bounding_set_empty()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(ctl, selectors.EVENT_READ, "ctl")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "sigchld")

    def serve(self) -> None:
        """Serve until the host closes the control socket or dies; then end
        every run (its whole tree) before returning."""
        try:
            self._loop()
        finally:
            self.end_all()

    def end_all(self) -> None:
        """Kill every run's tree and whatever was reparented to us."""
        # The host's death arrives twice, as EOF on the control socket and as
        # the SIGTERM parent-death signal: whichever comes second must not
        # interrupt the cleanup the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid in list(self.runs):
            kill_tree(pid)
        self._kill_adopted(everything=True)

    def _loop(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data == "ctl":
                    if not self._accept():
                        return
                elif key.data == "sigchld":
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self._reap()
                else:
                    self._command(key.data)
            self._reap()

    # -- requests ------------------------------------------------------------

    def _accept(self) -> bool:
        got = recv_message(self.ctl)
        if got is None:
            return False
        req, fds = got
        named = dict(zip(req.fds, fds, strict=True))
        conn = socket.socket(fileno=named.pop("conn"))
        try:
            run = _Run(conn, self._start(req, named))
        except LaunchError as err:
            _reply(conn, ("failed", err.step, err.errno, err.target))
            conn.close()
        except OSError as err:
            _reply(conn, ("oserror", err.errno, err.strerror, err.filename))
            conn.close()
        except Exception as err:
            _reply(conn, ("failed", f"fork server: {type(err).__name__}: {err}", 5, ""))
            conn.close()
        else:
            self.runs[run.pid] = run
            self.sel.register(conn, selectors.EVENT_READ, run)
            _reply(conn, ("started", run.pid))
        finally:
            for fd in named.values():
                os.close(fd)
        return True

    def _start(self, req: Request, fds: dict[str, int]) -> subprocess.Popen[bytes]:
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            setup = ChildSetup(
                error_fd=err_w,
                parent_pid=os.getpid(),
                cap_last=bounding_to_drop(
                    req.setup.get("drop_caps", False),
                    req.setup.get("namespaces", frozenset()),
                    self._bounding_empty,
                ),
                **req.setup,
                cgroup_procs_fd=fds.get("cgroup"),
                landlock_fd=fds.get("ruleset"),
                seccomp_filter=PreparedFilter(req.filter_program, req.filter_flags)
                if req.filter_program
                else None,
                **notify_setup(req.notify_program, fds.get("notify")),
            )
            try:
                proc = subprocess.Popen(
                    req.args,
                    stdin=fds.get("stdin"),
                    stdout=fds.get("stdout"),
                    stderr=fds.get("stderr"),
                    cwd=req.cwd,
                    env=req.env,
                    preexec_fn=setup.run,  # noqa: PLW1509 - the forking process is single-threaded, or the child only runs ChildSetup
                    close_fds=True,
                )
            finally:
                os.close(err_w)
            record = read_record(err_r)
        finally:
            os.close(err_r)
        if record:
            proc.wait()
            step, err, index = decode_record(record)
            raise LaunchError(
                step,
                err,
                failed_target(step, index, req.setup.get("masks", ()), req.setup.get("mounts", ())),
            )
        return proc

    def _command(self, run: _Run) -> None:
        try:
            got = recv_message(run.conn)
        except OSError:
            got = None
        if got is None:
            # The host let go of this run: nobody can wait for it any more.
            self.sel.unregister(run.conn)
            run.conn.close()
            if run.proc.returncode is None:
                self.runs.pop(run.pid, None)
                kill_tree(run.pid)
            return
        (what, *rest), fds = got
        for fd in fds:
            os.close(fd)
        if run.proc.returncode is not None:
            return
        if what == "signal":
            os.kill(run.pid, rest[0])
        elif what == "signal_group":
            os.killpg(run.pid, rest[0])
        elif what == "kill_tree":
            kill_tree(run.pid)

    # -- children ------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            run = self.runs.pop(pid, None)
            if run is not None:
                # The zombie keeps pid and group id reserved while we kill.
                kill_tree(pid)
                self._kill_adopted()
            status = os.waitpid(pid, 0)[1]
            if run is not None:
                code = os.waitstatus_to_exitcode(status)
                run.proc.returncode = code
                # Stays registered: the host closes it once it has read this.
                _reply(run.conn, ("exit", code))

    def _kill_adopted(self, everything: bool = False) -> None:
        """Kill what was reparented to us: it outlived its command."""
        mains = set() if everything else set(self.runs)
        for pid in children(os.getpid()):
            if pid not in mains:
                kill_tree(pid)


def _reply(conn: socket.socket, message: object) -> None:
    try:
        send_message(conn, message)
    except OSError:
        pass  # the host went away; the run is killed when we notice


class HostDied(BaseException):
    """Raised in the server when its host dies (the parent-death signal)."""


def _host_died(_signum: int, _frame: object) -> None:
    raise HostDied


def main(argv: list[str]) -> int:
    """Entry point in the server process: ``main([CTL_FD, HOST_PID])``."""
    return run_server(int(argv[0]), int(argv[1]))


def run_server(ctl_fd: int, host_pid: int) -> int:
    """Become the fork server of *host_pid* on the socket *ctl_fd*."""
    signal.signal(signal.SIGTERM, _host_died)
    _ffi.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != host_pid:
        return 1
    _ffi.prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.geteuid() == 0:
        # Once here instead of 41 system calls in every child: the server
        # needs no capability it could gain by exec, and its children
        # inherit the empty bounding set.
        caps.drop_bounding_set()
    # Leave the host's session: its terminal's signals are not ours (and
    # ignoring them instead would leave them ignored in every command).
    os.setsid()
    ctl = socket.socket(fileno=ctl_fd)
    send_message(ctl, ("ready", os.getpid()))
    try:
        Server(ctl).serve()
    except HostDied:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
