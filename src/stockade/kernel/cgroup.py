"""Process-count cgroups (cgroups(7): the pids controller).

Some facts about the pids controller:

- ``pids.max`` limits the tasks (processes and threads) in a cgroup and its
  descendants; fork and clone fail with EAGAIN past it.  Unlike
  RLIMIT_NPROC it also binds uid 0 and counts only the sandbox.
- A process joins by writing ``0`` (itself) to ``cgroup.procs``; children
  are born in their parent's cgroup and cannot leave without write access
  to another cgroup's ``cgroup.procs``.
- ``cgroup.procs`` therefore lists every process of a sandbox, daemonized
  or not, which makes it the exact set to kill when the sandbox ends.
- On a v1 or hybrid hierarchy the controller has its own mount
  (``/sys/fs/cgroup/pids``); on v2 it must be enabled in the parent's
  ``cgroup.subtree_control``.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import time

_counter = itertools.count()


@functools.cache
def pids_root() -> str | None:
    """A directory where this process may create pids cgroups, or None."""
    candidates = ["/sys/fs/cgroup/pids"]
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hier, controllers, path = line.rstrip("\n").split(":", 2)
                if hier == "0" and controllers == "":
                    candidates.append("/sys/fs/cgroup" + path.rstrip("/"))
    except OSError:
        return None
    for root in candidates:
        if not os.path.isfile(os.path.join(root, "cgroup.procs")):
            continue
        if root != "/sys/fs/cgroup/pids":
            try:
                with open(os.path.join(root, "cgroup.subtree_control")) as f:
                    if "pids" not in f.read().split():
                        continue
            except OSError:
                continue
        if os.access(root, os.W_OK):
            return root
    return None


class PidsCgroup:
    """A fresh pids cgroup for one sandbox; :meth:`destroy` kills and removes it."""

    def __init__(self, root: str, limit: int | None) -> None:
        self.path = os.path.join(root, f"stockade-{os.getpid()}-{next(_counter)}")
        os.mkdir(self.path, 0o755)
        try:
            if limit is not None:
                with open(os.path.join(self.path, "pids.max"), "w") as f:
                    f.write(str(limit))
            self.procs_fd = os.open(
                os.path.join(self.path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC
            )
        except BaseException:
            os.rmdir(self.path)
            raise

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def kill_all(self) -> None:
        """SIGKILL every member until none is left (members may be forking)."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)

    def destroy(self) -> None:
        """Kill every member and remove the cgroup; idempotent."""
        if self.procs_fd >= 0:
            os.close(self.procs_fd)
            self.procs_fd = -1
        self.kill_all()
        deadline = time.monotonic() + 5.0
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                # EBUSY: killed members are not yet reaped by their parents.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
