"""The saga runner: feeds sagas from the store's global order, with a stored checkpoint.

Delivery is at-least-once: the runner stores its checkpoint after each page of events, so after
a crash it reads part of a page again. Effects happen once all the same, because a saga decides
from its event-sourced state and every command it sends carries a deterministic idempotency key.

One saga is never handled by two steps at once inside a runner; across processes, give each
runner a ``partition=(index, count)``: a saga belongs to exactly one partition (a stable hash of
its id), so each saga is driven by one process. Every runner of one group must use the same
``count``; changing it starts the new partitions' checkpoints from the beginning (harmless, as
delivery is idempotent, but slow on a large store).

Problems are visible, never dropped:

* an event addressed to a saga that does not exist (and cannot start it) is *unmatched*: it is
  logged, counted in ``stats.unmatched`` and kept in :attr:`SagaRunner.unmatched`;
* a step that raises an unexpected exception records :class:`~orchestrix.core.execution.saga.SagaStuck`
  in the saga's stream (the runner goes on with other sagas); a store failure (``StoreError``)
  stops the runner instead, without moving the checkpoint;
* a runner given a ``lease`` checks it right before each dispatch and each checkpoint, and
  runs every step under the lease's fence, so once another process holds the lease, nothing
  this runner does lands: it stops with :class:`~orchestrix.core.errors.LeaseLostError`;
* :meth:`SagaRunner.stuck` lists stuck sagas and sagas without progress for ``stuck_after``,
  with their state and reason; :meth:`SagaRunner.retry` runs one again.

Deadlines: before each page, and (``run_forever``) as soon as one comes due while the runner
waits for new events, the runner fires the deadlines of its partition's sagas that its
``clock`` says are due (each a fenced step that appends ``DeadlineFired`` once in effect; the
page loop then delivers it to the ``@on_deadline`` handler); :meth:`SagaRunner.deadlines` lists
the pending ones. It learns them from the history before its checkpoint (``index_history``) and
from each page, so a deadline that came due while no runner was up fires when one starts.

This module is the runner itself: construction, the public API and the page loop, each
behaviour written once as a coroutine (the sync forms run it with the sync driver of
:mod:`orchestrix.core._io`). A saga step (load, admit, handle, save, dispatch, record stuck,
retry) lives in ``_saga_steps.py``; what the runner knows about its sagas (open, stuck,
unmatched, stats) in ``_saga_monitor.py``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrix.core import _io
from orchestrix.core._io import run_sync
from orchestrix.core.errors import SagaError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository
from orchestrix.core.eventsourcing.fencing import Lease, fenced
from orchestrix.core.eventsourcing.store import ANY, EventStore
from orchestrix.core.execution._paging import PageLoop, read_page
from orchestrix.core.execution._saga_monitor import (
    Request,
    RunnerStats,
    SagaKey,
    SagaMonitor,
    StuckSaga,
    Target,
    UnmatchedEvent,
)
from orchestrix.core.execution._saga_steps import SagaSteps
from orchestrix.core.execution.checkpoint import CheckpointStore
from orchestrix.core.execution.dead_letters import DEAD_LETTER_STREAM, DeadLetterResolved, DeadLetters
from orchestrix.core.execution.deadlines import Deadline
from orchestrix.core.execution.dispatch import CommandDispatcher
from orchestrix.core.execution.saga import Saga
from orchestrix.core.messaging.messages import RecordedEvent

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "RunnerStats",
    "SagaRunner",
    "StuckSaga",
    "UnmatchedEvent",
    "partition_of",
]

T = TypeVar("T")

_HISTORY_CHUNK = 1000  # events read at a time while indexing the history on start


def partition_of(saga_id: str, count: int) -> int:
    """The partition (0 .. count-1) a saga id belongs to; the same in every process and run."""
    if count < 1:
        raise ValueError("partition count must be at least 1")
    digest = hashlib.blake2b(saga_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _stream_heads(page: Sequence[RecordedEvent]) -> dict[str, int]:
    """The version of each stream's last event in ``page``."""
    return {recorded.stream: recorded.version for recorded in page}


class SagaRunner(PageLoop):
    """Drives sagas from a store's global order; sync (``run_*``) and asyncio (``run_*_async``) forms.

    ``dispatcher`` executes the commands sagas yield. ``checkpoints`` keeps the position of the
    last page handled under ``name`` (plus the partition, if any). ``stuck_after`` makes
    :meth:`stuck` also list open sagas whose last event is older than that. The asyncio form
    handles up to ``max_concurrency`` sagas of one page at once (each saga's own events in order);
    the sync form, the same logic run by the sync driver, handles them one after another, in the
    order of their first event in the page.

    On start the runner reads the history before its checkpoint once, to know which sagas are
    still open (for :meth:`stuck`) and which deadlines are pending; pass ``index_history=False``
    to skip that on a huge store (the runner then knows only the deadlines scheduled after its
    checkpoint, so sagas that use deadlines want the index).

    ``step_threads=True`` makes the asyncio form run each saga step's *sync* code (sync store
    calls, ``dispatcher.handle``) in a worker thread of the loop's default executor: one thread
    hop per step instead of one per store call. It pays off with stores whose asyncio forms hop
    to a thread for every call (one built on ``AsyncStoreMixin``) and a dispatcher whose
    ``handle`` does what ``handle_async`` does; size the executor (``loop.set_default_executor``)
    to ``max_concurrency`` if the store batches concurrent appends. The built-in stores need
    none of it: their asyncio forms run on the loop (memory; file reads) or hold no thread while
    they wait (file appends, PostgreSQL).

    ``lease`` (a :class:`~orchestrix.core.eventsourcing.fencing.Lease`, such as the PostgreSQL
    store's ``PartitionLease``) makes the runner safe against a holder that lost its lease while
    paused: the lease is checked right before each command is dispatched and before each
    checkpoint is stored, and every step runs under the lease's fence, so the store refuses any
    append (the saga's, or an in-process command handler's) made after another process was
    granted the lease. The runner then raises LeaseLostError and stops, its checkpoint unmoved.
    The store must check fences (``store.checks_fences``).

    ``run_forever`` keeps a deadline timer beside its page loop: while it waits for new events
    with a deadline pending, it reads its ``clock`` again at least every ``timer_tick`` seconds
    and fires the deadline as soon as the clock says it is due, even if no event arrives.
    """

    def __init__(
        self,
        store: EventStore,
        sagas: Sequence[type[Saga]],
        dispatcher: CommandDispatcher,
        checkpoints: CheckpointStore,
        *,
        name: str = "sagas",
        partition: tuple[int, int] = (0, 1),
        page_size: int = 500,
        max_concurrency: int = 32,
        stuck_after: timedelta | None = None,
        attempts: int = 5,
        clock: Callable[[], datetime] = _utcnow,
        index_history: bool = True,
        unmatched_kept: int = 1000,
        step_threads: bool = False,
        lease: Lease | None = None,
        timer_tick: float = 1.0,
    ) -> None:
        index, count = partition
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"partition must be (index, count) with 0 <= index < count, not {partition!r}")
        if not sagas:
            raise ValueError("a runner needs at least one saga class")
        for cls in sagas:
            if not (isinstance(cls, type) and issubclass(cls, Saga)):
                raise TypeError(f"{cls!r} is not a Saga subclass")
        if page_size < 1 or max_concurrency < 1:
            raise ValueError("page_size and max_concurrency must be at least 1")
        if (
            isinstance(timer_tick, bool)
            or not isinstance(timer_tick, int | float)
            or not (math.isfinite(timer_tick) and timer_tick > 0)
        ):
            raise ValueError(f"timer_tick must be a positive number of seconds, not {timer_tick!r}")
        if lease is not None and not getattr(store, "checks_fences", False):
            raise SagaError(
                f"{type(store).__name__} cannot check fences, so a lease cannot keep a paused runner "
                "from acting: use a store that does (memory, PostgreSQL) or run without a lease"
            )
        self.store = store
        self.sagas: tuple[type[Saga], ...] = tuple(sagas)
        self.checkpoints = checkpoints
        self.partition: tuple[int, int] = (index, count)
        self.checkpoint_name: str = name if count == 1 else f"{name}[{index}/{count}]"
        self.page_size = page_size
        self.max_concurrency = max_concurrency
        self.index_history = index_history
        self.step_threads = step_threads
        self.timer_tick = float(timer_tick)
        self._position: int | None = None
        self._overlap = False  # store checkpoints alongside the next page (run_forever_async)
        self._saving: Awaitable[None] | None = None
        self._monitor = SagaMonitor(
            store, self.sagas, self._mine, stuck_after=stuck_after, clock=clock, unmatched_kept=unmatched_kept
        )
        self._types = self._monitor.wanted_types()
        self._steps = SagaSteps(
            store,
            dispatcher,
            self._monitor,
            lease=lease,
            lease_name=self.checkpoint_name,
            attempts=attempts,
            clock=clock,
        )

    # -- state ------------------------------------------------------------------------------

    @property
    def position(self) -> int | None:
        """The global position handled so far (None until the runner has loaded its checkpoint)."""
        return self._position

    @property
    def stats(self) -> RunnerStats:
        """What the runner has done since it was created."""
        return self._monitor.stats

    @property
    def unmatched(self) -> tuple[UnmatchedEvent, ...]:
        """The most recent unmatched events (``stats.unmatched`` counts all of them)."""
        return tuple(self._monitor.unmatched)

    @property
    def dispatcher(self) -> CommandDispatcher:
        """Executes the commands sagas send."""
        return self._steps.dispatcher  # type: ignore[no-any-return]

    @property
    def lease(self) -> Lease | None:
        """The partition lease the runner checks and runs its steps under, if any."""
        return self._steps.lease

    @property
    def repository(self) -> AggregateRepository:
        """The repository the runner loads and saves sagas with."""
        return self._steps.repository

    @property
    def attempts(self) -> int:
        """How many times a step that meets a ConcurrencyError is tried before its saga is stuck."""
        return self._steps.attempts

    @property
    def clock(self) -> Callable[[], datetime]:
        """The time recorded in SagaStuck and SagaRetried, and compared with ``stuck_after``."""
        return self._steps.clock

    @property
    def stuck_after(self) -> timedelta | None:
        """How long an open saga may go without progress before :meth:`stuck` lists it."""
        return self._monitor.stuck_after

    def deadlines(self) -> list[Deadline]:
        """The pending deadlines of this runner's sagas, soonest first, as far as read."""
        return run_sync(self.deadlines_async())

    async def deadlines_async(self) -> list[Deadline]:
        """Asyncio form of :meth:`deadlines`."""
        await self._start()
        return self._monitor.deadlines()

    def open_sagas(self) -> list[tuple[type[Saga], str]]:
        """The sagas of this runner's partition that have started and not completed, as far as read."""
        return run_sync(self.open_sagas_async())

    async def open_sagas_async(self) -> list[tuple[type[Saga], str]]:
        """Asyncio form of :meth:`open_sagas`."""
        await self._start()
        return self._monitor.open_sagas()

    # -- running ------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Handle the next page of events after the checkpoint, then store the checkpoint.

        Returns the number of events read (0 when the runner is caught up): only those its sagas
        handle, those their streams hold and operators' requests are read; the position moves
        past the others all the same.
        """
        return run_sync(self.run_once_async())

    async def run_once_async(self) -> int:
        """Asyncio form of :meth:`run_once`; sagas of one page are handled concurrently."""
        await self._start()
        with fenced(await self._steps.fence()):
            await self._fire_due()
            assert self._position is not None  # set by _start
            # Only the events the sagas and the books look at are read (decoded); ``reached`` is
            # past the others too once nothing of ours is left.
            page, reached = await read_page(self.store, self._position, self.page_size, self._types)
            # A page shorter than asked for ends at the store's head: a saga stream's last event
            # in it was its last event when read, and its first step may start from it unread.
            heads = _stream_heads(page) if len(page) < self.page_size else {}
            lanes: dict[SagaKey, list[tuple[Target, RecordedEvent, bool]]] = {}
            for recorded in page:
                self._monitor.observe(recorded)
                head = heads.get(recorded.stream) == recorded.version
                for target in self._monitor.targets(recorded):
                    lanes.setdefault((target[0], target[2]), []).append((target, recorded, head))
            # One lane per saga, its events in order; lanes run concurrently under asyncio.
            await _io.each(lanes.values(), self._run_lane, self.max_concurrency)
            for recorded in page:
                request = self._monitor.request(recorded)
                if request is not None:
                    await self._carry_out(request)
            last = reached
            if last > self._position:
                await self._steps.check_lease("store its checkpoint")
                self._position = last
                await self._store_checkpoint(last)
                self._monitor.read(len(page))
            return len(page)

    async def _store_checkpoint(self, position: int) -> None:
        """Store ``position``; in :meth:`run_forever_async`, alongside the next page.

        The previous page's save ends first, so positions are stored in order, and its failure
        stops the runner here. A save that overlaps the next page only delays the stored
        position: a crash meanwhile redelivers one page more, which delivery tolerates.
        """
        previous, self._saving = self._saving, None
        if previous is not None:
            await previous
        save = _io.save_checkpoint(self.checkpoints, self.checkpoint_name, position)
        if self._overlap and not _io.is_sync():
            self._saving = _io.alongside(save)
        else:
            await save

    async def run_forever_async(
        self, stop: asyncio.Event | threading.Event | None = None, idle_timeout: float = 0.5
    ) -> None:
        """Asyncio form of :meth:`run_forever`; also ends when its task is cancelled.

        Each page's checkpoint is stored while the next page runs (a save syncs a file or
        commits a row: on a busy runner it would otherwise hold up every page); it is stored
        before this returns.
        """
        self._overlap = True
        try:
            await super().run_forever_async(stop, idle_timeout)
        finally:
            self._overlap = False
            pending, self._saving = self._saving, None
            if pending is not None:
                await pending

    def handle(self, recorded: RecordedEvent) -> None:
        """Deliver one event to every saga it is addressed to (a redelivery is harmless)."""
        return run_sync(self.handle_async(recorded))

    async def handle_async(self, recorded: RecordedEvent) -> None:
        """Asyncio form of :meth:`handle`."""
        with fenced(await self._steps.fence()):
            await self._start()
            self._monitor.observe(recorded)
            for target in self._monitor.targets(recorded):
                await self._deliver(target, recorded)

    async def _carry_out(self, request: Request) -> None:
        """An operator's stored request (retry a saga, retry or discard a dead letter), done once:
        a redelivered request finds its saga no longer stuck, or its record no longer waiting."""
        cls, saga_id, what, dead_letter = request
        if what == "retry saga":
            await self._in_step(lambda: self._steps.retry(cls, saga_id, only_if_stuck=True))
            return
        letters = DeadLetters(self.store, clock=self.clock)
        record = await letters.get_async(dead_letter)
        if record.status != f"{what} requested":
            return
        await self._steps.check_lease(f"{what} dead letter {dead_letter}")
        if what == "discard":
            await self._in_step(lambda: self._steps.release(cls, saga_id))
            outcome, detail = "discarded", record.detail
        else:
            saga = await self._in_step(lambda: self._steps.retry(cls, saga_id, only_if_stuck=True))
            outcome = "failed again" if saga.stuck_reason is not None else "retried"
            detail = saga.stuck_reason or ("saga completed" if saga.completed else f"saga {saga.state}")
        resolved = DeadLetterResolved(dead_letter, outcome, detail, self.clock())
        await _io.append(self.store, DEAD_LETTER_STREAM, [resolved], ANY)

    async def _fire_due(self) -> None:
        """Fire every deadline due by the clock; what they append, the page read next delivers."""
        due = self._monitor.due(self.clock())

        async def fire(item: tuple[type[Saga], Deadline]) -> None:
            cls, deadline = item
            outcome = await self._in_step(lambda: self._steps.fire(cls, deadline))
            self._monitor.fired(cls, deadline, outcome)

        if due:
            await _io.each(due, fire, self.max_concurrency)

    async def _wait_idle(self, idle_timeout: float) -> None:
        """The deadline timer beside the page loop: wait for new events, but wake to fire a deadline.

        The wait is cut into slices of at most ``timer_tick`` seconds while a deadline is pending,
        and the clock is read again after each: the ``clock`` is injectable (virtual time in tests
        and demos, a wall clock that an NTP step moves), so the real seconds until a due time are
        only an estimate. A deadline thus fires within a tick of its due time by the runner's own
        clock, not when the next event happens to arrive or the idle timeout ends; the page loop
        then fires it (``run_once`` fires what is due before reading its page).
        """
        end = time.monotonic() + idle_timeout
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            due = self._monitor.next_due()
            if due is None:
                wait = remaining
            else:
                until = (due - self.clock()).total_seconds()
                if until <= 0:
                    return
                wait = min(remaining, until, self.timer_tick)
            if await _io.wait_for_events(self.store, self._read_position(), wait):
                return

    def _read_position(self) -> int:
        assert self._position is not None  # run_once has started the runner
        return self._position

    async def _run_lane(self, lane: list[tuple[Target, RecordedEvent, bool]]) -> None:
        for target, recorded, head in lane:
            await self._deliver(target, recorded, head)

    async def _deliver(self, target: Target, recorded: RecordedEvent, head: bool = False) -> None:
        await self._in_step(lambda: self._steps.deliver(target, recorded, head))

    async def _in_step(self, step: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run one saga step here, or (``step_threads``) its sync form in a worker thread."""
        if self.step_threads:
            return await _io.in_thread(lambda: run_sync(step()))
        return await step()

    async def _start(self) -> None:
        """Load the checkpoint and (``index_history``) learn the open sagas from the history before it."""
        if self._position is not None:
            return
        position = await _io.load_checkpoint(self.checkpoints, self.checkpoint_name)
        after = 0
        while self.index_history and after < position:
            chunk = await _io.read_all(self.store, after, min(_HISTORY_CHUNK, position - after))
            for recorded in chunk:
                if recorded.position > position:
                    break
                self._monitor.observe(recorded)
            if not chunk or chunk[-1].position >= position:
                break
            after = chunk[-1].position
        # Another start may have finished first (two threads, or two tasks) and the runner handled
        # pages since: never move its position back.
        if self._position is None:
            self._position = position

    def _mine(self, saga_id: str) -> bool:
        index, count = self.partition
        return count == 1 or partition_of(saga_id, count) == index

    # -- stuck sagas and retries ------------------------------------------------------------

    def stuck(self, now: datetime | None = None) -> list[StuckSaga]:
        """Open sagas recorded as stuck, or (with ``stuck_after``) without progress for that long."""
        return run_sync(self.stuck_async(now))

    async def stuck_async(self, now: datetime | None = None) -> list[StuckSaga]:
        """Asyncio form of :meth:`stuck`."""
        await self._start()
        return await self._monitor.stuck(now)

    def retry(self, saga_type: type[Saga], saga_id: str) -> Saga:
        """Run a saga again from its state: clear a recorded stuck state, then resume it.

        Returns the saga as it stands afterwards; if the step failed again it is stuck again
        (``stuck_reason`` says why). Raises AggregateNotFoundError for an unknown saga.
        """
        return run_sync(self.retry_async(saga_type, saga_id))

    async def retry_async(self, saga_type: type[Saga], saga_id: str) -> Saga:
        """Asyncio form of :meth:`retry`."""
        await self._start()
        return await self._in_step(lambda: self._steps.retry(saga_type, saga_id))
