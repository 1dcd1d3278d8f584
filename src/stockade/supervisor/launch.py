"""Where a launch meets the supervisor: routing for callbacks and logs,
and the hand-off socket of one run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stockade.policy.model import Category

if TYPE_CHECKING:
    from stockade.launch.spawn import Prepared
    from stockade.plan import EnforcementPlan
    from stockade.supervisor.session import SandboxSession

#: What an ``on_event`` callback sees besides the supervisor's own
#: decisions (SPEC section 3): opens, execs, connects and binds.
CALLBACK_CATEGORIES = frozenset(
    {
        Category.READ,
        Category.WRITE,
        Category.CREATE,
        Category.EXEC,
        Category.NET_CONNECT,
        Category.NET_BIND,
    }
)


def observed_categories(on_event: bool, log: str | None) -> frozenset[Category]:
    """Categories routed only to be seen: everything a callback may judge,
    or the execs a ``--log`` records."""
    if on_event:
        return CALLBACK_CATEGORIES
    if log is not None:
        return frozenset({Category.EXEC})
    return frozenset()


def supervise(
    plan: EnforcementPlan,
    prepared: Prepared,
    on_event: Callable[[Any], Any] | None,
    sink: Callable[[Any], None] | None,
) -> SandboxSession:
    """Prepare *prepared* to hand its listener over, and have this
    process's supervisor take it.  Returns the run's session."""
    from stockade.supervisor import engine
    from stockade.supervisor.session import SandboxSession

    assert plan.notify is not None
    # A plan of its own for this run: its private tmp directory, its caches.
    session = SandboxSession(plan.notify.for_run(prepared.tmpdir), on_event=on_event, sink=sink)
    ours, theirs = engine.handoff_pair()
    prepared.notify_program = plan.notify_program
    prepared.handoff_fd = theirs.detach()
    engine.get().adopt(ours, session)
    return session
