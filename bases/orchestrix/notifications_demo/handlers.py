"""Simulated delivery channels, and the command handler that hands a notification to its channel.

A :class:`SimulatedChannel` stands for an email provider, an SMS gateway, a push service or a
webhook endpoint: it fails at a configurable rate, some failures transient (a timeout, a rate
limit) and some permanent (an invalid address), and it honours idempotency keys, as real
providers do: a send repeated with a key it has delivered returns the first receipt and
delivers nothing again. So a notification whose send is repeated after a crash (the channel
delivered, the process died before recording it) still reaches its recipient once.

Randomness comes from a seeded ``random.Random`` and time from the clock handed in, so a run
(and a test) can be replayed exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs

from bases.orchestrix.notifications_demo.models import Channel, Receipt, SendNotification
from orchestrix.core.errors import DomainError, UnknownCommandError

__all__ = [
    "ChannelError",
    "ChannelUnavailable",
    "Delivery",
    "InvalidRecipient",
    "NotificationHandlers",
    "SimulatedChannel",
]


class ChannelError(Exception):
    """A channel did not deliver."""


class ChannelUnavailable(ChannelError):
    """A transient failure (timeout, rate limit, 503): worth another attempt later."""


class InvalidRecipient(ChannelError, DomainError):
    """A permanent failure: this recipient can never be reached on this channel."""


@attrs.frozen
class Delivery:
    """One message a channel really delivered."""

    idempotency_key: str
    recipient: str
    subject: str
    delivered_at: datetime
    receipt_id: str


class SimulatedChannel:
    """A flaky channel: ``failure_rate`` of attempts fail, ``permanent_rate`` of those permanently.

    Recipients listed in ``unreachable`` always fail permanently. ``attempts`` records every call
    (key, time), ``deliveries`` every real delivery.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        failure_rate: float,
        permanent_rate: float = 0.0,
        unreachable: frozenset[str] = frozenset(),
        rng: random.Random,
        clock: Callable[[], datetime],
        honours_keys: bool = True,
    ) -> None:
        for name, rate in (("failure_rate", failure_rate), ("permanent_rate", permanent_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        self.channel = channel
        self.failure_rate = failure_rate
        self.permanent_rate = permanent_rate
        self.unreachable = unreachable
        self.rng = rng
        self.clock = clock
        self.honours_keys = honours_keys
        self.attempts: list[tuple[str, datetime]] = []
        self.deliveries: list[Delivery] = []
        self._by_key: dict[str, Delivery] = {}

    def send(self, key: str, recipient: str, subject: str) -> Receipt:
        """Deliver once per key, or raise ChannelUnavailable (transient) / InvalidRecipient (permanent)."""
        now = self.clock()
        self.attempts.append((key, now))
        done = self._by_key.get(key) if self.honours_keys else None
        if done is not None:
            return Receipt(done.receipt_id, delivered_now=False)
        if recipient in self.unreachable:
            raise InvalidRecipient(f"{self.channel}: {recipient!r} does not exist")
        if self.rng.random() < self.failure_rate:
            if self.rng.random() < self.permanent_rate:
                raise InvalidRecipient(f"{self.channel}: {recipient!r} refused the message")
            raise ChannelUnavailable(f"{self.channel}: timed out")
        delivery = Delivery(key, recipient, subject, now, f"{self.channel}-{len(self.deliveries) + 1:04}")
        self.deliveries.append(delivery)
        self._by_key[key] = delivery
        return Receipt(delivery.receipt_id, delivered_now=True)


class NotificationHandlers:
    """Executes the command notifications send: hands each to its channel with its idempotency key."""

    def __init__(self, channels: Mapping[str, SimulatedChannel]) -> None:
        self.channels = dict(channels)

    def handle(self, command: Any) -> Receipt:
        """Send ``command`` (a SendNotification) through its channel."""
        if not isinstance(command, SendNotification):
            raise UnknownCommandError(type(command), [SendNotification])
        channel = self.channels.get(command.channel)
        if channel is None:
            raise InvalidRecipient(f"no channel {command.channel!r} is configured")
        return channel.send(command.idempotency_key, command.recipient, command.subject)

    async def handle_async(self, command: Any) -> Receipt:
        """Asyncio form of :meth:`handle` (the simulated channels answer at once)."""
        return self.handle(command)
