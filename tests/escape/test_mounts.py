"""No mount, unmount, root change or detached mount tree (SPEC section 8).

Every call of the mount family (old and new API) answers EPERM from the
seccomp filter.  EPERM is also what the kernel says to a process without
CAP_SYS_ADMIN, so three calls are chosen where the kernel alone would say
something else, and the test first asks the same probe outside the sandbox
for that answer:

- ``chroot("/nonexistent")`` and ``umount2("/nonexistent")`` look the path
  up before checking privilege (ENOENT);
- ``open_tree(AT_FDCWD, "/", 0)`` without OPEN_TREE_CLONE is an O_PATH open
  that needs no privilege at all (a descriptor).
"""

from __future__ import annotations

import errno
import os
import subprocess
import textwrap

import pytest

from conftest import PROBE_PY, probe_code, run_probe, verdicts

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NR = {
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "open_tree_attr": 467,
}
AT_FDCWD = -100
OPEN_TREE_CLONE = 1
MS_BIND = 0x1000
MS_REC = 0x4000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")

WITNESSED = f"""
_keep = []
def cstr(text):
    b = ctypes.create_string_buffer(text.encode())
    _keep.append(b)
    return ctypes.addressof(b)
attempt("chroot_missing", lambda: sys_call({NR["chroot"]}, cstr("/nonexistent-stockade")))
attempt("umount_missing", lambda: sys_call({NR["umount2"]}, cstr("/nonexistent-stockade"), 0))
attempt("open_tree_plain", lambda: sys_call({NR["open_tree"]}, {AT_FDCWD}, cstr("/"), 0))
"""


def test_kernel_alone_answers_otherwise() -> None:
    """The witness: outside any sandbox, these three are not EPERM."""
    proc = subprocess.run(
        [PROBE_PY, "-c", probe_code(WITNESSED)], capture_output=True, timeout=30, check=False
    )
    v = verdicts(proc.stdout)
    assert v["chroot_missing"]["errno"] == errno.ENOENT
    assert v["umount_missing"]["errno"] == errno.ENOENT
    assert v["open_tree_plain"]["errno"] == 0


def test_mount_family_is_refused(workdir: os.PathLike[str]) -> None:
    target = os.fspath(workdir)
    body = WITNESSED + textwrap.dedent(
        f"""
        T = {target!r}
        attempt("control", lambda: os.listdir(T))
        attempt("mount_tmpfs", lambda: sys_call({NR["mount"]}, cstr("none"), cstr(T),
                                                cstr("tmpfs"), 0, 0))
        attempt("mount_bind", lambda: sys_call({NR["mount"]}, cstr("/"), cstr(T), 0,
                                               {MS_BIND | MS_REC}, 0))
        attempt("umount", lambda: sys_call({NR["umount2"]}, cstr("/proc"), 0))
        attempt("pivot_root", lambda: sys_call({NR["pivot_root"]}, cstr(T), cstr(T)))
        attempt("chroot", lambda: sys_call({NR["chroot"]}, cstr(T)))
        attempt("fsopen", lambda: sys_call({NR["fsopen"]}, cstr("tmpfs"), 0))
        attempt("fsconfig", lambda: sys_call({NR["fsconfig"]}, 0, 0, 0, 0, 0))
        attempt("fsmount", lambda: sys_call({NR["fsmount"]}, 0, 0, 0))
        attempt("fspick", lambda: sys_call({NR["fspick"]}, {AT_FDCWD}, cstr("/"), 0))
        attempt("open_tree_clone", lambda: sys_call({NR["open_tree"]}, {AT_FDCWD}, cstr("/"),
                                                    {OPEN_TREE_CLONE | AT_RECURSIVE}))
        attempt("open_tree_attr", lambda: sys_call({NR["open_tree_attr"]}, {AT_FDCWD},
                                                   cstr("/"), {OPEN_TREE_CLONE}, 0, 0))
        attempt("move_mount", lambda: sys_call({NR["move_mount"]}, 0, cstr(""), {AT_FDCWD},
                                               cstr(T), {MOVE_MOUNT_F_EMPTY_PATH}))
        attr = (ctypes.c_uint64 * 4)({MOUNT_ATTR_RDONLY}, 0, 0, 0)
        attempt("mount_setattr", lambda: sys_call({NR["mount_setattr"]}, {AT_FDCWD}, cstr("/"),
                                                  0, ctypes.addressof(attr), 32))
        attempt("mountinfo", lambda: open("/proc/self/mountinfo").read())
        """
    )
    res, v = run_probe(body, read=[target, "/proc"])
    assert res.returncode == 0, res.stderr
    assert v["control"]["errno"] == 0
    for name in NR.keys() - {"mount", "umount2", "open_tree"} | {
        "mount_tmpfs", "mount_bind", "umount", "open_tree_clone",
        "chroot_missing", "umount_missing", "open_tree_plain",
    }:  # fmt: skip
        assert v[name]["errno"] == errno.EPERM, (name, v[name])
    # Independent witness: nothing is mounted on the target.
    assert f" {target} " not in v["mountinfo"]["value"]
