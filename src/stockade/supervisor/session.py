"""One supervised sandbox: its plan, its handlers, its events.

A handler answers one notification.  Its contract: it runs in a worker
(it may block), it answers the call exactly once, and if it raises, the
sentinel answers EACCES for it.  Decisions go through :meth:`check`, which
asks the plan, then the ``on_event`` callback, and records the event.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stockade.kernel import notify, syscalls
from stockade.policy.model import Category
from stockade.supervisor import events, fastpath
from stockade.supervisor.engine import Session, Worker
from stockade.supervisor.resolve import Caller

if TYPE_CHECKING:
    from stockade.plan.notify import NotifyPlan

_EXEC = Category.EXEC
_NR_OPEN = syscalls.nr("open")
_NR_OPENAT = syscalls.nr("openat")

Handler = Callable[["SandboxSession", Worker, notify.SeccompNotif, Caller], None]
EventSink = Callable[[events.Event], None]


#: Set by the handler modules at import: syscall number -> handler.
HANDLERS: dict[int, Handler] = {}
#: Answers the receiver may give at once (see Session.quick): syscall
#: number -> a function that answers and returns True, or returns False.
#: One stands for the handler registered for its call: it is skipped
#: while a session's table holds another handler there (a test's, a
#: benchmark's).
QUICK: dict[int, Callable[[SandboxSession, Worker, notify.SeccompNotif], bool]] = {}
#: The handlers as registered by :func:`handles`.
_REGISTERED: dict[int, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for the system calls *names*."""

    def register(fn: Handler) -> Handler:
        for name in names:
            HANDLERS[syscalls.nr(name)] = _REGISTERED[syscalls.nr(name)] = fn
        return fn

    return register


class Denied(Exception):
    """A decision denied the call; the handler answers with ``errno``."""

    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.errno = err


class SandboxSession(Session):
    """The supervisor's view of one sandbox.

    ``handlers`` maps system call numbers to handlers (the default table
    unless a test passes its own); ``sink`` receives every event that is
    made (``--log``); ``on_event`` is the API callback (SPEC section 3).
    """

    def __init__(
        self,
        plan: NotifyPlan,
        *,
        on_event: Callable[[events.Event], Any] | None = None,
        sink: EventSink | None = None,
        handlers: dict[int, Handler] | None = None,
    ) -> None:
        super().__init__()
        from stockade.supervisor import fs, net  # noqa: F401 - register the handlers

        self.plan = plan
        self.on_event = on_event
        self.sink = sink
        self.handlers = HANDLERS if handlers is None else handlers
        self.denials: list[events.Event] = []
        self.failures: list[str] = []
        self._root_fd = -1
        self._root_lock = threading.Lock()
        #: Events are made for allowed calls too (a log alone wants the
        #: allowed execs only; a callback or an audit, everything).
        self.verbose = on_event is not None or sink is not None or plan.audit
        self._all_allowed = on_event is not None or plan.audit
        # The compiled receiver answers allowed opens with no event and the
        # default handlers only (fs.q_open teaches it where); a read-only
        # open reaches the supervisor only when reads are routed.
        opens = (_NR_OPEN, _NR_OPENAT)
        if (
            Category.READ in plan.categories
            and not self._all_allowed
            and all(self.handlers.get(nr) is _REGISTERED.get(nr) for nr in opens)
        ):
            self.fast = fastpath.dir_cache(plan)

    # -- dispatch -------------------------------------------------------------

    def handle(self, worker: Worker, notif: notify.SeccompNotif) -> None:
        handler = self.handlers.get(notif.data.nr)
        if handler is None:
            raise LookupError(f"no handler for system call {notif.data.nr}")
        caller = Caller(notif.pid)
        try:
            handler(self, worker, notif, caller)
        except Denied as denied:
            worker.resp.send(self.listener, notif.id, error=denied.errno)
        except OSError as err:
            # What the kernel would have answered for the same operation.
            worker.resp.send(self.listener, notif.id, error=err.errno or errno.EACCES)

    def quick(self, worker: Worker, notif: notify.SeccompNotif) -> bool:
        nr = notif.data.nr
        fn = QUICK.get(nr)
        if fn is None or self.handlers.get(nr) is not _REGISTERED.get(nr):
            return False
        return fn(self, worker, notif)

    def handler_failed(self, notif: notify.SeccompNotif, err: BaseException) -> None:
        name = syscalls.NAME.get(notif.data.nr, str(notif.data.nr))
        self.failures.append(f"{name}: {type(err).__name__}: {err}")
        self._emit(events.make(notif.pid, name, "", "", events.DENY, errno.EACCES,
                               "handler failure"))  # fmt: skip

    def closed(self) -> None:
        with self._root_lock:
            fd, self._root_fd = self._root_fd, -1
            if self.fast is not None:
                self.fast.set_root(-1)
        if fd >= 0:
            os.close(fd)

    # -- helpers for handlers -------------------------------------------------

    @property
    def quiet_net(self) -> bool:
        """An allowed network access makes no event (:meth:`check_net`)."""
        return not self._all_allowed

    def root_fd(self, worker: Worker, notif: notify.SeccompNotif) -> int:
        """Our descriptor on the sandbox's root directory (opened once)."""
        fd = self._root_fd
        if fd >= 0:
            return fd
        with self._root_lock:
            if self._root_fd < 0:
                fd = os.open(f"/proc/{notif.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                # The pid was the caller's when we opened it, not a recycled one.
                if not worker.resp.valid(self.listener, notif.id):
                    os.close(fd)
                    raise OSError(errno.ENOENT, "the call went away")
                self._root_fd = fd
                if self.fast is not None:
                    self.fast.set_root(fd)
            return self._root_fd

    def valid(self, worker: Worker, notif: notify.SeccompNotif) -> None:
        """After reading the caller's memory: the call is still pending, so
        what we read was the caller's (raises ENOENT otherwise)."""
        if not worker.resp.valid(self.listener, notif.id):
            raise OSError(errno.ENOENT, "the call went away")

    def check(
        self,
        notif: notify.SeccompNotif,
        category: Category,
        target: str,
        argv: tuple[str, ...] | None = None,
    ) -> None:
        """Decide *category* access to path *target*; raises :class:`Denied`."""
        verdict = self.plan.decide(category, target)
        if verdict.allow and not (self.verbose and (self._all_allowed or category is _EXEC)):
            return
        self._decided(notif, category, target, verdict, argv)

    def check_move(
        self, notif: notify.SeccompNotif, source: str, target: str, source_is_dir: bool
    ) -> None:
        """Decide giving the inode at *source* the name *target* (rename,
        link): a new name never grants what the old one did not.  Raises
        :class:`Denied` (EXDEV, so that ``mv`` copies instead)."""
        verdict = self.plan.decide_move(source, target, source_is_dir)
        if verdict.allow:
            return
        category = verdict.rule.category if verdict.rule is not None else Category.READ
        self._decided(notif, category, f"{source} -> {target}", verdict, None)

    def check_net(
        self, notif: notify.SeccompNotif, category: Category, family: int, address: str, port: int
    ) -> None:
        """Decide *category* access to an inet address; raises :class:`Denied`."""
        verdict = self.plan.decide_net(category, family, address, port)
        if verdict.allow and not self._all_allowed:
            return
        target = f"[{address}]!{port}" if ":" in address else f"{address}!{port}"
        self._decided(notif, category, target, verdict, None)

    def observe(self, notif: notify.SeccompNotif, category: Category, target: str,
                argv: tuple[str, ...] | None = None) -> None:  # fmt: skip
        """An event for an access the kernel layers decide (the callback may
        still deny it); raises :class:`Denied`."""
        if not self._all_allowed:
            return
        from stockade.plan.notify import ALLOW

        self._decided(notif, category, target, ALLOW, argv)

    def _decided(self, notif: notify.SeccompNotif, category: Category, target: str,
                 verdict: Any, argv: tuple[str, ...] | None) -> None:  # fmt: skip
        name = syscalls.NAME.get(notif.data.nr, str(notif.data.nr))
        action = events.ALLOW if verdict.allow else events.DENY
        if verdict.allow and self.plan.audit:
            action = events.AUDIT
        rule = str(verdict.rule) if verdict.rule is not None else None
        event = events.make(notif.pid, name, str(category), target, action, verdict.errno, rule,
                            argv)  # fmt: skip
        if self.on_event is not None:
            act, err = events.callback_verdict(self.on_event, event)
            if act != event.action or err != event.errno:
                event = events.make(notif.pid, name, str(category), target, act, err,
                                    "on_event" if act == events.DENY else rule, argv)  # fmt: skip
        self._emit(event)
        if event.action == events.DENY:
            raise Denied(event.errno or errno.EACCES)

    def _emit(self, event: events.Event) -> None:
        if event.action == events.DENY:
            self.denials.append(event)
        if self.sink is not None:
            try:
                self.sink(event)
            except Exception:  # noqa: S110 - a full disk must not turn into allowed calls
                pass
