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
Messages are marshalled (pickled when marshal cannot carry them) by the
host, which runs as the same user and started it: the server trusts its
host, and nothing else can reach the socket pair.

Spares: forking is the slowest part of a start (the server is a whole
interpreter), so the server forks policy-free *spares* ahead of time.
A spare closes what it inherited, resets its signals and waits on its
own socket pair for one request.

- The server *offers* one spare to the host over the control socket: the
  spare's request socket, its error pipe and the host's end of a new run
  socket.  The host sends its next request straight to that spare and
  reads the error pipe itself (EOF once it has exec'd), so the server is
  on neither the request's nor the start's way (two hops fewer); it only
  hears ``("took", pid, request)``.  From the offer on, the spare is a
  run like any other: the server reaps it and sends its exit status, and
  kills it if the host lets go of its run socket.
- It keeps a second spare in *reserve*: on ``took`` the reserve is
  offered at once, and the next reserve is forked only once a run has
  ended, not while a spare sets up and execs (the fork and the new
  spare's start would compete with it for the CPUs).  Requests that come
  over the control socket (more than one at a time, or a host whose offer
  is in use) go to the reserve, and the next one forks while it sets up.
- Once a run has ended, the server tells the next spare to build the
  setup of the last request ahead (``PREPARE``, with the request), for a
  request that repeats it.

The spare does what Popen's child does (stdio, working directory, signal
dispositions), then :meth:`ChildSetup.run`, closes every other
descriptor and execs, searching ``PATH`` as Popen does.  Whatever
returns from ``run()`` execs; a failure comes back over the error pipe as
a record, as from the child's own steps.  The spare holds no policy until
its request arrives, is the server's child (so the parent check, the
parent-death signal and the reaping are the same as for a Popen child),
and is never counted as an orphan to kill while it waits.
"""

from __future__ import annotations

import _socket
import array
import ctypes
import errno
import gc
import os
import selectors
import signal
import sys

from stockade.errors import LaunchError
from stockade.kernel import _ffi, caps
from stockade.kernel.seccomp import PreparedFilter
from stockade.launch.child import (
    ChildSetup,
    decode_record,
    failed_target,
    notify_setup,
)
from stockade.launch.options import bounding_to_drop
from stockade.launch.reaper import children, kill_tree
from stockade.launch.wire import (
    Request,
    loads,
    read_record,
    recv_message,
    recv_raw,
    send_message,
)

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_SET_CHILD_SUBREAPER = 36
#: What an idle spare calls itself (``/proc/PID/comm``): exec renames it.
SPARE_NAME = b"stockade-spare"
# Error records of a spare's own steps (beside the child's STEP_* numbers).
SPARE_STDIO = 0x100
SPARE_CHDIR = 0x101
SPARE_EXEC = 0x102
SPARE_SETUP = 0x103
#: Tells a waiting spare to prepare a request ahead (see _spare_main).
PREPARE = b"prepare"
#: The distinct recent requests a spare prepares ahead: a host that
#: alternates a few programs or sandboxes finds its request ready.
MAX_SAMPLES = 4
#: Exit status of a spare that failed before or at exec.
SPARE_FAILED = 127


class _Run:
    def __init__(self, conn: _socket.socket, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.returncode: int | None = None
        #: An offered spare's request socket (our copy, to tell it to
        #: prepare), until the host has sent its request.
        self.sock: _socket.socket | None = None
        self.told = False

    def drop_sock(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _Spare:
    """A forked process waiting for one request on *sock*; *err_r* reads
    its error pipe (EOF once it has exec'd)."""

    def __init__(self, pid: int, sock: _socket.socket, err_r: int) -> None:
        self.pid = pid
        self.sock = sock
        self.err_r = err_r
        self.told = False

    def close(self) -> None:
        self.sock.close()
        os.close(self.err_r)


class Server:
    """The server loop.  Build it in the server process only."""

    def __init__(self, ctl: _socket.socket, spares: bool = True) -> None:
        self.ctl = ctl
        #: Keep a spare ready for the next request.  Off for a host that
        #: starts one sandbox (the command line): forking the next spare
        #: would only cost it time.
        self.spares = spares
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
        #: The spare kept for requests that come over the control socket.
        self.spare: _Spare | None = None
        #: The spare offered to the host (a run with no command yet).
        self.offered: _Run | None = None
        #: The last request, for the next spare to prepare ahead.
        self._sample: bytes | None = None
        #: The last few distinct requests, the latest first.
        self._samples: list[bytes] = []
        # A spare is named from birth (the name is inherited), so that it
        # is never seen under the server's name: see _fork_spare.
        self._own_name = ctypes.create_string_buffer(16)
        _ffi.prctl(PR_GET_NAME, ctypes.addressof(self._own_name))
        self._spare_name = ctypes.create_string_buffer(SPARE_NAME)
        if spares:
            self._fork_spare()
            self._offer()
            self._fork_spare()

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
        # the SIGTERM parent-death signal: whichever comes second only sets
        # the flag the loop has stopped looking at.
        for pid in list(self.runs):
            kill_tree(pid)
        self._kill_adopted(everything=True)

    def _loop(self) -> None:
        # The signal wakes the selector (set_wakeup_fd): the flag is seen.
        while not _host_gone:
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
        try:
            got = recv_raw(self.ctl)
        except OSError:
            # ECONNRESET: the host closed its end with a spare we offered
            # still unread; like EOF, the host is gone.
            return False
        if got is None:
            return False
        data, fds = got
        message = loads(data)
        if isinstance(message, tuple):
            # ("took", pid, request): the host sent the request to the
            # offered spare (a copy comes here, for the next to prepare).
            for fd in fds:
                os.close(fd)
            self._took(message[1], message[2])
            return True
        req = Request(**message)
        named = dict(zip(req.fds, fds, strict=True))
        conn = _socket.socket(fileno=named.pop("conn"))
        try:
            run = _Run(conn, self._start(req, data, named))
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

    def _start(self, req: Request, data: bytes, fds: dict[str, int]) -> int:
        """Hand the request to a spare; returns its pid once it has exec'd."""
        for key in req.env:
            if "=" in key or "\0" in key:
                raise ValueError("illegal environment variable name")
        spare = self._take_spare()
        self._remember(data)
        try:
            passed = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds.values()))]
            try:
                spare.sock.sendmsg([data], passed)
            except OSError:
                # It died waiting (something killed it): use a fresh one.
                self._drop_spare(spare)
                spare = self._take_spare()
                spare.sock.sendmsg([data], passed)
            if self.spares:
                # The next spare forks while this one sets up.
                try:
                    self._fork_spare()
                except OSError:
                    pass  # the next request forks one, or reports why it cannot
            record = read_record(spare.err_r)
        finally:
            spare.close()
        if record:
            os.waitpid(spare.pid, 0)
            raise record_error(record, req)
        if self.offered is None:
            # The host's spare is gone (it died waiting): offer it this one.
            self._offer()
        return spare.pid

    # -- spares --------------------------------------------------------------

    def _fork_spare(self, prepare: bool = False) -> None:
        """Fork the spare kept here (if there is none).  With *prepare*, it
        builds the setup of the last request as soon as it is born (see
        :meth:`_replenish`)."""
        if self.spare is not None:
            return
        samples = tuple(self._samples) if prepare else ()
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        server_pid = os.getpid()
        _ffi.prctl(PR_SET_NAME, ctypes.addressof(self._spare_name))
        try:
            pid = os.fork()
        except BaseException:
            for s in (ours, theirs):
                s.close()
            os.close(err_r)
            os.close(err_w)
            raise
        finally:
            if os.getpid() == server_pid:
                _ffi.prctl(PR_SET_NAME, ctypes.addressof(self._own_name))
        if pid == 0:
            code = SPARE_FAILED
            try:
                code = _spare_main(
                    theirs.fileno(), err_w, server_pid, self._bounding_empty, samples
                )
            except BaseException:
                _spare_fail(err_w, SPARE_SETUP, errno.EIO)
            finally:
                os._exit(code)
        theirs.close()
        os.close(err_w)
        self.spare = _Spare(pid, ours, err_r)
        self.spare.told = bool(samples)

    def _offer(self) -> None:
        """Hand the spare to the host, which sends its next request to it
        directly (the server is then not on the way of a start: one hop
        less each way).  From now on it is a run whose command has not
        come yet: the host reads its error pipe, the server reaps it and
        sends its exit status, and it dies with the host's end of its
        run socket like any run."""
        spare = self.spare
        if spare is None or self.offered is not None:
            return
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            send_message(self.ctl, ("spare", spare.pid), [spare.sock.fileno(), spare.err_r,
                                                          theirs.fileno()])  # fmt: skip
        except OSError:
            ours.close()
            return  # the host is gone; the loop ends on its EOF
        finally:
            theirs.close()
        self.spare = None
        os.close(spare.err_r)
        run = _Run(ours, spare.pid)
        run.sock = spare.sock
        run.told = spare.told
        self.runs[run.pid] = run
        self.sel.register(ours, selectors.EVENT_READ, run)
        self.offered = run

    def _took(self, pid: int, data: bytes) -> None:
        """The host has sent *data* to the spare it was offered: offer it
        the one kept in reserve (forked only if there is none: see
        :meth:`_replenish`)."""
        if self.offered is None or self.offered.pid != pid:
            return
        self.offered.drop_sock()
        self.offered = None
        self._remember(data)
        try:
            self._fork_spare()
        except OSError:
            return  # the next request forks one, or reports why it cannot
        self._offer()

    def _remember(self, data: bytes) -> None:
        """Keep *data* as the latest request, and among the last few."""
        self._sample = data
        if data in self._samples:
            self._samples.remove(data)
        self._samples.insert(0, data)
        del self._samples[MAX_SAMPLES:]

    def _replenish(self) -> None:
        """Fork the spare kept in reserve, once a run has ended.  Not while
        a spare sets up and execs: on a machine with few CPUs, forking (and
        the new spare's own start) then competes with it for a CPU, and
        the start waits (this way a run of ``/bin/true`` took about 0.4 ms
        less, measured alternately).  It prepares the last request at once:
        it is offered on the next ``took`` and gets the request after that,
        so its preparation is never what a request waits for (told at the
        exit before its request instead, a spare of a host that starts runs
        back to back was still preparing when the request came)."""
        if self.spares and self.spare is None:
            try:
                self._fork_spare(prepare=True)
            except OSError:
                pass  # the next request forks one, or reports why it cannot

    def _nudge(self) -> None:
        """Let the next spare prepare the last request ahead, now that a
        run has ended (one has just started, so another may follow): the
        one offered to the host, else the one kept here."""
        if self._sample is None:
            return
        target = self.offered if self.offered is not None else self.spare
        if target is None or target.sock is None or target.told:
            return
        target.told = True
        try:
            target.sock.sendmsg([PREPARE + self._sample], [], _socket.MSG_DONTWAIT)
        except OSError:
            pass  # it died (the next request finds out), or is not reading

    def _take_spare(self) -> _Spare:
        """The waiting spare (forked now if there is none); it stops being
        the spare: the caller owns it."""
        spare = self.spare
        if spare is not None and _exited(spare.pid):
            self._drop_spare(spare)
            spare = None
        if spare is None:
            self._fork_spare()
            spare = self.spare
            assert spare is not None
        self.spare = None
        return spare

    def _drop_spare(self, spare: _Spare) -> None:
        if self.spare is spare:
            self.spare = None
        spare.close()
        _signal(spare.pid)
        try:
            os.waitpid(spare.pid, 0)
        except ChildProcessError:
            pass  # reaped by the loop already

    def _command(self, run: _Run) -> None:
        try:
            got = recv_message(run.conn)
        except OSError:
            got = None
        if got is None:
            # The host let go of this run: nobody can wait for it any more.
            self.sel.unregister(run.conn)
            run.conn.close()
            if run.returncode is None:
                self.runs.pop(run.pid, None)
                kill_tree(run.pid)
            return
        (what, *rest), fds = got
        for fd in fds:
            os.close(fd)
        if run.returncode is not None:
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
            if run is not None and run is self.offered:
                self.offered = None  # died before the host sent it a request
            if run is not None:
                run.drop_sock()
            if run is not None:
                # The zombie keeps pid and group id reserved while we kill.
                # Its children were reparented to us when it died, so there
                # is no tree beneath it: its group, then what we adopted.
                _killpg(pid)
                self._kill_adopted(reaping=pid)
            status = os.waitpid(pid, 0)[1]
            if self.spare is not None and pid == self.spare.pid:
                self.spare.close()
                self.spare = None
            if run is not None:
                code = os.waitstatus_to_exitcode(status)
                run.returncode = code
                # Stays registered: the host closes it once it has read this.
                _reply(run.conn, ("exit", code))
                # The offered spare prepares while the reserve forks.
                self._nudge()
                self._replenish()

    def _kill_adopted(self, everything: bool = False, reaping: int = 0) -> None:
        """Kill what was reparented to us: it outlived its command.
        *reaping* is the run being reaped: its group is killed already, and
        a zombie has no tree to walk."""
        mains = set() if everything else set(self.runs)
        if self.spare is not None and not everything:
            mains.add(self.spare.pid)
        if reaping:
            mains.add(reaping)
        for pid in children(os.getpid()):
            if pid not in mains:
                kill_tree(pid)


def _exited(pid: int) -> bool:
    """Whether our child *pid* has exited (without reaping it)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _spare_main(
    sock_fd: int, err_w: int, server_pid: int, bounding_empty: bool, samples: tuple[bytes, ...]
) -> int:
    """The life of a spare: wait for one request, set up, exec.

    Runs in a process forked from the single-threaded server, so it may
    allocate and decode; only :meth:`ChildSetup.run` is bound to the
    child's rules.  Returns (to be ``_exit``ed) only when not exec'ing.
    """
    signal.set_wakeup_fd(-1)
    # What Popen's child resets (SIGPIPE, SIGXFSZ), and the server's own.
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    # The server's death ends a waiting spare; ChildSetup sets it again.
    _ffi.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:
        return SPARE_FAILED
    # Nothing of the server's stays open here: other runs' sockets, the
    # control socket, the selector.
    keep = sorted((sock_fd, err_w))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
    gc.disable()
    sock = _socket.socket(fileno=sock_fd)
    # Prepared ahead, at a time the server chose (not while a run starts:
    # that would slow it), on the guess that the next request repeats one
    # of the last few (programs run again and again): its descriptors will
    # arrive under the lowest free numbers.  A request that differs gets
    # its own preparation, after all the faster for the copy-on-write
    # faults these took.  A reserve is born with the samples; a spare
    # forked without is told one (PREPARE) once a run has ended.
    guesses: list[tuple[bytes, list[int], _Ready]] = []
    pending = list(samples)
    got: tuple[bytes, list[int]] | None = None
    while True:
        for sample in pending:
            if len(guesses) < MAX_SAMPLES and all(g[0] != sample for g in guesses):
                count = len(Request(**loads(sample)).fds) - 1
                free = (fd for fd in range(3, 3 + count + 2) if fd not in (sock_fd, err_w))
                predicted = [next(free) for _ in range(count)]
                ready = _prepare(sample, predicted, err_w, server_pid, bounding_empty)
                ready[2].warm()
                guesses.append((sample, predicted, ready))
        got = recv_raw(sock)
        if got is None or not got[0].startswith(PREPARE):
            break
        pending = [got[0][len(PREPARE) :]]
    if got is None:
        return 0
    for sample, predicted, ready in guesses:
        if got[0] == sample and got[1] == predicted:
            req, named, setup, candidates = ready
            break
    else:
        req, named, setup, candidates = _prepare(got[0], got[1], err_w, server_pid, bounding_empty)
    del guesses
    # What Popen's child does before its preexec_fn, in its order (the
    # signal dispositions are reset already).
    try:
        for target, key in enumerate(("stdin", "stdout", "stderr")):
            if key in named:
                os.dup2(named[key], target)
    except OSError as err:
        _spare_fail(err_w, SPARE_STDIO, err.errno)
    if req.cwd is not None:
        try:
            os.chdir(req.cwd)
        except OSError as err:
            _spare_fail(err_w, SPARE_CHDIR, err.errno)
    setup.run()
    # Only the process that returns from run() gets here.
    os.closerange(3, err_w)
    os.closerange(err_w + 1, os.sysconf("SC_OPEN_MAX"))
    first = 0
    last = errno.ENOENT
    for path in candidates:
        try:
            os.execve(path, req.args, req.env)  # noqa: S606 - what Popen does, in the spare
        except OSError as err:
            last = err.errno or errno.EIO
            if not first and last not in (errno.ENOENT, errno.ENOTDIR):
                first = last
    _spare_fail(err_w, SPARE_EXEC, first or last)
    return SPARE_FAILED


#: A request decoded and made ready to run: the request, its descriptors
#: by name, its ChildSetup and the paths to try for its command.
_Ready = tuple[Request, dict[str, int], ChildSetup, list[str]]


def _prepare(
    data: bytes, fds: list[int], err_w: int, server_pid: int, bounding_empty: bool
) -> _Ready:
    """Decode a request and build its ChildSetup and the paths to try for
    its command, the request's descriptors being *fds*."""
    req = Request(**loads(data))
    names = [n for n in req.fds if n != "conn"]
    named = dict(zip(names, fds, strict=True))
    setup = ChildSetup(
        error_fd=err_w,
        parent_pid=server_pid,
        cap_last=bounding_to_drop(
            req.setup.get("drop_caps", False),
            req.setup.get("namespaces", frozenset()),
            bounding_empty,
        ),
        **req.setup,
        cgroup_procs_fd=named.get("cgroup"),
        landlock_fd=named.get("ruleset"),
        seccomp_filter=PreparedFilter(req.filter_program, req.filter_flags)
        if req.filter_program
        else None,
        **notify_setup(req.notify_program, named.get("notify")),
    )
    exe = req.args[0]
    if os.path.dirname(exe):
        candidates = [exe]
    else:
        candidates = [os.path.join(d, exe) for d in os.get_exec_path(req.env)]
    return req, named, setup, candidates


def record_error(record: bytes, req: Request) -> Exception:
    """The exception for a spare's error record about *req*."""
    value = int.from_bytes(record[:8], "little")
    step, err = value & 0xFFFF, (value >> 16) & 0xFFFF
    if step == SPARE_EXEC:
        return OSError(err, os.strerror(err), req.args[0])
    if step == SPARE_CHDIR:
        return OSError(err, os.strerror(err), req.cwd)
    if step == SPARE_STDIO:
        return LaunchError("wiring stdin, stdout and stderr (dup2)", err)
    if step == SPARE_SETUP:
        return LaunchError("fork server: preparing the child", err)
    name, err, index = decode_record(record)
    return LaunchError(
        name,
        err,
        failed_target(name, index, req.setup.get("masks", ()), req.setup.get("mounts", ())),
    )


def _spare_fail(err_w: int, step: int, err: int | None) -> None:
    os.write(err_w, (step | ((err or errno.EIO) << 16)).to_bytes(8, "little"))
    os._exit(SPARE_FAILED)


def _reply(conn: _socket.socket, message: object) -> None:
    try:
        send_message(conn, message)
    except OSError:
        pass  # the host went away; the run is killed when we notice


#: Set when the host has died (the parent-death signal, SIGTERM).  A flag
#: the loop checks, not an exception raised wherever the signal lands:
#: raised between the loop's end (on EOF, the host's other notice) and the
#: start of the cleanup, it would skip the cleanup and leave the runs'
#: trees to init.
_host_gone = False


def _host_died(_signum: int, _frame: object) -> None:
    global _host_gone
    _host_gone = True


def main(argv: list[str]) -> int:
    """Entry point in the server process: ``main([CTL_FD, HOST_PID])``."""
    code = run_server(int(argv[0]), int(argv[1]))
    # Everything is ended; skip the interpreter's teardown, so that the
    # server is gone as soon as its runs are (and its spares' shared pages
    # are not walked once more).
    os._exit(code)


def run_server(ctl_fd: int, host_pid: int, spares: bool = True) -> int:
    """Become the fork server of *host_pid* on the socket *ctl_fd*
    (*spares*: see :class:`Server`)."""
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
    ctl = _socket.socket(fileno=ctl_fd)
    # What is loaded now stays shared with every spare: the collector must
    # not write to it (copy-on-write faults in each spare).
    gc.freeze()
    send_message(ctl, ("ready", os.getpid()))
    Server(ctl, spares).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
