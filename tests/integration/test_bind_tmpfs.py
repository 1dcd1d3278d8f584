"""--bind SRC:DST[:ro] and --tmpfs DST, in the sandbox's own mount namespace.

Without a private root (--root) the mount points must exist.  A bind
grants at its destination what it says (read for :ro, read-write
otherwise); a tmpfs is read-write.  Nothing is mounted on the host.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import stockade
from conftest import PROBE_PY, SYSTEM, run_probe


@pytest.fixture
def dirs(workdir: Path) -> dict[str, Path]:
    d = {name: workdir / name for name in ("src", "dst", "tmp")}
    for p in d.values():
        p.mkdir()
        p.chmod(0o777)
    (d["src"] / "data").write_text("data\n")
    (d["src"] / "data").chmod(0o666)
    (d["tmp"] / "host-file").write_text("host\n")
    return d


def mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def test_read_only_bind(dirs: dict[str, Path]) -> None:
    before = mountinfo()
    res, v = run_probe(
        f"""
        DST = {str(dirs["dst"])!r}
        attempt("read", lambda: open(f"{{DST}}/data").read())
        attempt("write", lambda: open(f"{{DST}}/data", "a").write("x"))
        attempt("create", lambda: open(f"{{DST}}/new", "w").write("x"))
        # mount_setattr(DST, AT_RECURSIVE, {{attr_clr=MOUNT_ATTR_RDONLY}})
        attr = (ctypes.c_uint64 * 4)(0, 1, 0, 0)
        path = ctypes.create_string_buffer(DST.encode())
        attempt("remount_rw", lambda: sys_call(442, -100, ctypes.addressof(path), 0x8000,
                                               ctypes.addressof(attr), 32))
        """,
        binds=[f"{dirs['src']}:{dirs['dst']}:ro"],
    )
    assert res.returncode == 0, res.stderr
    assert v["read"] == {"name": "read", "errno": 0, "value": "data\n"}
    assert v["write"]["errno"] == errno.EROFS
    assert v["create"]["errno"] == errno.EROFS
    assert v["remount_rw"]["errno"] == errno.EPERM  # the filter refuses the mount family
    assert list(dirs["dst"].iterdir()) == []
    assert (dirs["src"] / "data").read_text() == "data\n"
    assert mountinfo() == before


def test_read_write_bind_writes_through_to_the_source(dirs: dict[str, Path]) -> None:
    res, v = run_probe(
        f'attempt("create", lambda: open({str(dirs["dst"] / "out")!r}, "w").write("made"))',
        binds=[f"{dirs['src']}:{dirs['dst']}"],
    )
    assert res.returncode == 0, res.stderr
    assert v["create"]["errno"] == 0
    assert (dirs["src"] / "out").read_text() == "made"
    assert not (dirs["dst"] / "out").exists()


def test_tmpfs_is_private_writable_and_empty(dirs: dict[str, Path]) -> None:
    res, v = run_probe(
        f"""
        T = {str(dirs["tmp"])!r}
        attempt("list", lambda: os.listdir(T))
        attempt("create", lambda: open(f"{{T}}/new", "w").write("x"))
        attempt("mkdir", lambda: os.mkdir(f"{{T}}/sub"))
        """,
        tmpfs=[str(dirs["tmp"])],
    )
    assert res.returncode == 0, res.stderr
    assert v["list"]["value"] == []  # the host's file is hidden beneath
    assert v["create"]["errno"] == 0 and v["mkdir"]["errno"] == 0
    assert sorted(p.name for p in dirs["tmp"].iterdir()) == ["host-file"]


@pytest.mark.parametrize("case", ["missing destination", "file over directory"])
def test_bad_mount_points_are_refused_before_anything_runs(
    dirs: dict[str, Path], case: str
) -> None:
    marker = dirs["src"] / "marker"
    if case == "missing destination":
        bind = f"{dirs['src']}:{dirs['dst'] / 'nope'}"
    else:
        bind = f"{dirs['src'] / 'data'}:{dirs['dst']}"
    sb = stockade.Sandbox(read=SYSTEM, binds=[bind])
    with pytest.raises(stockade.PolicyError) as info:
        sb.run([PROBE_PY, "-c", f"open({str(marker)!r}, 'w')"])
    assert "\n" not in str(info.value)
    assert not marker.exists()
