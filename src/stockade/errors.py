"""The public error tree.

Errors are translated once, at the boundary: ``kernel/`` raises ``OSError``;
``policy/``, ``launch/`` and ``sandbox`` raise the classes below with
``raise ... from err``.  Every message is one line: what failed, the errno
name where there is one, and what was expected or what to do.
"""

from __future__ import annotations

import errno as _errno


class StockadeError(Exception):
    """Base class of every error stockade raises on its own behalf."""

    __module__ = "stockade"


class PolicyError(StockadeError, ValueError):
    """A policy, option, rule or policy file is invalid.

    Raised before anything runs.  ``source`` names where the bad input came
    from (a file, ``--read``, a keyword argument); ``key`` the key or rule.
    """

    __module__ = "stockade"

    def __init__(self, message: str, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = ": ".join(part for part in (self.source, self.key) if part)
        return f"{where}: {self.message}" if where else self.message

    def __reduce__(self) -> tuple[type[PolicyError], tuple[str, str | None, str | None]]:
        return (type(self), (self.message, self.source, self.key))


class UnsupportedError(StockadeError):
    """The running kernel lacks a feature the policy needs.

    ``feature`` names it and ``needs`` says which kernel (or Landlock ABI)
    has it.
    """

    __module__ = "stockade"

    def __init__(self, feature: str, needs: str, detail: str = "") -> None:
        self.feature = feature
        self.needs = needs
        self.detail = detail
        tail = f" ({detail})" if detail else ""
        super().__init__(f"{feature}: needs {needs}{tail}")

    def __reduce__(self) -> tuple[type[UnsupportedError], tuple[str, str, str]]:
        return (type(self), (self.feature, self.needs, self.detail))


class LaunchError(StockadeError):
    """Setting up the sandbox failed in the child before the command ran.

    ``step`` names the setup step, ``errno`` the kernel's answer and
    ``target`` the path or object involved, if any.
    """

    __module__ = "stockade"

    def __init__(self, step: str, errno: int, target: str = "") -> None:
        self.step = step
        self.errno = errno
        self.target = target
        name = _errno.errorcode.get(errno, str(errno))
        where = f" {target}" if target else ""
        super().__init__(f"sandbox setup failed at {step}{where}: {name} ({_strerror(errno)})")

    def __reduce__(self) -> tuple[type[LaunchError], tuple[str, int, str]]:
        return (type(self), (self.step, self.errno, self.target))


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)


def errno_name(err: int) -> str:
    """Return the symbolic name of *err* (``EACCES``), or the number as text."""
    return _errno.errorcode.get(err, str(err))
