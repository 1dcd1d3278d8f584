"""No race between the supervisor's check and the use (SPEC section 8:
"not through ... races"; DESIGN decision 4).

A sandboxed program flips the bytes of a path between an allowed file and
a denied one, from a second thread, while its first thread opens that
buffer in a tight loop for several seconds.  If the supervisor checked the
path and let the kernel read it again, some opens would land on the denied
file.  The supervisor opens the file itself and injects the descriptor,
so the denied content is never read.  The same with a symlink swapped
between the two files by rename, and with stat under ``sandbox/stat:on``.
"""

from __future__ import annotations

from pathlib import Path

from conftest import run_probe

SECONDS = 3.0

FLIP = """
import threading, time
A, B = ALLOWED.encode(), DENIED.encode()
assert len(A) == len(B)
buf = ctypes.create_string_buffer(A, len(A) + 1)
stop = time.monotonic() + SECONDS
def flipper():
    while time.monotonic() < stop:
        ctypes.memmove(buf, B, len(B))
        ctypes.memmove(buf, A, len(A))
threading.Thread(target=flipper, daemon=True).start()
"""

#: Opens the flipped buffer (openat, from the sandbox's cwd) until the
#: flipper stops, counting what each open read.
OPEN_LOOP = """
counts = {"public": 0, "secret": 0, "eacces": 0, "other": 0}
while time.monotonic() < stop:
    fd = libc.syscall(ctypes.c_long(257), ctypes.c_long(-100), buf, ctypes.c_long(0))
    if fd < 0:
        e = ctypes.get_errno()
        counts["eacces" if e == errno.EACCES else "other"] += 1
        continue
    data = os.read(fd, 64)
    os.close(fd)
    counts["secret" if b"SECRET" in data else "public"] += 1
attempt("counts", lambda: json.dumps(counts))
"""


def _files(workdir: Path) -> tuple[Path, Path]:
    allowed = workdir / "ok-file"
    denied = workdir / "no-file"
    allowed.write_text("PUBLIC\n")
    denied.write_text("SECRET\n")
    return allowed, denied


def test_flipping_the_path_buffer_never_reads_the_denied_file(workdir: Path) -> None:
    allowed, denied = _files(workdir)
    res, v = run_probe(
        f"ALLOWED, DENIED, SECONDS = {str(allowed)!r}, {str(denied)!r}, {SECONDS}\n"
        + FLIP
        + OPEN_LOOP,
        # A glob: only the supervisor can hold it.
        rules=[f"allow/read+{workdir}/ok-*"],
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    counts = __import__("json").loads(v["counts"]["value"])
    assert counts["secret"] == 0, counts
    # The race really ran: both spellings reached the supervisor.
    assert counts["public"] > 0 and counts["eacces"] > 0, counts
    assert counts["other"] == 0, counts


def test_swapping_a_symlink_never_reads_the_denied_file(workdir: Path) -> None:
    allowed, denied = _files(workdir)
    link = workdir / "ok-link"
    res, v = run_probe(
        f"""
import threading, time
ALLOWED, DENIED, LINK = {str(allowed)!r}, {str(denied)!r}, {str(link)!r}
stop = time.monotonic() + {SECONDS}
def swapper():
    n = 0
    while time.monotonic() < stop:
        tmp = LINK + ".tmp%d" % (n % 2)
        try:
            os.symlink(DENIED if n % 2 else ALLOWED, tmp)
            os.rename(tmp, LINK)
        except OSError:
            pass
        n += 1
os.symlink(ALLOWED, LINK)
threading.Thread(target=swapper, daemon=True).start()
counts = {{"public": 0, "secret": 0, "eacces": 0, "other": 0}}
while time.monotonic() < stop:
    try:
        with open(LINK, "rb") as f:
            data = f.read()
    except PermissionError:
        counts["eacces"] += 1
        continue
    except OSError:
        counts["other"] += 1
        continue
    counts["secret" if b"SECRET" in data else "public"] += 1
attempt("counts", lambda: json.dumps(counts))
""",
        write=[workdir],
        rules=[f"allow/read+{workdir}/ok-*", f"deny/read+{workdir}/no-*"],
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    counts = __import__("json").loads(v["counts"]["value"])
    assert counts["secret"] == 0, counts
    assert counts["public"] > 0 and counts["eacces"] > 0, counts


def test_flipping_the_path_of_stat_never_reveals_the_denied_file(workdir: Path) -> None:
    allowed, denied = _files(workdir)
    denied.write_text("SECRET, and longer\n")
    secret_size = denied.stat().st_size
    res, v = run_probe(
        f"ALLOWED, DENIED, SECONDS = {str(allowed)!r}, {str(denied)!r}, {SECONDS}\n"
        + FLIP
        + """
counts = {"public": 0, "secret": 0, "eacces": 0, "other": 0}
st = ctypes.create_string_buffer(144)
while time.monotonic() < stop:
    ret = libc.syscall(ctypes.c_long(4), buf, st)
    if ret < 0:
        e = ctypes.get_errno()
        counts["eacces" if e == errno.EACCES else "other"] += 1
        continue
    size = int.from_bytes(st.raw[48:56], "little")
    counts["secret" if size == SECRET_SIZE else "public"] += 1
attempt("counts", lambda: json.dumps(counts))
""".replace("SECRET_SIZE", str(secret_size)),
        rules=["sandbox/stat:on", "allow/stat+/***", f"deny/stat+{workdir}/no-*"],
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    counts = __import__("json").loads(v["counts"]["value"])
    assert counts["secret"] == 0, counts
    assert counts["public"] > 0 and counts["eacces"] > 0, counts


def test_flipping_into_a_warm_directory_never_reads_the_denied_file(workdir: Path) -> None:
    """The same race against the compiled receiver: the allowed file lies
    in a directory whose every child is readable (answered without Python
    once warm), the denied one in a sibling directory."""
    from stockade.supervisor import engine, fastpath

    (workdir / "ok").mkdir()
    (workdir / "no").mkdir()
    allowed, denied = workdir / "ok" / "data", workdir / "no" / "data"
    allowed.write_text("PUBLIC\n")
    denied.write_text("SECRET\n")
    (workdir / "ok" / "warm").write_text("warm\n")
    before = engine.get().compiled_answers
    res, v = run_probe(
        f"ALLOWED, DENIED, SECONDS = {str(allowed)!r}, {str(denied)!r}, {SECONDS}\n"
        f"open({str(workdir / 'ok' / 'warm')!r}).read()\n" + FLIP + OPEN_LOOP,
        rules=[f"allow/read+{workdir}/ok/**"],
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    counts = __import__("json").loads(v["counts"]["value"])
    assert counts["secret"] == 0, counts
    assert counts["public"] > 0 and counts["eacces"] > 0, counts
    assert counts["other"] == 0, counts
    if fastpath.ENABLED:
        # The allowed spelling was answered compiled: the race ran there.
        assert engine.get().compiled_answers - before >= counts["public"] // 2, counts
