"""An "untrusted" program for the demo: it tries what a sandbox must refuse.

Usage: untrusted.py SECRET_FILE HOST_PORT
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys


def attempt(what: str, action: object) -> None:
    try:
        result = action()  # type: ignore[operator]
    except OSError as err:
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        print(f"  DENIED   {what:48} {name} ({err.strerror})")
    else:
        print(f"  allowed  {what:48} {result if result is not None else ''}")


def read(path: str) -> str:
    with open(path) as f:
        return f"{len(f.read())} bytes"


def write(path: str) -> str:
    with open(path, "w") as f:
        f.write("pwned\n")
    return "written"


def connect(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return "connected"


def raw_syscall(name: str, nr: int, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)


def main() -> None:
    secret, port = sys.argv[1], int(sys.argv[2])
    print(f"untrusted program, pid {os.getpid()}, cwd {os.getcwd()}")
    print("what it may do:")
    attempt("write its own output (./result.txt)", lambda: write("result.txt"))
    attempt("read a system file (/etc/os-release)", lambda: read("/etc/os-release"))
    print("what it must not do:")
    attempt(f"read a secret ({secret})", lambda: read(secret))
    attempt("read a key in its own directory (*.key)", lambda: read("deploy.key"))
    attempt("rename the key to get around the rule", lambda: os.rename("deploy.key", "key.txt"))
    attempt("write outside its directory (/etc/cron.d/x)", lambda: write("/etc/cron.d/x"))
    attempt("write a shared place (/tmp/planted)", lambda: write("/tmp/planted"))
    attempt(f"connect to a host service (127.0.0.1:{port})", lambda: connect(port))
    attempt("open a UDP socket (exfiltrate by DNS)", lambda: socket.socket(type=socket.SOCK_DGRAM))
    attempt("ptrace its parent", lambda: raw_syscall("ptrace", 101, 16, os.getppid(), 0, 0))
    attempt("mount a filesystem", lambda: raw_syscall("mount", 165, 0, 0, 0, 0, 0))
    attempt("signal its parent (kill -0)", lambda: os.kill(os.getppid(), 0))
    attempt("list /root", lambda: len(os.listdir("/root")))


if __name__ == "__main__":
    main()
