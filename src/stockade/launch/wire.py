"""The fork server's messages: one request or reply per SEQPACKET message,
descriptors beside it (SCM_RIGHTS).

Kept apart from :mod:`stockade.launch.forkserver` so that the host side
(and the command line, before it forks its server) imports only this.
"""

from __future__ import annotations

# _socket, not socket: socket.py's enum conversions cost more than this
# whole module, and the command line imports it.
import _socket
import array
import marshal
import os
from typing import Any

from stockade._record import field, record

MAX_FDS = 8
MAX_MESSAGE = 1 << 20
#: A child's error record: ``step | errno << 16 | index << 32``.
RECORD_SIZE = 8


@record()
class Request:
    """One sandbox to start; the descriptors travel beside it (SCM_RIGHTS).

    ``fds`` names the received descriptors, in order: ``conn`` always, then
    ``stdin``/``stdout``/``stderr``/``ruleset``/``cgroup``/``notify`` when
    present.  ``notify`` is the child's end of the supervisor's hand-off
    socket; with it, ``notify_program`` is installed last with a listener.
    """

    args: list[str]
    env: dict[str, str]
    cwd: str | None
    fds: list[str]
    #: :class:`ChildSetup` keyword arguments (see ``options.child_options``).
    setup: dict[str, Any] = field(default_factory=dict)
    filter_program: bytes = b""
    filter_flags: int = 0
    notify_program: bytes = b""

    def wire(self) -> dict[str, Any]:
        """The request as a message (see :func:`send_message`)."""
        return dict(self.__dict__)


def dumps(obj: object) -> bytes:
    """Encode a message: marshal (fast, and nothing to import) when it can
    carry *obj*, pickle otherwise."""
    try:
        return b"m" + marshal.dumps(obj)  # type: ignore[arg-type]  # ValueError if not
    except ValueError:
        import pickle

        return b"p" + pickle.dumps(obj)


def loads(data: bytes) -> Any:
    """Decode a message of :func:`dumps` (from our own host or server)."""
    if data[:1] == b"m":
        return marshal.loads(memoryview(data)[1:])  # noqa: S302 - over a private socketpair
    import pickle

    return pickle.loads(memoryview(data)[1:])  # noqa: S301 - over a private socketpair


def send_message(sock: _socket.socket, obj: object, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    """Send one message with *fds* attached."""
    data = dumps(obj)
    if len(data) > MAX_MESSAGE:
        raise ValueError("fork-server message too large")
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def recv_message(sock: _socket.socket, flags: int = 0) -> tuple[Any, list[int]] | None:
    """Receive one message and its descriptors; None at end of stream."""
    got = recv_raw(sock, flags)
    if got is None:
        return None
    return loads(got[0]), got[1]


def recv_raw(sock: _socket.socket, flags: int = 0) -> tuple[bytes, list[int]] | None:
    """Receive one message (still encoded) and its descriptors; None at
    end of stream.  *flags* go to ``recvmsg`` (``MSG_DONTWAIT``,
    ``MSG_CMSG_CLOEXEC``)."""
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(
        MAX_MESSAGE, _socket.CMSG_SPACE(MAX_FDS * fds.itemsize), flags
    )
    for level, kind, payload in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    received = list(fds)
    if not data:
        for fd in received:
            os.close(fd)
        return None
    return data, received


def read_record(fd: int) -> bytes:
    """Read a child's verdict from its error pipe: empty once the child
    exec'd (the pipe is CLOEXEC), or one ``(step, errno)`` record."""
    data = b""
    while len(data) < RECORD_SIZE:
        try:
            chunk = os.read(fd, RECORD_SIZE - len(data))
        except InterruptedError:
            continue
        if not chunk:
            break
        data += chunk
    return data
