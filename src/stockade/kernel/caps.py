"""Capability sets (capabilities(7)).

Some facts about capabilities:

- Every thread has effective, permitted, inheritable, ambient and bounding
  sets.  ``capset(2)`` changes the first three for the caller; the ambient
  set is cleared with ``PR_CAP_AMBIENT_CLEAR_ALL``; the bounding set loses
  one capability per ``PR_CAPBSET_DROP`` (which needs CAP_SETPCAP).
- The bounding set is inherited across fork and kept across execve, and it
  caps what execve can grant: once it is empty, not even uid 0 exec'ing a
  binary regains a capability.
- Dropping the bounding set is one system call per capability (41 on
  Linux 6.18).  A process that spawns many sandboxes does it once for
  itself, and its children inherit the empty set.
"""

from __future__ import annotations

import functools

from stockade.kernel import _ffi

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24


@functools.cache
def cap_last() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def bounding_set_empty() -> bool:
    """Whether this thread's bounding set holds no capability."""
    return all(_ffi.prctl(PR_CAPBSET_READ, cap) == 0 for cap in range(cap_last() + 1))


def drop_bounding_set() -> None:
    """Empty this thread's bounding set (needs CAP_SETPCAP); raises OSError."""
    for cap in range(cap_last() + 1):
        _ffi.prctl(PR_CAPBSET_DROP, cap)
