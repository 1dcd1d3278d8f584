"""A new name for a file never grants what its old name did not (SPEC
section 8: no access the policy does not grant).

The supervisor's rules follow names.  Inside a writable tree Landlock
allows links and renames, so with ``-w DATA`` and reads of ``*.key``
denied, ``mv a.key a.txt`` (or a hard link) would make the key readable
under a name the rules allow.  The plan traps link and rename whenever a
routed rule reaches where names can be made, and
``NotifyPlan.decide_move`` refuses such a move with EXDEV (``mv`` then
copies, and the copy's open of ``a.key`` is denied); the rename and link
handlers ask it before acting.
"""

from __future__ import annotations

import errno
from pathlib import Path

from conftest import run_probe

PROBE = """
attempt("read key", lambda: open(KEY).read())
attempt("link", lambda: os.link(KEY, DATA + "/linked.txt"))
attempt("read link", lambda: open(DATA + "/linked.txt").read())
attempt("rename", lambda: os.rename(KEY, DATA + "/renamed.txt"))
attempt("read renamed", lambda: open(DATA + "/renamed.txt").read())
attempt("other rename", lambda: os.rename(DATA + "/plain.txt", DATA + "/moved.txt"))
"""


def test_renaming_or_linking_a_denied_file_does_not_make_it_readable(workdir: Path) -> None:
    data = workdir / "data"
    data.mkdir()
    key = data / "a.key"
    key.write_text("secret\n")
    (data / "plain.txt").write_text("plain\n")
    res, v = run_probe(
        f"KEY = {str(key)!r}\nDATA = {str(data)!r}\n" + PROBE,
        write=[data],
        rules=[f"deny/read+{data}/*.key"],
    )
    assert res.returncode == 0, res.stderr
    assert v["read key"]["errno"] == errno.EACCES
    assert v["link"]["errno"] in (errno.EXDEV, errno.EACCES), v["link"]
    assert v["rename"]["errno"] in (errno.EXDEV, errno.EACCES), v["rename"]
    for name in ("read link", "read renamed"):
        assert v[name]["errno"] in (errno.ENOENT, errno.EACCES), v[name]
    assert v["other rename"]["errno"] == 0
    assert key.read_text() == "secret\n"
