"""The host side of the fork server (see :mod:`stockade.launch.forkserver`).

:class:`ForkServer` starts the server once per host process, from a thread
that lives as long as the process (PDEATHSIG follows the *thread* that
forked, so a short-lived caller thread must not be the server's parent).
:class:`ServerProcess` is a ``subprocess.Popen`` whose child is started by
the server: Popen still makes the pipes and does text mode, ``communicate``
and timeouts; only starting, waiting and signalling go over the run's own
socket.
"""

from __future__ import annotations

# _socket, not socket: see stockade.launch.forkserver.
import _socket
import array
import errno
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stockade.errors import LaunchError
from stockade.launch.wire import Request, dumps, read_record, recv_message, send_message

if TYPE_CHECKING:  # the command line imports this before it forks its server
    from stockade.launch.spawn import Prepared

#: How long the server may take to start before we give up.
START_TIMEOUT = 30.0


class ForkServer:
    """A running fork server; one per host process (see :func:`get`).

    ``fork=False`` (the default) starts it as a fresh interpreter, so that
    its memory image is small whatever the host holds.  ``fork=True`` forks
    it from this process instead, which is cheaper and right only for a
    small single-threaded host: the command line.
    """

    def __init__(self, fork: bool = False) -> None:
        self._fork = fork
        self._lock = threading.Lock()
        self._ctl: _socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = -1
        self._failure: BaseException | None = None
        #: Our end of a server started but not yet greeted.
        self._pending: _socket.socket | None = None
        #: The spare the server offered us (see :class:`_Offer`).
        self._offer: _Offer | None = None

    def start(self) -> None:
        """Start the server now instead of at the first spawn, without
        waiting for it to be ready.  The command line forks it this way
        before its own heavy imports, so that the server is small and gets
        ready on the other CPU while the command line builds the policy."""
        with self._lock:
            if self._ctl is None and self._pending is None:
                self._begin()

    def _start(self) -> None:
        if self._pending is None:
            self._begin()
        host, self._pending = self._pending, None
        assert host is not None
        self._greet(host)

    def _begin(self) -> None:
        if self._fork:
            self._start_forked()
        else:
            self._start_fresh()

    def _start_forked(self) -> None:
        host, server = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the server
            code = 1
            try:
                host.close()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, server.fileno())
                os.closerange(server.fileno() + 1, 1 << 20)
                # Imported here: the host needs none of the server's modules.
                from stockade.launch.forkserver import run_server

                # One run per command line: no spare kept ready.
                code = run_server(server.fileno(), parent, spares=False)
            finally:
                os._exit(code)
        server.close()
        self._pid = pid
        self._pending = host

    def _start_fresh(self) -> None:
        host, server = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        boot = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from stockade.launch.forkserver import main; raise SystemExit(main(sys.argv[2:]))"
        )
        ready = threading.Event()

        def keeper() -> None:
            # This thread forks the server and then stays alive for as long as
            # the process does, so that the server's PDEATHSIG fires only when
            # the host itself dies.
            try:
                self._proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-I",
                        "-S",
                        "-c",
                        boot,
                        package_parent,
                        str(server.fileno()),
                        str(os.getpid()),
                    ],
                    pass_fds=[server.fileno()],
                    stdin=subprocess.DEVNULL,
                )
            except BaseException as err:
                self._failure = err
            finally:
                ready.set()
            # Once the server is started (its signal mask is this thread's),
            # it takes none of the host's signals (see supervisor/engine.py).
            signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
            threading.Event().wait()

        threading.Thread(target=keeper, name="stockade-forkserver", daemon=True).start()
        ready.wait()
        server.close()
        if self._failure is not None:
            host.close()
            raise LaunchError("starting the fork server", errno.EIO, str(self._failure))
        assert self._proc is not None
        self._pid = self._proc.pid
        self._pending = host

    def _greet(self, host: _socket.socket) -> None:
        host.settimeout(START_TIMEOUT)
        try:
            got = recv_message(host)
        except OSError as err:
            host.close()
            raise LaunchError("starting the fork server", err.errno or errno.EIO) from err
        host.settimeout(None)
        if got is None or got[0][0] != "ready":
            host.close()
            raise LaunchError("starting the fork server", errno.EIO, "no greeting")
        self._ctl = host

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def close(self) -> None:
        """Stop the server (it ends every run first) and wait for it."""
        with self._lock:
            self._drop_offer()
            for sock in (self._ctl, self._pending):
                if sock is not None:
                    sock.close()
            self._ctl = self._pending = None
            if self._proc is not None:
                self._proc.wait()
            elif self._pid > 0:
                try:
                    os.waitpid(self._pid, 0)
                except ChildProcessError:
                    pass
            self._pid = -1

    def spawn(self, request: Request, fds: list[int]) -> _socket.socket | _Offer:
        """Send one request: to the spare the server offered, if there is
        one (returns it: the caller reads its error pipe), else to the
        server (returns the run's socket, our end, for its reply)."""
        data = dumps(request.wire())
        with self._lock:
            if self._ctl is None or not self._alive():
                self._drop_offer()
                if self._ctl is not None:
                    self._ctl.close()
                    self._ctl = None
                self._start()
            assert self._ctl is not None
            self._collect_offers()
            offer, self._offer = self._offer, None
            if offer is not None and _valid_env(request.env):
                try:
                    offer.sock.sendmsg([data], _rights(fds))
                except OSError:
                    offer.close()  # it died waiting; the server reaps it
                else:
                    offer.sock.close()
                    try:
                        send_message(self._ctl, ("took", offer.pid, data))
                    except OSError:
                        pass  # the server is gone, and with it the spare
                    return offer
            elif offer is not None:
                offer.close()
            mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            try:
                self._ctl.sendmsg([data], _rights([theirs.fileno(), *fds]))
            except BaseException:
                mine.close()
                raise
            finally:
                theirs.close()
        return mine

    def _collect_offers(self) -> None:
        """Take the spares the server has offered since the last look."""
        assert self._ctl is not None
        while True:
            try:
                got = recv_message(self._ctl, _socket.MSG_DONTWAIT | _socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the server is gone: the next spawn notices
            if got is None:
                return
            (what, *rest), fds = got
            if what == "spare" and len(fds) == 3:
                self._drop_offer()
                self._offer = _Offer(rest[0], *fds)
            else:
                for fd in fds:
                    os.close(fd)

    def _drop_offer(self) -> None:
        if self._offer is not None:
            self._offer.close()
            self._offer = None


class _Offer:
    """A spare the server offered: its pid, the socket it waits for its
    request on, its error pipe (EOF once it has exec'd, else an error
    record) and our end of its run socket (its exit status comes there)."""

    def __init__(self, pid: int, sock: int, err_r: int, conn: int) -> None:
        self.pid = pid
        self.sock = _socket.socket(fileno=sock)
        self.err_r = err_r
        self.conn = _socket.socket(fileno=conn)

    def close(self) -> None:
        """Give it up: the server kills it when its run socket closes."""
        self.sock.close()
        if self.err_r >= 0:
            os.close(self.err_r)
            self.err_r = -1
        self.conn.close()


def _rights(fds: list[int]) -> list[tuple[int, int, array.array[int]]]:
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


#: Every signal but those a fault raises in the thread itself.
_ASYNC_SIGNALS = signal.valid_signals() - {
    signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS,
}  # fmt: skip


def _valid_env(env: Mapping[str, str]) -> bool:
    # What the server refuses (and reports) itself.
    return not any("=" in key or "\0" in key for key in env)


_server: ForkServer | None = None
_server_pid = -1
_server_lock = threading.Lock()


def get(fork: bool = False) -> ForkServer:
    """This process's fork server (a forked child gets its own).

    *fork* chooses how it starts (see :class:`ForkServer`) if it does not
    exist yet.
    """
    global _server, _server_pid
    with _server_lock:
        if _server is None or _server_pid != os.getpid():
            _server = ForkServer(fork=fork)
            _server_pid = os.getpid()
        return _server


class ServerProcess(subprocess.Popen[Any]):
    """A sandboxed command started by the fork server; a Popen otherwise."""

    def __init__(
        self,
        args: Sequence[str],
        prepared: Prepared,
        *,
        env: Mapping[str, str] | None = None,
        **popen_kwargs: Any,
    ) -> None:
        self.prepared = prepared
        self.timed_out = False
        self._conn: _socket.socket | None = None
        self._env = dict(env) if env is not None else dict(os.environ)
        super().__init__(list(args), **popen_kwargs)

    @property
    def exit_fd(self) -> int:
        """A descriptor that becomes readable when the command has exited."""
        assert self._conn is not None
        return self._conn.fileno()

    # Popen's hooks (posix implementation, Python 3.11+).

    def _execute_child(self, args: Any, executable: Any, preexec_fn: Any, close_fds: Any,
                       pass_fds: Any, cwd: Any, env: Any, startupinfo: Any, creationflags: Any,
                       shell: Any, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int,
                       errread: int, errwrite: int, *rest: Any) -> None:  # fmt: skip
        try:
            plan = self.prepared.plan
            stdio = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1,
                     errwrite if errwrite != -1 else 2]  # fmt: skip
            names = ["stdin", "stdout", "stderr", "ruleset"]
            fds = [*stdio, self.prepared.ruleset_fd]
            if self.prepared.cgroup is not None:
                names.append("cgroup")
                fds.append(self.prepared.cgroup.procs_fd)
            if self.prepared.handoff_fd >= 0:
                names.append("notify")
                fds.append(self.prepared.handoff_fd)
            from stockade.launch.options import child_options

            request = Request(
                args=[os.fsdecode(a) for a in args],
                env=self._env,
                # The server has its own working directory; Popen's default
                # is ours.
                cwd=os.fsdecode(cwd) if cwd is not None else os.getcwd(),
                fds=["conn", *names],
                setup=child_options(plan, self.prepared.terminal),
                filter_program=plan.filter_program,
                notify_program=self.prepared.notify_program,
            )
            server = get()
            try:
                sent = server.spawn(request, fds)
            finally:
                self.prepared.release_handoff()
            if isinstance(sent, _Offer):
                self._started_by_spare(sent, request)
                return
            conn = sent
            try:
                reply = recv_message(conn)
            except OSError as err:
                conn.close()
                raise LaunchError("fork server", err.errno or errno.EIO) from err
            if reply is None:
                conn.close()
                raise LaunchError("fork server", errno.EPIPE, "the server closed the run")
            (what, *rest_reply), _ = reply
            if what != "started":
                conn.close()
                if what == "oserror":
                    code, strerror, filename = rest_reply
                    raise OSError(code, strerror, filename)
                step, code, target = rest_reply
                raise LaunchError(step, code, target)
            self._conn = conn
            self.pid = rest_reply[0]
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]

    def _started_by_spare(self, offer: _Offer, request: Request) -> None:
        """Wait for the spare the request went to: EOF on its error pipe
        once it has exec'd, or the record of the step that failed."""
        try:
            record = read_record(offer.err_r)
        finally:
            os.close(offer.err_r)
            offer.err_r = -1
        if record:
            offer.conn.close()
            # Imported only here: the host needs none of the server's modules.
            from stockade.launch.forkserver import record_error

            raise record_error(record, request)
        self._conn = offer.conn
        self.pid = offer.pid
        self._child_created = True

    def _read_exit(self, timeout: float | None) -> bool:
        assert self._conn is not None
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return False
        try:
            got = recv_message(self._conn)
        except OSError:
            got = None
        if got is not None and got[0][0] == "exit":
            self.returncode = got[0][1]
        else:
            # The server is gone, and with it (PDEATHSIG) the command.
            self.returncode = -signal.SIGKILL
        self._release()
        return True

    def _internal_poll(self, *args: Any, **kwargs: Any) -> int | None:
        if self.returncode is None and self._conn is not None:
            self._read_exit(0)
        return self.returncode

    def _wait(self, timeout: float | None) -> int:
        if self.returncode is not None:
            return self.returncode
        if not self._read_exit(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def exited(self, timeout: float | None = 0) -> bool:
        """Whether the command has exited (waiting up to *timeout*)."""
        if self.returncode is not None:
            return True
        ready, _, _ = select.select([self.exit_fd], [], [], timeout)
        return bool(ready)

    def send_signal(self, sig: int) -> None:
        """Signal the command (through the server, which has not reaped it)."""
        self._tell(("signal", int(sig)))

    def kill_tree(self) -> None:
        """SIGKILL the command and everything it started."""
        # Once the exit message is here, the server has killed the tree
        # already (before it reaped the command): nothing to ask.
        if self._internal_poll() is None:
            self._tell(("kill_tree",))

    def signal_group(self, sig: int) -> None:
        """Signal the command's process group (terminal signals, forwarded)."""
        self._tell(("signal_group", int(sig)))

    def _tell(self, message: tuple[Any, ...]) -> None:
        if self.returncode is not None or self._conn is None:
            return
        try:
            send_message(self._conn, message)
        except OSError:
            pass  # it exited meanwhile; the exit message is waiting

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.prepared.close()
