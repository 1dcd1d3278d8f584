"""Tests for stockade.kernel.probe: types, caching, independent witnesses, real faults.

The witnesses are read without the probe module: the Landlock ABI by a
direct ctypes call, NoNewPrivs from /proc/self/status, the filesystems from
/proc/filesystems.  The faults are real: a child process loads a seccomp
filter that answers chosen system calls with chosen errnos, then runs the
probes, and the test checks that each errno is read the way it should be.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stockade.kernel import probe

SRC = Path(__file__).resolve().parents[2] / "src"

SYS_seccomp = 317
SYS_unshare = 272
SYS_fsopen = 430
SYS_pidfd_getfd = 438
SYS_close_range = 436
SYS_landlock_create_ruleset = 444

x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the fault filter uses x86_64 syscall numbers"
)


def _all_cached() -> list[Any]:
    return [obj for obj in vars(probe).values() if hasattr(obj, "cache_clear")]


@pytest.fixture
def fresh_probes() -> Any:
    """Clear every probe cache before and after, so the test sees real calls."""
    for fn in _all_cached():
        fn.cache_clear()
    yield probe
    for fn in _all_cached():
        fn.cache_clear()


def witness_landlock_abi() -> int | None:
    """landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION), by hand."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(
        ctypes.c_long(SYS_landlock_create_ruleset), None, ctypes.c_long(0), ctypes.c_long(1)
    )
    return None if ret < 0 else int(ret)


# --------------------------------------------------------------------------
# the public surface and its types


def test_all_is_pinned() -> None:
    assert sorted(probe.__all__) == sorted(
        [
            "LANDLOCK_LEVELS",
            "Feature",
            "LandlockLevel",
            "all_features",
            "close_range",
            "kernel_version",
            "landlock_abi",
            "landlock_status",
            "new_mount_api",
            "no_new_privs",
            "overlayfs",
            "pidfd_getfd",
            "pidfd_open",
            "seccomp_actions",
            "seccomp_filter",
            "seccomp_notif_sizes",
            "seccomp_notify_flags",
            "seccomp_user_notif",
            "usable",
            "user_namespaces",
        ]
    )
    for name in probe.__all__:
        assert getattr(probe, name).__doc__, f"{name} has no docstring"


def test_feature_is_frozen() -> None:
    feat = probe.Feature("x", True, "d", "n", "h")
    with pytest.raises(AttributeError):
        feat.available = False  # type: ignore[misc]


def test_return_types(fresh_probes: Any) -> None:
    abi = probe.landlock_abi()
    assert abi is None or (isinstance(abi, int) and abi >= 1)
    version = probe.kernel_version()
    assert isinstance(version, tuple)
    assert len(version) == 3
    assert all(isinstance(part, int) for part in version)
    actions = probe.seccomp_actions()
    assert set(actions) == {
        "kill_process",
        "kill_thread",
        "trap",
        "errno",
        "user_notif",
        "trace",
        "log",
        "allow",
    }
    assert all(isinstance(value, bool) for value in actions.values())
    flags = probe.seccomp_notify_flags()
    assert set(flags) == {
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
        "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP",
        "SECCOMP_IOCTL_NOTIF_ADDFD",
    }
    assert all(isinstance(value, bool) for value in flags.values())
    sizes = probe.seccomp_notif_sizes()
    assert sizes is None or (len(sizes) == 3 and all(isinstance(s, int) for s in sizes))
    ok, reasons = probe.usable()
    assert isinstance(ok, bool)
    assert isinstance(reasons, list)
    assert ok == (reasons == [])
    features = probe.all_features()
    assert len({feat.name for feat in features}) == len(features)
    for feat in features:
        assert isinstance(feat, probe.Feature)
        assert isinstance(feat.available, bool)
        assert feat.detail, feat
        assert feat.needed_for, feat
        if not feat.available:
            assert feat.how_to_get, feat


def test_landlock_levels_table() -> None:
    levels = probe.LANDLOCK_LEVELS
    assert [lv.abi for lv in levels] == [1, 2, 3, 4, 5, 6, 7]
    assert [lv.kernel for lv in levels] == [
        (5, 13),
        (5, 19),
        (6, 2),
        (6, 7),
        (6, 10),
        (6, 12),
        (6, 15),
    ]
    assert "REFER" in levels[1].adds
    assert "TRUNCATE" in levels[2].adds
    assert "TCP" in levels[3].adds
    assert "IOCTL_DEV" in levels[4].adds


def test_probes_are_cached(fresh_probes: Any) -> None:
    first = probe.user_namespaces()
    assert probe.user_namespaces() is first
    info = probe.user_namespaces.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert probe.seccomp_filter() is probe.seccomp_filter()
    assert probe.seccomp_actions() == probe.seccomp_actions()
    # The forked trials run once, however many features read them.
    probe.seccomp_user_notif()
    probe.seccomp_notify_flags()
    assert probe._seccomp_trial.cache_info().misses == 1


def _children() -> list[str]:
    return sorted(
        line
        for task in Path("/proc/self/task").iterdir()
        if (task / "children").exists()
        for line in (task / "children").read_text().split()
    )


def test_no_descriptor_or_child_left_behind(fresh_probes: Any) -> None:
    # Other tests may have started the API's fork server (a child of ours):
    # compare with what was there before, not with nothing.
    before = sorted(os.listdir("/proc/self/fd"))
    children_before = _children()
    probe.all_features()
    probe.usable()
    assert sorted(os.listdir("/proc/self/fd")) == before
    # Every forked probe child was reaped: no zombie stays a child of ours.
    assert _children() == children_before


# --------------------------------------------------------------------------
# independent witnesses


def test_landlock_abi_agrees_with_the_kernel(fresh_probes: Any) -> None:
    assert probe.landlock_abi() == witness_landlock_abi()
    status = probe.landlock_status()
    assert status.available == (witness_landlock_abi() is not None)
    if status.available:
        assert status.detail == f"Landlock ABI {witness_landlock_abi()}"


def test_kernel_version_matches_uname() -> None:
    major, minor, _ = probe.kernel_version()
    assert platform.release().startswith(f"{major}.{minor}")


def test_no_new_privs_matches_proc_status(fresh_probes: Any) -> None:
    status = Path("/proc/self/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("NoNewPrivs:"))
    feat = probe.no_new_privs()
    assert feat.available
    assert ("not set" not in feat.detail) == (line.split()[1] == "1")


def test_overlayfs_matches_proc_filesystems(fresh_probes: Any) -> None:
    listed = any(
        line.split()[-1:] == ["overlay"]
        for line in Path("/proc/filesystems").read_text().splitlines()
    )
    if listed:
        assert probe.overlayfs().available
        assert probe.overlayfs().detail.startswith("in /proc/filesystems")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare(1) not installed")
def test_user_namespaces_agree_with_unshare_1(fresh_probes: Any) -> None:
    witness = subprocess.run(["unshare", "--user", "--map-root-user", "true"], check=False)
    assert probe.user_namespaces().available == (witness.returncode == 0)


def test_notif_sizes_match_the_uapi_structs(fresh_probes: Any) -> None:
    # struct seccomp_notif = id(8) + pid(4) + flags(4) + seccomp_data(64);
    # struct seccomp_notif_resp = id(8) + val(8) + error(4) + flags(4).
    sizes = probe.seccomp_notif_sizes()
    if sizes is None:
        pytest.skip("this kernel has no seccomp user notification")
    assert sizes == (80, 24, 64)


def test_usable_here(fresh_probes: Any) -> None:
    """This project's machines have Landlock and seccomp."""
    ok, reasons = probe.usable()
    assert ok, reasons
    assert probe.seccomp_actions()["errno"]
    assert probe.seccomp_actions()["kill_process"]


# --------------------------------------------------------------------------
# real faults: a seccomp filter answers chosen calls with chosen errnos

FAULT_SCRIPT = r"""
import ctypes, json, sys
from stockade.kernel import _ffi

rules = json.loads(sys.argv[1])
with_listener = sys.argv[2] == "1"

class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]

# ld arch; jne x86_64 -> allow; ld nr; (jeq nr -> ret ERRNO|e)*; ret allow
insns = [F(0x20, 0, 0, 4), F(0x15, 0, 2 * len(rules) + 1, 0xC000003E), F(0x20, 0, 0, 0)]
for nr, err in rules:
    insns += [F(0x15, 0, 1, nr), F(0x06, 0, 0, 0x00050000 | err)]
insns.append(F(0x06, 0, 0, 0x7FFF0000))
arr = (F * len(insns))(*insns)
prog = P(len(insns), arr)
_ffi.prctl(38, 1)
_ffi.syscall(317, 1, 8 if with_listener else 0, ctypes.byref(prog))

from stockade.kernel import probe
out = {f.name: [f.available, f.detail, f.how_to_get] for f in probe.all_features()}
out["usable"] = probe.usable()[0]
out["landlock_abi"] = probe.landlock_abi()
print(json.dumps(out))
"""


def run_with_faults(rules: list[tuple[int, int]], with_listener: bool = False) -> dict[str, Any]:
    """Run every probe in a child whose chosen system calls fail with chosen errnos."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-c", FAULT_SCRIPT, json.dumps(rules), "1" if with_listener else "0"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@x86_64_only
def test_fault_landlock_enosys_is_not_built_or_hidden() -> None:
    out = run_with_faults([(SYS_landlock_create_ruleset, errno.ENOSYS)])
    available, detail, how = out["landlock"]
    assert not available
    assert out["landlock_abi"] is None
    assert "ENOSYS" in detail
    assert "CONFIG_SECURITY_LANDLOCK" in how
    if probe.kernel_version()[:2] >= (5, 13):
        assert "hidden" in detail
    assert out["usable"] is False


@x86_64_only
def test_fault_landlock_eopnotsupp_is_disabled_at_boot() -> None:
    out = run_with_faults([(SYS_landlock_create_ruleset, errno.EOPNOTSUPP)])
    available, detail, how = out["landlock"]
    assert not available
    assert "EOPNOTSUPP" in detail
    assert "disabled at boot" in detail
    assert "lsm=landlock" in how
    assert out["usable"] is False


@x86_64_only
def test_fault_unshare_eperm_is_an_outer_sandbox() -> None:
    out = run_with_faults([(SYS_unshare, errno.EPERM)])
    available, detail, how = out["user namespaces"]
    assert not available
    assert detail.startswith("unshare(CLONE_NEWUSER): EPERM")
    if Path("/proc/sys/kernel/unprivileged_userns_clone").exists():
        pytest.skip("Debian sysctl present: the message names it instead")
    assert "outer sandbox" in detail
    assert how
    # Optional: stockade still runs, with fewer features.
    assert out["usable"] is True


@x86_64_only
def test_fault_unshare_enospc_is_the_namespace_limit() -> None:
    out = run_with_faults([(SYS_unshare, errno.ENOSPC)])
    available, detail, how = out["user namespaces"]
    assert not available
    assert "ENOSPC" in detail
    assert "user.max_user_namespaces" in detail
    assert "user.max_user_namespaces" in how


@x86_64_only
def test_fault_unshare_einval_is_not_built() -> None:
    out = run_with_faults([(SYS_unshare, errno.EINVAL)])
    available, detail, how = out["user namespaces"]
    assert not available
    assert "not built" in detail
    assert "CONFIG_USER_NS" in how


@x86_64_only
def test_fault_pidfd_getfd_enosys_leaves_pidfd_open() -> None:
    out = run_with_faults([(SYS_pidfd_getfd, errno.ENOSYS)])
    assert out["pidfd_open"][0] is True
    available, detail, how = out["pidfd_getfd"]
    assert not available
    assert detail.startswith("pidfd_getfd: ENOSYS")
    assert "5.6" in how


@x86_64_only
def test_fault_fsopen_enosys_is_missing_but_eperm_is_present() -> None:
    missing = run_with_faults([(SYS_fsopen, errno.ENOSYS)])
    assert missing["new mount API"][0] is False
    assert "ENOSYS" in missing["new mount API"][1]
    present = run_with_faults([(SYS_fsopen, errno.EPERM)])
    assert present["new mount API"][0] is True
    assert "EPERM" in present["new mount API"][1]


@x86_64_only
def test_fault_close_range_einval() -> None:
    out = run_with_faults([(SYS_close_range, errno.EINVAL)])
    available, detail, _ = out["close_range"]
    assert not available
    assert detail == "close_range: EINVAL (Invalid argument)"


@x86_64_only
def test_fault_seccomp_eperm_makes_stockade_unusable() -> None:
    out = run_with_faults([(SYS_seccomp, errno.EPERM)])
    available, detail, _ = out["seccomp-bpf"]
    assert not available
    assert "EPERM" in detail
    assert out["seccomp user_notif"][0] is False
    assert out["usable"] is False


@x86_64_only
def test_fault_nested_listener_is_ebusy() -> None:
    out = run_with_faults([], with_listener=True)
    available, detail, how = out["seccomp user_notif"]
    assert not available
    assert detail.startswith("EBUSY")
    assert "outside" in how
    # A plain filter still loads: stockade runs, without a supervisor.
    assert out["seccomp-bpf"][0] is True
    assert out["usable"] is True
