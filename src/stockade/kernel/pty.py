"""Pseudo-terminal pairs and the few terminal ioctls stockade itself uses.

Some facts about pseudo-terminals (pty(7), ioctl_tty(2)):

- ``posix_openpt`` + ``grantpt`` + ``unlockpt`` (``os.openpty``) give a
  master and a slave descriptor; glibc opens the slave with ``O_NOCTTY``,
  so the process that allocates the pair never acquires it as its own
  controlling terminal.  Both descriptors are close-on-exec.
- A process becomes a terminal's controlling process with
  ``ioctl(fd, TIOCSCTTY, 0)``: it must lead a session (``setsid``) that has
  no controlling terminal yet, and the terminal must belong to no session.
  The session leader's process group becomes the terminal's foreground
  group, which is what a shell's job control starts from.
- The window size lives in the terminal, not in a process: ``TIOCSWINSZ``
  on the master changes it for the slave, and the kernel sends SIGWINCH to
  the slave's foreground process group when it changes.
- Reading the master after every slave descriptor has closed returns what
  is still buffered, then fails with EIO (not end of file).
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios

TIOCSCTTY = termios.TIOCSCTTY
TIOCGWINSZ = termios.TIOCGWINSZ
TIOCSWINSZ = termios.TIOCSWINSZ

#: struct winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; };
_WINSIZE = struct.Struct("HHHH")

#: The size given to a terminal when there is none to copy, as xterm's.
DEFAULT_WINSIZE = (24, 80, 0, 0)


def open_pair() -> tuple[int, int]:
    """A new pseudo-terminal: ``(master, slave)``, both close-on-exec.

    Raises OSError (ENOENT or ENOSPC when no pty can be allocated)."""
    return os.openpty()


def get_winsize(fd: int) -> tuple[int, int, int, int]:
    """``(rows, columns, xpixels, ypixels)`` of the terminal *fd*; raises
    OSError (ENOTTY when *fd* is not a terminal)."""
    raw = fcntl.ioctl(fd, TIOCGWINSZ, bytes(_WINSIZE.size))
    rows, cols, xpix, ypix = _WINSIZE.unpack(raw)
    return rows, cols, xpix, ypix


def set_winsize(fd: int, size: tuple[int, int, int, int]) -> None:
    """Set the window size of the terminal *fd* (a master sets its slave's);
    raises OSError."""
    fcntl.ioctl(fd, TIOCSWINSZ, _WINSIZE.pack(*size))


def eof_char(fd: int) -> bytes:
    """The character that makes a read on the terminal *fd* return end of
    file (VEOF, ``^D`` unless changed); raises OSError."""
    cc = termios.tcgetattr(fd)[6]
    value = cc[termios.VEOF]
    return value if isinstance(value, bytes) else bytes([value])
