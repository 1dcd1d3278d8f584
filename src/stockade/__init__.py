"""stockade: an application kernel for Linux.

Run untrusted programs confined by Landlock, seccomp-bpf and namespaces,
from the shell (``stockade run``) or from Python::

    import stockade
    sb = stockade.Sandbox(read=["/usr"], write=["/tmp/job"])
    res = sb.run(["python3", "-c", "print(1)"], capture=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stockade._version import __version__
from stockade.errors import LaunchError, PolicyError, StockadeError, UnsupportedError

if TYPE_CHECKING:
    from stockade.policy.model import Policy
    from stockade.sandbox import DEVNULL, PIPE, STDOUT, Denial, Result, Sandbox

# The rest of the surface is imported on first use: the command line and
# the fork server import only the modules they need, which keeps their
# start-up (and the fork server's memory image) small.
_LAZY = {
    "Policy": "stockade.policy.model",
    "DEVNULL": "stockade.sandbox",
    "PIPE": "stockade.sandbox",
    "STDOUT": "stockade.sandbox",
    "Denial": "stockade.sandbox",
    "Result": "stockade.sandbox",
    "Sandbox": "stockade.sandbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stockade' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Denial",
    "LaunchError",
    "Policy",
    "PolicyError",
    "Result",
    "Sandbox",
    "StockadeError",
    "UnsupportedError",
    "__version__",
]
