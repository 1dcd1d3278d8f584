"""The parent side of a launch: prepare, fork, read the child's verdict.

``prepare`` turns an :class:`EnforcementPlan` into kernel objects that the
child only has to *enter*: a Landlock ruleset fd with every rule already
added, a BPF program in a ``sock_fprog``, a private temporary directory, a
pids cgroup.  :class:`SandboxProcess` is a ``subprocess.Popen`` whose child
runs :class:`stockade.launch.child.ChildSetup` before exec, so every Popen
feature (pipes, ``communicate``, text mode, timeouts) works unchanged.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stockade.errors import LaunchError, PolicyError, UnsupportedError
from stockade.kernel import caps, cgroup, landlock
from stockade.kernel.seccomp import PreparedFilter
from stockade.launch.reaper import kill_tree
from stockade.plan import EnforcementPlan
from stockade.plan.landlock import PathGrant


class RulesetCache:
    """One plan's Landlock ruleset, built once and handed to each run as a
    duplicate, for plans whose ruleset is the same from run to run (no
    private tmp, no tmpfs, no private root, no private /proc: those get
    rules of their own per run, some added by the child; and a run on its
    own terminal gets its own, see :class:`Prepared`).

    Landlock rules name inodes, not paths: before each run the grants are
    looked up again, and a path that now leads to another inode (or exists
    when it did not, or no longer does) gets a fresh ruleset.
    """

    def __init__(self, plan: EnforcementPlan) -> None:
        self.plan = plan
        policy = plan.policy
        # A pid namespace's init adds a rule on its own procfs (proc_rights).
        fixed = not policy.tmpfs and policy.root is None and not plan.proc_rights
        self.usable = fixed and not policy.private_tmp
        #: With a private tmp, each run needs a ruleset of its own (one more
        #: rule); what is kept then is the grants, opened, with their rights:
        #: a run's ruleset is made from them with one system call per rule.
        self.grants_usable = fixed and policy.private_tmp
        self._lock = threading.Lock()
        self._fd = -1
        self._identity: list[tuple[int, int] | None] = []
        self._opened: list[tuple[int, landlock.AccessFs, str]] = []
        self._have_opened = False

    def get(self) -> int:
        """A new descriptor of the ruleset (the caller closes it)."""
        with self._lock:
            identity = _identities(self.plan)
            if self._fd < 0 or identity != self._identity:
                fd = build_ruleset(self.plan, None)
                if self._fd >= 0:
                    os.close(self._fd)
                self._fd, self._identity = fd, identity
            return os.dup(self._fd)

    def build(self, tmpdir: str | None) -> int:
        """A new ruleset of the plan's grants and *tmpdir*'s (the caller
        closes it), from the grants opened once (see :attr:`grants_usable`)."""
        with self._lock:
            identity = _identities(self.plan)
            if not self._have_opened or identity != self._identity:
                self._drop_opened()
                self._opened = _open_grants(list(self.plan.landlock.grants), -1)
                self._identity, self._have_opened = identity, True
            opened = self._opened

            def add_paths(fd: int) -> None:
                for pfd, rights, path in opened:
                    landlock.add_path_rule(fd, rights, pfd, path)
                _add_tmp_grant(fd, self.plan, tmpdir)

            return _new_ruleset(self.plan, add_paths)

    def close(self) -> None:
        """Release the cached ruleset."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._drop_opened()

    def _drop_opened(self) -> None:
        _close_opened(self._opened)
        self._opened, self._have_opened = [], False

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        _close_opened(self._opened)


def _identities(plan: EnforcementPlan) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for grant in plan.landlock.grants:
        try:
            st = os.stat(grant.path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_dev, st.st_ino))
    return out


class Prepared:
    """Kernel objects for one sandbox run; :meth:`close` releases them."""

    def __init__(
        self,
        plan: EnforcementPlan,
        terminal: str | None = None,
        rulesets: RulesetCache | None = None,
    ) -> None:
        self.plan = plan
        #: The slave of the run's own pseudo-terminal (``pty``), by name.
        self.terminal = terminal
        self.ruleset_fd = -1
        self.tmpdir: str | None = None
        self.cgroup: cgroup.PidsCgroup | None = None
        #: The notify filter and the child's end of the supervisor's
        #: hand-off socket, set by whoever supervises (see supervisor/).
        self.notify_program = b""
        self.handoff_fd = -1
        try:
            # Under a private root the private tmp is a tmpfs at /tmp instead.
            if plan.policy.private_tmp and plan.policy.root is None:
                import tempfile  # imported here: it costs the command line's start-up

                self.tmpdir = tempfile.mkdtemp(prefix="stockade-tmp-")
            if rulesets is not None and rulesets.usable and terminal is None:
                self.ruleset_fd = rulesets.get()
            elif rulesets is not None and rulesets.grants_usable and terminal is None:
                self.ruleset_fd = rulesets.build(self.tmpdir)
            else:
                self.ruleset_fd = build_ruleset(plan, self.tmpdir, terminal)
            self.filter = PreparedFilter(plan.filter_program)
            if plan.pids_cgroup_max is not None:
                root = cgroup.pids_root()
                if root is None:
                    raise UnsupportedError("max_procs as root", "a writable pids cgroup")
                self.cgroup = cgroup.PidsCgroup(root, plan.pids_cgroup_max)
        except BaseException:
            self.close()
            raise

    def release_handoff(self) -> None:
        """Close our copy of the child's hand-off end once the child (or the
        fork server) holds its own: the supervisor then sees EOF if the
        child dies before handing its listener over."""
        if self.handoff_fd >= 0:
            os.close(self.handoff_fd)
            self.handoff_fd = -1

    def close(self) -> None:
        """Release the ruleset, the cgroup and the private tmp; idempotent."""
        self.release_handoff()
        if self.ruleset_fd >= 0:
            os.close(self.ruleset_fd)
            self.ruleset_fd = -1
        if self.cgroup is not None:
            self.cgroup.destroy()
            self.cgroup = None
        if self.tmpdir is not None:
            try:
                os.rmdir(self.tmpdir)  # most runs leave it empty: no rmtree
            except OSError:
                import shutil

                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def build_ruleset(plan: EnforcementPlan, tmpdir: str | None, terminal: str | None = None) -> int:
    """Create the Landlock ruleset fd with every grant of *plan* added.

    Grants whose path does not exist are skipped: they allow nothing, and
    profiles name system directories that not every system has.  A grant on
    a directory that is not a tree (``allow/read+/etc``) is refused: Landlock
    cannot allow a directory without what is beneath it.  *terminal* is the
    slave of the run's own pseudo-terminal (``pty``): a grant on the
    ``/dev/pts`` tree is narrowed to it.
    """
    lp = plan.landlock
    grants = list(lp.grants)
    if terminal is not None:
        grants = [_own_terminal_only(g, terminal) for g in grants]
    if tmpdir is not None and lp.handled_fs:
        grants.append(_tmp_grant(plan, tmpdir))

    def add_paths(fd: int) -> None:
        root_fd = -1
        if any(g.in_root for g in grants):
            # root = DIR: the sandbox's paths are DIR's.
            root = plan.policy.root or "/"
            try:
                root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as err:
                raise PolicyError(
                    f"cannot open the root {root}: {errno.errorcode.get(err.errno or 0, err)}",
                    "policy",
                    "root",
                ) from err
        try:
            _add_grants(fd, grants, root_fd)
        finally:
            if root_fd >= 0:
                os.close(root_fd)

    return _new_ruleset(plan, add_paths)


def _new_ruleset(plan: EnforcementPlan, add_paths: Callable[[int], None]) -> int:
    """A ruleset of *plan*'s handled rights, with the path rules
    *add_paths* adds and the plan's port rules (the caller closes it)."""
    lp = plan.landlock
    fd = landlock.create_ruleset(lp.handled_fs, lp.handled_net, lp.scoped, lp.abi)
    try:
        add_paths(fd)
        for port, net_rights in lp.ports:
            landlock.add_port_rule(fd, net_rights, port)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _tmp_grant(plan: EnforcementPlan, tmpdir: str) -> PathGrant:
    from stockade.plan.landlock import CATEGORY_RIGHTS

    rights = landlock.AccessFs(0)
    for right in CATEGORY_RIGHTS.values():
        rights |= right
    return PathGrant(tmpdir, rights & plan.landlock.handled_fs, True, "private tmp")


def _add_tmp_grant(fd: int, plan: EnforcementPlan, tmpdir: str | None) -> None:
    if tmpdir is not None and plan.landlock.handled_fs:
        _add_grants(fd, [_tmp_grant(plan, tmpdir)], -1)


def _add_grants(fd: int, grants: list[PathGrant], root_fd: int) -> None:
    opened = _open_grants(grants, root_fd)
    try:
        for pfd, rights, path in opened:
            landlock.add_path_rule(fd, rights, pfd, path)
    finally:
        _close_opened(opened)


def _close_opened(opened: list[tuple[int, landlock.AccessFs, str]]) -> None:
    for pfd, _rights, _path in opened:
        os.close(pfd)


def _open_grants(grants: list[PathGrant], root_fd: int) -> list[tuple[int, landlock.AccessFs, str]]:
    """Each grant's path opened (``O_PATH``), with the rights it gets there:
    ``(fd, rights, path)``; missing paths and grants left with no right
    are skipped.  The caller closes the descriptors."""
    out: list[tuple[int, landlock.AccessFs, str]] = []
    try:
        for grant in grants:
            try:
                if grant.in_root:
                    pfd = landlock.open_path_in_root(root_fd, grant.path)
                else:
                    pfd = landlock.open_path(grant.path)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise PolicyError(
                    f"cannot open {grant.path}: {errno.errorcode.get(err.errno or 0, err)}",
                    "policy",
                    grant.origin,
                ) from err
            try:
                is_dir = os.path.isdir(f"/proc/self/fd/{pfd}")
                rights = grant.rights
                if not is_dir:
                    rights &= landlock.FILE_RIGHTS
                elif not grant.tree:
                    raise PolicyError(
                        f"{grant.path} is a directory; allow the tree with {grant.path}/*** "
                        "(a rule for the directory alone needs the supervisor)",
                        "policy",
                        grant.origin,
                    )
            except BaseException:
                os.close(pfd)
                raise
            if rights:
                out.append((pfd, rights, grant.path))
            else:
                os.close(pfd)
    except BaseException:
        _close_opened(out)
        raise
    return out


def _own_terminal_only(grant: PathGrant, terminal: str) -> PathGrant:
    """A run on its own terminal needs no other: the ``/dev/pts`` tree
    would let it open its user's terminal by name and read the keys typed
    there.  Landlock only adds rights, so the tree becomes the one file."""
    if grant.tree and grant.path.rstrip("/") == "/dev/pts":
        from stockade._record import replace

        return replace(grant, path=terminal, tree=False)
    return grant


class SandboxProcess(subprocess.Popen[Any]):
    """A confined child process; a ``subprocess.Popen`` in every respect.

    The child enters the sandbox between fork and exec.  A setup failure
    raises :class:`stockade.LaunchError`; a command that cannot be found or
    executed raises ``FileNotFoundError``/``PermissionError`` as Popen does.
    """

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
        self.pidfd = -1
        # Imported here: the hosts of the fork server never fork themselves.
        from stockade.launch.child import (
            ChildSetup,
            decode_record,
            failed_target,
            notify_setup,
        )
        from stockade.launch.options import bounding_to_drop, child_options
        from stockade.launch.wire import read_record

        plan = prepared.plan
        options = child_options(plan, prepared.terminal)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            setup = ChildSetup(
                error_fd=write_fd,
                parent_pid=os.getpid(),
                cap_last=bounding_to_drop(
                    plan.drop_caps,
                    plan.namespaces,
                    plan.drop_caps and caps.bounding_set_empty(),
                ),
                **options,
                cgroup_procs_fd=prepared.cgroup.procs_fd if prepared.cgroup else None,
                landlock_fd=prepared.ruleset_fd,
                seccomp_filter=prepared.filter,
                **notify_setup(prepared.notify_program,
                               prepared.handoff_fd if prepared.handoff_fd >= 0 else None),
            )  # fmt: skip
            try:
                super().__init__(
                    list(args),
                    preexec_fn=setup.run,
                    close_fds=True,
                    env=env,
                    **popen_kwargs,
                )
            finally:
                os.close(write_fd)
                prepared.release_handoff()
            record = read_record(read_fd)
        finally:
            os.close(read_fd)
        if record:
            super().wait()
            prepared.close()
            step, err, index = decode_record(record)
            raise LaunchError(
                step, err, failed_target(step, index, options["masks"], options["mounts"])
            )
        # Our own child and not yet reaped, so the pid cannot have been reused.
        self.pidfd = os.pidfd_open(self.pid)

    @property
    def exit_fd(self) -> int:
        """A descriptor that becomes readable when the command has exited."""
        return self.pidfd

    def exited(self, timeout: float | None = 0) -> bool:
        """Whether the command has exited, waiting up to *timeout* seconds
        (None: forever) without reaping it."""
        if self.returncode is not None:
            return True
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        return bool(ready)

    def kill_tree(self) -> None:
        """SIGKILL the command and every process it started.

        Safe before and after the command exits, as long as it has not been
        reaped: its zombie keeps its pid and process-group id from reuse.
        """
        if self.returncode is not None:
            return
        if self.prepared.cgroup is not None:
            self.prepared.cgroup.kill_all()
        kill_tree(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command, then end every process it left behind."""
        if self.returncode is None:
            if not self.exited(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.kill_tree()
        code = super().wait()
        self._release()
        return code

    def poll(self) -> int | None:
        """Like Popen.poll; an exited command's leftovers are killed first."""
        if self.returncode is None and self.exited(0):
            return self.wait()
        return self.returncode

    def _release(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.prepared.close()


__all__ = ["Prepared", "SandboxProcess", "build_ruleset"]
