"""A loopback TCP listener for the connect workload of ``run.py``.

Binds 127.0.0.1 on a free port, prints the port on one line, then accepts
and closes connections until it is killed.  It runs outside every sandbox.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(socket.SOMAXCONN)
        sys.stdout.write(f"{listener.getsockname()[1]}\n")
        sys.stdout.flush()
        while True:
            conn, _ = listener.accept()
            conn.close()


if __name__ == "__main__":
    main()
