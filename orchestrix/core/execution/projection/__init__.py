"""Projections: read models fed from the store's global order, each with its own checkpoint.

A :class:`Projection` holds a read model (a dict, a table, a search index) and marks its handler
methods with :func:`projects`; a :class:`ProjectionRunner` reads pages of events after the
checkpoints and hands each event to the projections that handle its type. Several projections
in one runner share one read of the log and keep separate checkpoints, so one that was added
later (or is being rebuilt) catches up while the others skip what they have seen.

Delivery is at-least-once: a projection's checkpoint is stored after each page it handled, so
after a crash the events of at most one page are handled again. Handlers must then be
idempotent (set a value, don't add to it), unless the projection stores its own position:

* exactly-once effect: a projection whose model lives in a database can store the position it
  has reached *in the same transaction* as its data, in :meth:`Projection.commit` (called after
  each page, before the checkpoint) and report it from :meth:`Projection.position`. The runner
  then starts from that position and never hands it an event at or below it, so every event
  takes effect once, whatever the checkpoint says. :meth:`Projection.rollback` discards a page
  that failed half-way.

A handler that raises stops the runner with :class:`ProjectionError`; the failing projection's
checkpoint stays before the failing event (which is logged with its position and type), so
nothing is ever skipped silently. Fix the cause and run again: the runner reloads its positions.
A projection (or handler) with a retry policy has transient failures tried again after their
backoff and events that fail for good parked as dead letters while it goes on (see
``projection._retries``).

Long replays show progress: when a runner is more than ``catch_up_threshold`` events behind
the store (and always while rebuilding), it logs at INFO on the
``orchestrix.core.execution.projection.runner`` logger at most once per ``progress_every``
seconds (events done of total, events/s, ETA), and once when it has caught up; the optional
``progress`` callback receives the same figures as :class:`ProjectionProgress` records.

One idea per module: ``projection.base`` holds the :class:`Projection` base class and
:func:`projects`, ``projection.runner`` the :class:`ProjectionRunner`, and
``orchestrix.core.execution.progress`` the progress reports, which the ``orchestrix`` command
shares.
"""

from orchestrix.core.errors import ProjectionError
from orchestrix.core.execution.progress import ProjectionProgress
from orchestrix.core.execution.projection.base import Projection, projects
from orchestrix.core.execution.projection.runner import ProjectionRunner, ProjectionStats

__all__ = [
    "Projection",
    "ProjectionError",
    "ProjectionProgress",
    "ProjectionRunner",
    "ProjectionStats",
    "projects",
]
