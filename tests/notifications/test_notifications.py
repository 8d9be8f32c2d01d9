"""Notifications: delivered, retried after their backoff, or dead-lettered; once each, across crashes."""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bases.orchestrix.notifications_demo.handlers import (
    ChannelUnavailable,
    InvalidRecipient,
    NotificationHandlers,
    SimulatedChannel,
)
from bases.orchestrix.notifications_demo.main import START, VirtualClock
from bases.orchestrix.notifications_demo.models import (
    Channel,
    OrderPlaced,
    PaymentReceived,
    RetryConfig,
    SendNotification,
    UserRegistered,
)
from orchestrix.core.errors import InvalidRetryPolicyError, UnknownCommandError
from orchestrix.core.execution import SagaRunner
from tests.core.test_saga_support import CrashingStore, SimulatedCrash
from tests.notifications.support import World

ROOT = Path(__file__).resolve().parents[2]
D = Decimal


def register(world: World, user: str, email: str | None = None) -> None:
    world.store.append(
        f"UserRegistered-{user}", [UserRegistered(user, user.title(), email or f"{user}@x.test")]
    )


def order(world: World, order_id: str, phone: str = "+1-555-0101") -> None:
    event = OrderPlaced(order_id, "ada", "ada@x.test", phone, "ada-phone", D("9.99"))
    world.store.append(f"OrderPlaced-{order_id}", [event])


def types(world: World, stream: str) -> list[str]:
    return [r.event_type for r in world.store.read_stream(stream)]


class Failing:
    """Channel handlers that fail every send of the first ``times`` attempts with ``error``."""

    def __init__(self, inner: NotificationHandlers, times: int, error: Exception) -> None:
        self.inner, self.left, self.error = inner, times, error

    def handle(self, command: SendNotification) -> object:
        if self.left > 0:
            self.left -= 1
            raise self.error
        return self.inner.handle(command)

    async def handle_async(self, command: SendNotification) -> object:
        return self.handle(command)


# -- the retry configuration ------------------------------------------------------------------


def test_retry_config_defaults_are_the_documented_ones() -> None:
    config = RetryConfig()
    assert (config.max_attempts, config.initial_delay, config.backoff_multiplier, config.max_delay) == (
        3,
        1.0,
        2.0,
        60.0,
    )
    assert [config.backoff(n) for n in (1, 2, 3, 7, 8)] == [1.0, 2.0, 4.0, 60.0, 60.0]


@pytest.mark.parametrize(
    "fields", [{"max_attempts": 0}, {"initial_delay": -1.0}, {"max_delay": float("inf")}]
)
def test_a_retry_config_that_cannot_work_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises((InvalidRetryPolicyError, ValueError)):
        RetryConfig(**fields)  # type: ignore[arg-type]


# -- the channels -------------------------------------------------------------------------------


def test_a_channel_honouring_keys_delivers_a_repeated_send_once() -> None:
    clock = VirtualClock()
    channel = SimulatedChannel(Channel.EMAIL, failure_rate=0.0, rng=random.Random(1), clock=clock)
    first = channel.send("k-1", "ada@x.test", "Hi")
    again = channel.send("k-1", "ada@x.test", "Hi")
    assert first.delivered_now and not again.delivered_now and again.receipt_id == first.receipt_id
    assert len(channel.deliveries) == 1 and len(channel.attempts) == 2


def test_channels_fail_transiently_or_permanently_as_configured() -> None:
    clock = VirtualClock()
    flaky = SimulatedChannel(Channel.SMS, failure_rate=1.0, rng=random.Random(1), clock=clock)
    with pytest.raises(ChannelUnavailable):
        flaky.send("k", "+1", "x")
    broken = SimulatedChannel(
        Channel.SMS, failure_rate=1.0, permanent_rate=1.0, rng=random.Random(1), clock=clock
    )
    with pytest.raises(InvalidRecipient):
        broken.send("k", "+1", "x")
    with pytest.raises(ValueError, match="failure_rate"):
        SimulatedChannel(Channel.SMS, failure_rate=1.5, rng=random.Random(1), clock=clock)


def test_the_handlers_refuse_a_command_they_do_not_know() -> None:
    world = World()
    with pytest.raises(UnknownCommandError):
        world.handlers.handle(UserRegistered("ada", "Ada", "ada@x.test"))


# -- the lifecycle ------------------------------------------------------------------------------


def test_a_notification_is_requested_and_sent() -> None:
    world = World()
    register(world, "ada")
    world.drive(world.runner())
    [saga] = world.notifications()
    assert (saga.stream, saga.state, saga.attempts) == ("email-welcome-ada", "SENT", 1)
    assert types(world, saga.stream) == ["NotificationRequested", "NotificationSent"]
    [delivery] = world.channels["email"].deliveries
    assert delivery.idempotency_key == "email:welcome-ada:send"


def test_a_transient_failure_is_retried_after_its_backoff() -> None:
    world = World()
    register(world, "ada")
    failing = Failing(world.handlers, 2, ChannelUnavailable("email: timed out"))
    runner = SagaRunner(world.store, world.sagas, failing, world.checkpoints, clock=world.clock)
    runner.run_until_idle()
    [saga] = world.notifications()
    assert saga.state == "SENDING" and saga.next_attempt_at == START + timedelta(seconds=1)
    world.clock.now += timedelta(seconds=0.5)
    runner.run_until_idle()
    assert world.notifications()[0].attempts == 1  # not before the backoff
    world.drive(runner)
    [saga] = world.notifications()
    assert (saga.state, saga.attempts) == ("SENT", 3)
    assert world.attempt_times(saga) == {
        1: START,
        2: START + timedelta(seconds=1),
        3: START + timedelta(seconds=3),
    }
    assert types(world, saga.stream) == [
        "NotificationRequested",
        "NotificationFailed",
        "NotificationRetrying",
        "DeadlineScheduled",
        "DeadlineFired",
        "NotificationFailed",
        "NotificationRetrying",
        "DeadlineScheduled",
        "DeadlineFired",
        "NotificationSent",
    ]


def test_retries_exhausted_move_the_notification_to_the_dead_letter_queue() -> None:
    world = World({Channel.EMAIL: 1.0})
    register(world, "ada")
    world.drive(world.runner())
    [saga] = world.notifications()
    assert (saga.state, saga.attempts) == ("DEAD_LETTER", 3)
    assert saga.dead_letter_reason == "gave up after 3 attempts: email: timed out"
    assert world.channels["email"].deliveries == []
    assert world.waited_at_least_the_backoff(saga)


def test_a_permanent_failure_is_dead_lettered_at_once() -> None:
    world = World()
    register(world, "ada", email="nobody")
    world.drive(world.runner())
    [saga] = world.notifications()
    assert (saga.state, saga.attempts) == ("DEAD_LETTER", 1)
    assert saga.dead_letter_reason == "permanent failure: email: 'nobody' does not exist"


def test_one_trigger_notifies_on_each_of_its_channels() -> None:
    world = World()
    order(world, "o-1")
    world.store.append(
        "PaymentReceived-p-1", [PaymentReceived("p-1", "ada", "ada@x.test", "https://h", D("1"))]
    )
    world.drive(world.runner())
    assert [s.stream for s in world.notifications()] == [
        "email-order-o-1",
        "email-payment-p-1",
        "push-order-o-1",
        "sms-order-o-1",
        "webhook-payment-p-1",
    ]


def test_a_redelivered_trigger_makes_no_early_attempt() -> None:
    world = World({Channel.EMAIL: 1.0})
    register(world, "ada")
    runner = world.runner()
    runner.run_until_idle()
    trigger = next(iter(world.store.read_stream("UserRegistered-ada")))
    runner.handle(trigger)  # a redelivery while the retry waits
    assert len(world.channels["email"].attempts) == 1


# -- kills and restarts -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    failure=st.sampled_from([0.0, 0.3, 0.6, 0.9]),
    permanent=st.sampled_from([0.0, 0.2]),
    users=st.integers(1, 3),
    crashes=st.lists(st.tuples(st.integers(0, 25), st.sampled_from(["before", "after"])), max_size=4),
)
def test_every_notification_ends_sent_or_dead_lettered_once_across_kills_and_restarts(
    seed: int, failure: float, permanent: float, users: int, crashes: list[tuple[int, str]]
) -> None:
    world = World({c: failure for c in Channel}, permanent=permanent, seed=seed)
    for n in range(users):
        register(world, f"u{n}")
        order(world, f"o{n}", phone="nobody" if n == 1 else "+1-555-0101")
    for crash_at, when in crashes:
        # A process that dies at its crash_at-th append (before or after it is stored), then restarts.
        dying = world.runner(CrashingStore(world.store, crash_at, when))
        with contextlib.suppress(SimulatedCrash):
            world.drive(dying)
    world.drive(world.runner())

    found = world.notifications()
    assert len(found) == users * 4
    for saga in found:
        assert saga.state in ("SENT", "DEAD_LETTER"), (saga.stream, saga.state)
        assert world.waited_at_least_the_backoff(saga), saga.stream
        assert saga.attempts <= world.retry.max_attempts
    for channel in world.channels.values():
        keys = [d.idempotency_key for d in channel.deliveries]
        assert len(keys) == len(set(keys)), "a notification was delivered twice"
    sent = {s.idempotency_key for s in found if s.state == "SENT"}
    delivered = {d.idempotency_key for c in world.channels.values() for d in c.deliveries}
    assert sent <= delivered
    # A dead-lettered notification was never delivered (else it would be SENT).
    assert not ({s.idempotency_key for s in found if s.state == "DEAD_LETTER"} & delivered)


# -- the program --------------------------------------------------------------------------------


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bases.orchestrix.notifications_demo.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_demo_runs_in_virtual_time_and_checks_its_outcome() -> None:
    result = demo()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "retrying: attempt 2 after a 1 s backoff" in out
    assert "MOVED TO DEAD LETTER" in out and "== Dead letter queue (2)" in out
    assert re.search(r"^10 notifications: 2 DEAD_LETTER, 8 SENT; virtual time elapsed \d+ s$", out, re.M)
    assert out.rstrip().endswith(
        "OK: every notification ended SENT or DEAD_LETTER, and none was delivered twice"
    )


def test_the_demo_takes_its_retry_configuration_from_the_command_line() -> None:
    result = demo("--max-attempts", "5", "--initial-delay", "0.5")
    assert result.returncode == 0, result.stderr
    assert "retry: 5 attempts, backoff 0.5 s x2 (at most 60 s)" in result.stdout
    refused = demo("--max-attempts", "0")
    assert refused.returncode == 2 and "max_attempts" in refused.stderr


def test_the_readme_shows_the_output_of_a_real_run() -> None:
    readme = (ROOT / "bases" / "orchestrix" / "notifications_demo" / "README.md").read_text()
    match = re.search(r"<!-- demo-output -->\n```text\n(.*?)```", readme, re.S)
    assert match, "README.md lost its demo output block"
    assert match.group(1) == demo().stdout
