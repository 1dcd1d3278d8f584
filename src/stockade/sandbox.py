"""Sandbox: policy -> plan -> launch -> supervise -> reap -> Result."""

from __future__ import annotations

import io
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

from stockade._record import field, record
from stockade.errors import PolicyError
from stockade.kernel import cgroup, landlock
from stockade.launch.spawn import Prepared, RulesetCache, SandboxProcess
from stockade.plan import EnforcementPlan, KernelFacts, compile_plan
from stockade.policy.model import Policy

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

#: PATH given to a command when the environment is cleaned.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@record(frozen=True)
class Denial:
    """One access the sandbox refused (SPEC section 6)."""

    syscall: str
    category: str
    target: str
    pid: int
    errno: int
    #: The rule that denied it (rule-language text); None when the
    #: category's default did, "on_event" when the callback did.
    rule: str | None = None


@record()
class Result:
    """What a finished sandboxed run produced."""

    args: list[str]
    returncode: int
    stdout: bytes | None = None
    stderr: bytes | None = None
    timed_out: bool = False
    #: Seconds from spawn to exit.
    duration: float = 0.0
    denials: list[Denial] = field(default_factory=list)

    @property
    def signal(self) -> int | None:
        """The signal that killed the command, or None if it exited."""
        return -self.returncode if self.returncode < 0 else None

    def check_returncode(self) -> None:
        """Raise ``subprocess.CalledProcessError`` if the command failed."""
        if self.returncode:
            raise subprocess.CalledProcessError(
                self.returncode, self.args, self.stdout, self.stderr
            )


def kernel_facts() -> KernelFacts:
    """What the plan needs to know about this kernel and this process."""
    abi = landlock.abi_version() or 0
    privileged = os.geteuid() == 0
    return KernelFacts(
        landlock_abi=abi,
        privileged=privileged,
        cgroup_pids=privileged and cgroup.pids_root() is not None,
        user_namespaces=_user_namespaces_allowed(privileged),
    )


def _user_namespaces_allowed(privileged: bool) -> bool:
    """A cheap reading of the switches that forbid user namespaces.  What
    they do not show (an AppArmor profile, an outer sandbox) surfaces as
    the child's unshare errno, in a LaunchError naming the step."""

    def read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    if read("/proc/sys/user/max_user_namespaces") == "0":
        return False
    return privileged or read("/proc/sys/kernel/unprivileged_userns_clone") != "0"


_Paths = Iterable[str | os.PathLike[str]]

#: os.environ's encoded contents and the same decoded, from the last look.
_ENVIRON: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def _environ() -> dict[str, str]:
    """A copy of ``os.environ``.  ``dict(os.environ)`` decodes every
    variable (about 35 µs a run here); the decoded copy is kept while the
    encoded contents compare equal (a fraction of a microsecond)."""
    global _ENVIRON
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):
        return dict(os.environ)
    cached = _ENVIRON
    if cached is None or cached[0] != data:
        cached = (dict(data), dict(os.environ))
        _ENVIRON = cached
    return dict(cached[1])


class Sandbox:
    """A reusable sandbox policy that runs commands confined by it.

    Build it from keyword arguments (SPEC section 3; each has the name of
    a ``stockade run`` option, with ``binds``/``tmpfs`` lists for
    ``--bind``/``--tmpfs`` and ``root="tmpfs"`` or a directory for
    ``--root``) or a ready :class:`Policy`.  Invalid arguments
    raise :class:`stockade.PolicyError` before anything runs; a policy this
    kernel cannot enforce raises :class:`stockade.UnsupportedError` at the
    first run.  :meth:`run` and :meth:`popen` may be called from many
    threads at once.

    ``spawner`` chooses who forks the sandboxed process: ``"server"`` (the
    default) sends each run to a small fork server started once per
    process, so the cost does not grow with this process's memory and
    every process a run leaves behind is found and ended; ``"fork"`` forks
    from this process, which must then be a child subreaper that kills and
    reaps what is reparented to it.

    ``pty=True`` (``stockade run -i``) runs each command on a new
    pseudo-terminal: its stdin, stdout and stderr are the terminal, which is
    also its controlling terminal, so a shell's job control works.
    :meth:`popen` gives the host side as ``proc.pty``; :meth:`run` types
    ``input`` into it and returns what the terminal displayed as ``stdout``.
    """

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        profile: str | None = None,
        read: _Paths = (),
        write: _Paths = (),
        exec: _Paths = (),
        deny: _Paths = (),
        rules: Iterable[str] = (),
        net_allow: Iterable[str] = (),
        net_bind: Iterable[str | int] = (),
        memory: str | int | None = None,
        max_procs: int | None = None,
        timeout: float | None = None,
        rlimits: Mapping[str, Any] | Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        cwd: str | None = None,
        no_aslr: bool = False,
        no_thp: bool = False,
        cpus: Iterable[int] = (),
        unshare: Iterable[str] | str = (),
        map_root: bool = False,
        hostname: str | None = None,
        domainname: str | None = None,
        time_offset: int | str | Mapping[str, int] | None = None,
        proc_subset_pid: bool = False,
        no_net: bool = False,
        binds: Iterable[str] = (),
        tmpfs: Iterable[str] = (),
        root: str | os.PathLike[str] | None = None,
        pty: bool = False,
        on_event: Callable[[Any], Any] | None = None,
        spawner: str = "server",
    ) -> None:
        if on_event is not None and not callable(on_event):
            raise PolicyError(
                f"expected a callable (got {type(on_event).__name__})", "Sandbox", "on_event"
            )
        self.on_event = on_event
        self._log: Any = None
        if policy is not None:
            given = [read, write, exec, deny, rules, net_allow, net_bind]
            if profile is not None or any(list(x) for x in given):
                raise PolicyError(
                    "give either policy= or access options, not both", "Sandbox", "policy"
                )
            self.policy = policy
        else:
            from stockade.policy.builder import PolicyBuilder

            b = PolicyBuilder("Sandbox")
            if profile is not None:
                b.profile(profile)
            for kind, paths in (("read", read), ("write", write), ("exec", exec)):
                for path in paths:
                    text = _existing(os.fspath(path), kind, root)
                    getattr(b, kind)(text)
            for path in deny:
                b.deny(os.fspath(path))
            for spec in net_allow:
                b.net_allow(spec)
            for bind in binds:
                b.set("bind", bind)
            for dst in tmpfs:
                b.set("tmpfs", os.fspath(dst))
            for ports in net_bind:
                b.net_bind(str(ports))
            for line in rules:
                b.rule(line)
            items: dict[str, Any] = {
                "memory": memory,
                "max_procs": max_procs,
                "timeout": timeout,
                "cwd": cwd,
                "hostname": hostname,
                "root": os.fspath(root) if root is not None else None,
                "domainname": domainname,
                "time_offset": time_offset,
                "unshare": (unshare if isinstance(unshare, str) else list(unshare)) or None,
            }
            for key, value in items.items():
                if value is not None:
                    b.set(key, value)
            if clean_env:
                b.set("clean_env", True)
            flags = (("no_aslr", no_aslr), ("map_root", map_root), ("no_net", no_net), ("pty", pty),
                     ("proc_subset_pid", proc_subset_pid))  # fmt: skip
            for flag, on in flags:
                if on:
                    b.set(flag, True)
            if no_thp:
                b.set("no_thp", True)
            cpu_list = list(cpus)
            if cpu_list:
                b.set("cpus", cpu_list)
            for k, v in (env or {}).items():
                b.set("env", (k, v))
            items_rl = rlimits.items() if isinstance(rlimits, Mapping) else None
            if items_rl is not None:
                for name, value in items_rl:
                    b.set("rlimit", f"{name}={value}")
            else:
                for text in rlimits:
                    b.set("rlimit", text)
            self.policy = b.build()
        if spawner not in ("server", "fork"):
            raise PolicyError(
                f"expected 'server' or 'fork' (got {spawner!r})", "Sandbox", "spawner"
            )
        self.spawner = spawner
        self._plan: EnforcementPlan | None = None
        self._rulesets: RulesetCache | None = None
        self._lock = threading.Lock()

    @property
    def plan(self) -> EnforcementPlan:
        """The enforcement plan, compiled once (raises PolicyError or
        UnsupportedError when the policy cannot be enforced here)."""
        with self._lock:
            if self._plan is None:
                from stockade.supervisor.launch import observed_categories

                is_dir, exists, realpath = path_probes(self.policy)
                self._plan = compile_plan(
                    self.policy,
                    kernel_facts(),
                    observe=observed_categories(self.on_event is not None, self.policy.log),
                    is_dir=is_dir,
                    exists=exists,
                )
                if self._plan.notify is not None and realpath is not None:
                    # Rules also match where their prefix resolves (the
                    # supervisor decides on resolved paths).
                    self._plan.notify.resolve_rule_paths(realpath)
                self._rulesets = RulesetCache(self._plan)
            return self._plan

    def environment(self, tmpdir: str | None) -> dict[str, str]:
        """The environment the command starts with."""
        p = self.policy
        env = {"PATH": DEFAULT_PATH} if p.clean_env else _environ()
        env.update(p.env)
        if tmpdir is not None:
            env["TMPDIR"] = tmpdir
        elif p.private_tmp and p.root is not None:
            env["TMPDIR"] = "/tmp"  # noqa: S108 - the private root's own tmpfs
        return env

    def popen(
        self,
        args: Sequence[str],
        *,
        terminal_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Start *args* in the sandbox; returns a ``subprocess.Popen``.

        Accepts Popen's keyword arguments except those that would undo the
        sandbox (``preexec_fn``, ``close_fds``, ``pass_fds``, ``user``...).
        The policy's ``cwd`` and environment apply unless given here.
        Raises PolicyError, UnsupportedError, LaunchError, or the OSError
        Popen raises when the command cannot be executed.

        With a ``pty`` policy the command's stdio is a new pseudo-terminal
        (``stdin``, ``stdout`` and ``stderr`` must not be given) of
        *terminal_size* ``(columns, lines)``, 80x24 by default; the returned
        process has ``pty``, an unbuffered binary file on the terminal's
        master side, which the caller reads, writes and closes.
        """
        for bad in ("preexec_fn", "close_fds", "pass_fds", "user", "group", "extra_groups",
                    "start_new_session", "process_group", "shell", "executable"):  # fmt: skip
            if bad in kwargs:
                raise PolicyError(f"not supported in a sandbox: {bad}", "popen", bad)
        plan = self.plan
        master, name = -1, None
        if self.policy.pty:
            master, slave = _open_terminal(kwargs, terminal_size)
            kwargs.update(stdin=slave, stdout=slave, stderr=slave)
            name = os.ttyname(slave)
        elif terminal_size is not None:
            raise PolicyError("needs pty=True", "popen", "terminal_size")
        try:
            proc = self._popen(args, plan, kwargs, name)
        except BaseException:
            if master >= 0:
                os.close(master)
            raise
        finally:
            if master >= 0:
                # Only the command may hold the slave: the master's reader
                # sees EIO once the sandbox is gone.
                os.close(kwargs["stdin"])
        if master >= 0:
            proc.pty = io.FileIO(master, "r+")
        return proc

    def _popen(
        self,
        args: Sequence[str],
        plan: EnforcementPlan,
        kwargs: dict[str, Any],
        terminal: str | None,
    ) -> Any:
        prepared = Prepared(plan, terminal, self._rulesets)
        supervision = None
        try:
            env = kwargs.pop("env", None)
            if env is None:
                env = self.environment(prepared.tmpdir)
            if self.policy.root is None:
                # Under a private root the child enters the policy's cwd
                # itself, after pivot_root (it may exist only inside).
                kwargs.setdefault("cwd", self.policy.cwd)
            supervision = self._supervise(plan, prepared)
            if self.spawner == "fork":
                from stockade.launch.reaper import is_subreaper

                if not is_subreaper():
                    # A daemon that outlives its command would be reparented
                    # past us, out of reach: only a subreaper can end it.
                    raise PolicyError(
                        "forking from this process needs it to be a child subreaper "
                        "(PR_SET_CHILD_SUBREAPER), so that what a sandbox leaves behind comes "
                        "back to it; use the default spawner",
                        "Sandbox",
                        "spawner",
                    )
                proc: Any = SandboxProcess(list(args), prepared, env=env, **kwargs)
            else:
                from stockade.launch.client import ServerProcess

                proc = ServerProcess(list(args), prepared, env=env, **kwargs)
        except BaseException:
            prepared.close()
            if supervision is not None:
                # The child's end is closed: the supervisor sees EOF and
                # lets go of the hand-off socket; leave nothing behind.
                supervision.finished.wait(2.0)
            raise
        proc.supervision = supervision
        return proc

    def _supervise(self, plan: EnforcementPlan, prepared: Prepared) -> Any:
        """Start supervising the run *prepared* is for, if its plan needs
        the supervisor; returns the session (None otherwise)."""
        if plan.notify is None:
            return None
        from stockade.supervisor.launch import supervise

        if self.policy.log is not None and self._log is None:
            from stockade.supervisor.events import EventLog

            self._log = EventLog(self.policy.log)
        return supervise(plan, prepared, self.on_event, self._log)

    @property
    def event_log(self) -> Any:
        """The ``log`` policy setting's open event log, or None."""
        return self._log

    def run(
        self,
        args: Sequence[str],
        *,
        input: bytes | None = None,
        capture: bool = False,
        timeout: float | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run *args* to completion and return a :class:`Result`.

        ``timeout`` (default: the policy's) kills the whole process tree
        when it passes; the result then has ``timed_out`` set.  When the
        command exits, every process it left behind is killed too.

        With a ``pty`` policy, ``input`` is typed into the command's
        terminal and followed by end of file, and ``stdout`` is everything
        the terminal displayed (``stderr`` is None); without ``capture``
        that goes to this process's stdout.
        """
        limit = timeout if timeout is not None else self.policy.timeout
        if self.policy.pty:
            for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
                if value is not None:
                    raise PolicyError(
                        "the command's stdio is its terminal with pty=True", "run", name
                    )
            return self._run_on_terminal(args, input, capture, limit, cwd, env)
        if input is not None:
            stdin = PIPE
        if capture:
            stdout = PIPE if stdout is None else stdout
            stderr = PIPE if stderr is None else stderr
        kwargs: dict[str, Any] = {"stdin": stdin, "stdout": stdout, "stderr": stderr}
        if cwd is not None:
            kwargs["cwd"] = cwd
        if env is not None:
            kwargs["env"] = dict(env)
        start = time.monotonic()
        proc = self.popen(args, **kwargs)
        try:
            out, err = _communicate(proc, input, limit)
        except BaseException:
            proc.kill_tree()
            proc.wait()
            raise
        session = getattr(proc, "supervision", None)
        if session is not None:
            # Every process of the run is reaped: the listener hangs up, and
            # the supervisor lets go of it (bounded: never hang a result).
            session.finished.wait(2.0)
        return Result(
            args=list(args),
            returncode=proc.returncode,
            stdout=out,
            stderr=err,
            timed_out=proc.timed_out,
            duration=time.monotonic() - start,
            denials=denials_of(proc),
        )

    def _run_on_terminal(
        self,
        args: Sequence[str],
        data: bytes | None,
        capture: bool,
        limit: float | None,
        cwd: str | None,
        env: Mapping[str, str] | None,
    ) -> Result:
        from stockade.launch import terminal

        kwargs: dict[str, Any] = {}
        if cwd is not None:
            kwargs["cwd"] = cwd
        if env is not None:
            kwargs["env"] = dict(env)
        start = time.monotonic()
        proc = self.popen(args, **kwargs)
        chunks: list[bytes] = []
        sink: terminal.Sink = chunks if capture else 1
        try:
            deadline = None if limit is None else start + limit
            master = proc.pty.fileno()
            if not terminal.relay(master, proc.exit_fd, source=data or b"", sink=sink,
                                  deadline=deadline):  # fmt: skip
                proc.timed_out = True
            proc.kill_tree()
            terminal.drain(master, sink)
        finally:
            proc.kill_tree()
            proc.wait()
            proc.pty.close()
        session = getattr(proc, "supervision", None)
        if session is not None:
            # As run() does: the supervisor has let go of the listener.
            session.finished.wait(2.0)
        return Result(
            args=list(args),
            returncode=proc.returncode,
            stdout=b"".join(chunks) if capture else None,
            timed_out=proc.timed_out,
            duration=time.monotonic() - start,
        )


def _open_terminal(kwargs: dict[str, Any], size: tuple[int, int] | None) -> tuple[int, int]:
    """A new pseudo-terminal pair for a ``pty`` run, its size set."""
    for name in ("stdin", "stdout", "stderr"):
        if kwargs.get(name) is not None:
            raise PolicyError("the command's stdio is its terminal with pty=True", "popen", name)
    from stockade.kernel import pty

    rows, cols = pty.DEFAULT_WINSIZE[:2]
    if size is not None:
        cols, rows = size
    master, slave = pty.open_pair()
    try:
        pty.set_winsize(master, (rows, cols, 0, 0))
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def _existing(path: str, kind: str, root: str | os.PathLike[str] | None = None) -> str:
    # Under root=DIR the path names DIR's.
    seen = path
    if root is not None and os.fspath(root) != "tmpfs":
        seen = os.path.join(os.fspath(root), path.lstrip("/"))
    if os.path.isabs(path) and not os.path.lexists(seen):
        raise PolicyError(f"{path}: no such file or directory", "Sandbox", kind)
    return path


def _communicate(
    proc: SandboxProcess, data: bytes | None, timeout: float | None
) -> tuple[bytes | None, bytes | None]:
    """Feed stdin, collect stdout/stderr, and watch the command's exit.

    Unlike ``Popen.communicate`` this does not wait for EOF from processes
    the command left in the background: when the command exits, they are
    killed, so their copies of the pipes close.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {}
    sel = selectors.DefaultSelector()
    try:
        sel.register(proc.exit_fd, selectors.EVENT_READ, "exit")
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                chunks[stream.fileno()] = []
                sel.register(stream, selectors.EVENT_READ, "out")
        view = memoryview(data or b"")
        if proc.stdin is not None:
            if data:
                sel.register(proc.stdin, selectors.EVENT_WRITE, "in")
            else:
                proc.stdin.close()
        exited = False
        while sel.get_map():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0 and not proc.timed_out and not exited:
                proc.timed_out = True
                proc.kill_tree()
            events = sel.select(remaining if not proc.timed_out else None)
            for key, _ in events:
                if key.data == "exit":
                    sel.unregister(key.fileobj)
                    exited = True
                    proc.kill_tree()
                elif key.data == "in":
                    assert proc.stdin is not None
                    try:
                        sent = os.write(proc.stdin.fileno(), view[:65536])
                    except BrokenPipeError:
                        sent = len(view)
                    view = view[sent:]
                    if not view:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                else:
                    fd = key.fileobj.fileno()  # type: ignore[union-attr]
                    chunk = os.read(fd, 65536)
                    if chunk:
                        chunks[fd].append(chunk)
                    else:
                        sel.unregister(key.fileobj)
    finally:
        sel.close()
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    out = b"".join(chunks[proc.stdout.fileno()]) if proc.stdout is not None else None
    err = b"".join(chunks[proc.stderr.fileno()]) if proc.stderr is not None else None
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    proc.wait()
    return out, err


__all__ = ["DEVNULL", "PIPE", "STDOUT", "Denial", "Result", "Sandbox"]


def denials_of(proc: Any) -> list[Denial]:
    """The denials a finished run's supervisor recorded."""
    session = getattr(proc, "supervision", None)
    if session is None:
        return []
    return [
        Denial(e.syscall, e.category, e.target, e.pid, e.errno, e.rule)
        for e in list(session.denials)
    ]


def path_probes(
    policy: Policy,
) -> tuple[Callable[[str], bool], Callable[[str], bool], Callable[[str], str] | None]:
    """``(is_dir, exists, realpath)`` for the paths the policy's rules name,
    as the sandbox will see them: under ``root = DIR`` they are DIR's (and
    rule prefixes are not resolved: DIR's absolute symlinks would point at
    the host); otherwise the host's, which a tmpfs root binds as they are."""
    root = policy.root
    if root is None or root == "tmpfs":
        return os.path.isdir, os.path.exists, os.path.realpath

    def inside(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    return (
        lambda path: os.path.isdir(inside(path)),
        lambda path: os.path.exists(inside(path)),
        None,
    )
