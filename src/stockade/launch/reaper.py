"""Ending every process of a sandbox.

Some facts about process trees:

- The child calls ``setsid``, so its pid is the id of its process group and
  session; ``killpg`` reaches every process that has not left the group.
- A process that leaves the group (``setsid``, ``setpgid``) is still found
  by walking ``/proc/PID/task/TID/children`` down from the command while
  its ancestors live.  One whose parent has exited is reparented to the
  nearest child subreaper: every command and the fork server are
  subreapers, so such orphans come back to them; a pids cgroup (root) or a
  pid namespace lists them exactly.
- A pid cannot be reused while it is the id of a live process group, so
  ``killpg`` after the leader was reaped is safe.
"""

from __future__ import annotations

import os
import signal


def children(pid: int) -> list[int]:
    """The direct children of *pid*, all threads included (empty if gone)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        # os.open, not open(): this runs after every command, and a buffered
        # text file costs more than the read.
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        data = b""
        try:
            while chunk := os.read(fd, 1 << 16):
                data += chunk
        except OSError:
            continue
        finally:
            os.close(fd)
        out.extend(map(int, data.split()))
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of *pid*, parents before children."""
    seen: list[int] = []
    stack = [pid]
    while stack:
        for child in children(stack.pop()):
            if child not in seen:
                seen.append(child)
                stack.append(child)
    return seen


def kill_tree(pid: int) -> None:
    """SIGKILL the process group of *pid* and every descendant found.

    Descendants are stopped first so that none can fork while the tree is
    walked, then killed.
    """
    found = descendants(pid)
    for victim in found:
        _signal(victim, signal.SIGSTOP)
    # A second walk catches children forked before the stop landed.
    found += [p for p in descendants(pid) if p not in found]
    _killpg(pid)
    _signal(pid, signal.SIGKILL)
    for victim in found:
        _signal(victim, signal.SIGKILL)


def is_subreaper() -> bool:
    """Whether this process is a child subreaper (PR_GET_CHILD_SUBREAPER)."""
    import ctypes

    from stockade.kernel import _ffi

    flag = ctypes.c_int(0)
    _ffi.prctl(37, ctypes.addressof(flag))  # PR_GET_CHILD_SUBREAPER
    return flag.value != 0


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
