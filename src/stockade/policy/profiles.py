"""Built-in profiles, as data.

A profile is a list of the same steps a user could give on the command line
(``read``, ``write``, ``exec``, ``deny``, ``rule``) plus option settings, so
it means exactly what those options mean (see
:mod:`stockade.policy.builder`), and ``stockade profiles`` can print it.

Profiles name directories that some systems lack (``/lib32``, ``/libx32``,
``/opt``).  Policy stays pure, so they are emitted as rules like any other;
the launcher skips a tree rule whose root does not exist.

Device nodes get ``read``/``write``/``ioctl`` rules on the exact path rather
than a ``--write`` tree: a writable ``/dev/null`` must not also be
executable, creatable or deletable.
"""

from __future__ import annotations

from typing import Literal

from stockade._record import record
from stockade.errors import PolicyError

__all__ = ["PROFILES", "Profile", "get_profile", "list_profiles"]

StepKind = Literal["read", "write", "exec", "deny", "rule"]
OptionValue = str | int | float | bool | tuple[str, ...]


@record(frozen=True)
class Profile:
    """A named starting point; options given after it refine it."""

    name: str
    summary: str
    #: Access steps, applied in order, as ``(kind, argument)``.
    steps: tuple[tuple[StepKind, str], ...] = ()
    #: Scalar options, applied after the steps, as ``(key, value)``.
    options: tuple[tuple[str, OptionValue], ...] = ()
    #: Grant ``write`` on the current directory, found when the profile is
    #: applied.  Skipped when that directory is ``/``: a command started
    #: from the root directory must not get write access to everything.
    write_cwd: bool = False

    def describe(self) -> list[str]:
        """Human-readable lines, one per step or option."""
        lines = [f"{kind} {arg}" for kind, arg in self.steps]
        if self.write_cwd:
            lines.append("write <current directory>")
        lines.extend(f"{key} = {value!r}" for key, value in self.options)
        return lines


def _device_rules(path: str, *categories: str) -> tuple[tuple[StepKind, str], ...]:
    return tuple(("rule", f"allow/{c}+{path}") for c in categories)


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

_DEFAULT = Profile(
    name="default",
    summary=(
        "read and execute the system directories, read /proc, use the usual "
        "devices, write the current directory and a private /tmp"
    ),
    steps=(
        *(("read", d) for d in (*_SYSTEM_DIRS, "/etc", "/opt")),
        # /proc/self/exe is how many programs re-execute themselves.
        ("read", "/proc"),
        ("rule", "allow/read+/sys/devices/system/cpu/***"),
        *(
            step
            for dev in ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/ptmx")
            for step in _device_rules(dev, "read", "write", "ioctl")
        ),
        *_device_rules("/dev/pts/***", "read", "write", "ioctl"),
        ("write", "/dev/shm"),  # noqa: S108  # granting POSIX shm, not using a temp file
        *_device_rules("/dev/random", "read"),
        *_device_rules("/dev/urandom", "read"),
    ),
    options=(("private_tmp", True),),
    write_cwd=True,
)

_STRICT = Profile(
    name="strict",
    summary=(
        "only the system libraries and programs, the dynamic loader's files and "
        "a few devices; a clean environment and tight limits"
    ),
    steps=(
        *(("read", d) for d in _SYSTEM_DIRS),
        *(
            ("rule", f"allow/read+{p}")
            for p in (
                "/etc/ld.so.cache",
                "/etc/ld.so.conf",
                "/etc/ld.so.conf.d/***",
                "/etc/localtime",
                "/etc/passwd",
                "/etc/group",
                "/etc/nsswitch.conf",
            )
        ),
        *_device_rules("/dev/null", "read", "write"),
        *_device_rules("/dev/zero", "read", "write"),
        *_device_rules("/dev/urandom", "read"),
    ),
    options=(
        ("private_tmp", True),
        ("clean_env", True),
        ("rlimit", "core=0"),
        ("rlimit", "nofile=1024"),
        ("max_procs", 64),
    ),
)

_NONE = Profile(
    name="none",
    summary=(
        "no filesystem access at all; only what later options allow "
        "(stops the default profile from applying)"
    ),
)

#: Built-in profiles by name.
PROFILES: dict[str, Profile] = {p.name: p for p in (_DEFAULT, _STRICT, _NONE)}


def get_profile(name: str) -> Profile:
    """The built-in profile *name*.

    Raises :class:`~stockade.errors.PolicyError` listing the known names.
    """
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise PolicyError(
            f"unknown profile {name!r}; expected one of {', '.join(sorted(PROFILES))}"
        ) from None


def list_profiles() -> list[Profile]:
    """Every built-in profile, sorted by name."""
    return [PROFILES[n] for n in sorted(PROFILES)]
