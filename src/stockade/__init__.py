"""stockade: an application kernel for Linux.

Run untrusted programs confined by Landlock, seccomp-bpf and namespaces,
from the shell (``stockade run``) or from Python::

    import stockade
    sb = stockade.Sandbox(read=["/usr"], write=["/tmp/job"])
    res = sb.run(["python3", "-c", "print(1)"], capture=True)
"""

from stockade._version import __version__
from stockade.errors import LaunchError, PolicyError, StockadeError, UnsupportedError
from stockade.policy.model import Policy
from stockade.sandbox import DEVNULL, PIPE, STDOUT, Denial, Result, Sandbox

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
