"""The notifications demo: messages on flaky channels, retried with backoff, or dead-lettered.

Run from the repository root (``python bases/orchestrix/notifications_demo/main.py`` works too)::

    python -m bases.orchestrix.notifications_demo.main             # the default story (seed 7)
    python -m bases.orchestrix.notifications_demo.main --seed 3    # other failures
    python -m bases.orchestrix.notifications_demo.main --help      # every option

Domain events (users registering, orders, payments) call for notifications on four simulated
channels that fail now and then. Time is virtual: the runner's clock jumps to the next due
retry deadline, so backoffs of seconds or minutes take no time at all, and a seed replays a run
exactly. The run ends by checking that every notification ended SENT or DEAD_LETTER and that no
channel delivered one twice; the exit status is 1 if not.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

if not __package__:  # run as a file, so sys.path starts at this folder: add the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bases.orchestrix.notifications_demo.handlers import NotificationHandlers, SimulatedChannel
from bases.orchestrix.notifications_demo.models import (
    Channel,
    NotificationFailed,
    NotificationMovedToDeadLetter,
    NotificationRequested,
    NotificationRetrying,
    NotificationSent,
    OrderPlaced,
    PaymentReceived,
    RetryConfig,
    UserRegistered,
    notifications_serializer,
)
from bases.orchestrix.notifications_demo.saga import NotificationSaga, notifiers
from orchestrix.core.eventsourcing import AggregateRepository, EventStore
from orchestrix.core.execution import InMemoryCheckpointStore, SagaRunner
from orchestrix.infrastructure.memory.store import InMemoryEventStore

__all__ = ["VirtualClock", "build_channels", "main", "notifications", "run_demo"]

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
D = Decimal

FAILURE_RATES = {
    # channel: (failure rate, share of failures that are permanent)
    Channel.EMAIL: (0.30, 0.0),
    Channel.SMS: (0.50, 0.0),
    Channel.PUSH: (0.20, 0.0),
    Channel.WEBHOOK: (0.70, 0.0),
}
UNREACHABLE = frozenset({"+1-555-0000"})
"""A phone number that does not exist: every SMS to it fails permanently."""

TRIGGERS: tuple[Any, ...] = (
    UserRegistered("ada", "Ada", "ada@example.com"),
    UserRegistered("bob", "Bob", "bob@example.com"),
    OrderPlaced("o-1", "ada", "ada@example.com", "+1-555-0101", "ada-phone", D("42.00")),
    OrderPlaced("o-2", "bob", "bob@example.com", "+1-555-0000", "bob-tablet", D("7.50")),
    PaymentReceived("p-1", "ada", "ada@example.com", "https://shop.example/hooks", D("42.00")),
)


class VirtualClock:
    """Time that moves only when the demo moves it."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def build_channels(seed: int, clock: VirtualClock) -> dict[str, SimulatedChannel]:
    """The four simulated channels, each with its own seeded randomness."""
    return {
        str(channel): SimulatedChannel(
            channel,
            failure_rate=rate,
            permanent_rate=permanent,
            unreachable=UNREACHABLE if channel is Channel.SMS else frozenset(),
            rng=random.Random(f"{seed}:{channel}"),
            clock=clock,
        )
        for channel, (rate, permanent) in FAILURE_RATES.items()
    }


def _stream_of(trigger: Any) -> str:
    kind = type(trigger).__name__
    key = getattr(trigger, "user_id", None) if kind == "UserRegistered" else None
    return f"{kind}-{key or getattr(trigger, 'order_id', None) or trigger.payment_id}"


class _Printer:
    """Prints each notification event as it is stored, at its virtual time."""

    def __init__(self, store: EventStore, out: TextIO) -> None:
        self.store = store
        self.out = out
        self.position = 0

    def catch_up(self) -> None:
        for recorded in self.store.read_all(self.position):
            self.position = recorded.position
            line = self._line(recorded.stream, recorded.event)
            if line:
                print(line, file=self.out)

    def _line(self, stream: str, event: Any) -> str | None:
        def at(moment: datetime) -> str:
            return f"[t+{(moment - START).total_seconds():6.1f}s] {stream:<20}"

        if isinstance(event, NotificationRequested):
            what = f"{event.subject!r} to {event.recipient}"
            return f"{at(event.requested_at)} requested by {event.trigger}: {what}"
        if isinstance(event, NotificationFailed):
            kind = "permanent" if event.permanent else "transient"
            return f"{at(event.failed_at)} attempt {event.attempt} failed ({kind}): {event.error}"
        if isinstance(event, NotificationRetrying):
            return (
                f"{at(event.retry_at - timedelta(seconds=event.delay_seconds))} retrying: attempt "
                f"{event.next_attempt} after a {event.delay_seconds:g} s backoff"
            )
        if isinstance(event, NotificationSent):
            return f"{at(event.sent_at)} SENT on attempt {event.attempt} (receipt {event.receipt_id})"
        if isinstance(event, NotificationMovedToDeadLetter):
            return f"{at(event.moved_at)} MOVED TO DEAD LETTER after {event.attempts} attempt(s)"
        return None


def run_demo(seed: int = 7, retry: RetryConfig | None = None, out: TextIO = sys.stdout) -> int:
    """Publish the triggers, run the notification sagas in virtual time, report; the exit status."""
    retry = retry or RetryConfig()
    clock = VirtualClock()
    store = InMemoryEventStore(serializer=notifications_serializer())
    channels = build_channels(seed, clock)
    sagas = notifiers(retry)
    runner = SagaRunner(
        store,
        sagas,
        NotificationHandlers(channels),
        InMemoryCheckpointStore(),
        clock=clock,
        name="notifications",
    )
    say = lambda text="": print(text, file=out)  # noqa: E731
    say(f"orchestrix notifications demo (seed {seed}), virtual time from {START:%Y-%m-%d %H:%M} UTC")
    say(
        f"retry: {retry.max_attempts} attempts, backoff {retry.initial_delay:g} s "
        f"x{retry.backoff_multiplier:g} "
        f"(at most {retry.max_delay:g} s); failure rates: "
        + ", ".join(f"{c} {int(rate * 100)}%" for c, (rate, _) in FAILURE_RATES.items())
        + f"; {sorted(UNREACHABLE)[0]} does not exist"
    )
    say()
    for trigger in TRIGGERS:
        store.append(_stream_of(trigger), [trigger])
    printer = _Printer(store, out)
    while True:
        runner.run_until_idle()
        printer.catch_up()
        pending = runner.deadlines()
        if not pending:
            break
        clock.now = max(clock.now, pending[0].due_at)  # jump to the next retry: no real waiting
    return _report(store, runner, channels, sagas, clock, say)


def _report(
    store: EventStore,
    runner: SagaRunner,
    channels: dict[str, SimulatedChannel],
    sagas: Sequence[type[NotificationSaga]],
    clock: VirtualClock,
    say: Any,
) -> int:
    everything = notifications(store, sagas, runner.repository)
    say()
    say("== Notifications")
    for saga in everything:
        detail = (
            f"receipt {saga.receipt_id}" if saga.receipt_id else saga.dead_letter_reason or saga.last_error
        )
        say(f"  {saga.stream:<20} {saga.state:<12} {saga.attempts} attempt(s)  {detail}")
    dead = [s for s in everything if s.state == "DEAD_LETTER"]
    say()
    say(f"== Dead letter queue ({len(dead)})")
    for saga in dead:
        say(f"  {saga.stream:<20} to {saga.recipient}: {saga.dead_letter_reason}")
    say()
    say("== Channels")
    for name, channel in channels.items():
        say(f"  {name:<8} {len(channel.attempts):>2} attempts, {len(channel.deliveries):>2} delivered")
    statuses = Counter(s.state for s in everything)
    twice = [
        k
        for k, n in Counter(d.idempotency_key for c in channels.values() for d in c.deliveries).items()
        if n > 1
    ]
    unfinished = [s.stream for s in everything if s.state not in ("SENT", "DEAD_LETTER")]
    say()
    say(
        f"{len(everything)} notifications: "
        + ", ".join(f"{n} {state}" for state, n in sorted(statuses.items()))
        + f"; virtual time elapsed {(clock.now - START).total_seconds():g} s"
    )
    if unfinished or twice:
        for stream in unfinished:
            say(f"VIOLATED: {stream} did not finish")
        for key in twice:
            say(f"VIOLATED: {key} delivered twice")
        return 1
    say("OK: every notification ended SENT or DEAD_LETTER, and none was delivered twice")
    return 0


def notifications(
    store: EventStore, sagas: Sequence[type[NotificationSaga]], repository: AggregateRepository
) -> list[NotificationSaga]:
    """Every notification in the store (found by its NotificationRequested), by stream name."""
    by_category = {cls.category: cls for cls in sagas}
    found = []
    for recorded in store.read_all(0):
        if isinstance(recorded.event, NotificationRequested):
            saga_id = recorded.event.notification_id
            cls = by_category[recorded.stream[: -len(saga_id) - 1]]
            found.append(repository.load(cls, saga_id))
    return sorted(found, key=lambda saga: saga.stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m bases.orchestrix.notifications_demo.main",
        description=(__doc__ or "").split("\n")[0],
        epilog="It keeps nothing: every run starts from an empty in-memory store, in virtual time.",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the channels' failures (default: 7)")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts per notification (default: 3)")
    parser.add_argument(
        "--initial-delay", type=float, default=1.0, help="first backoff, seconds (default: 1)"
    )
    parser.add_argument(
        "--backoff-multiplier", type=float, default=2.0, help="backoff growth per attempt (default: 2)"
    )
    parser.add_argument(
        "--max-delay", type=float, default=60.0, help="longest backoff, seconds (default: 60)"
    )
    args = parser.parse_args(argv)
    try:
        retry = RetryConfig(args.max_attempts, args.initial_delay, args.backoff_multiplier, args.max_delay)
    except ValueError as exc:
        parser.error(str(exc))
    return run_demo(args.seed, retry)


if __name__ == "__main__":
    sys.exit(main())
