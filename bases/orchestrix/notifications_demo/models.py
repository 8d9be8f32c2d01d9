"""Notifications: the domain events that trigger them, their lifecycle events, the send command.

Lifecycle of one notification (one saga, one channel)::

    NotificationRequested                         PENDING
      └─ attempt 1 ── delivered ─ NotificationSent        SENT
           └─ failed ─ NotificationFailed                  FAILED
                ├─ transient, attempts left ─ NotificationRetrying   SENDING (next attempt due)
                │     └─ (the retry deadline fires) ─ attempt 2 ...
                └─ permanent, or the last attempt ─ NotificationMovedToDeadLetter   DEAD_LETTER
"""

from __future__ import annotations

import enum
import math
from datetime import datetime
from decimal import Decimal

import attrs

from orchestrix.core.execution.retry import RetryPolicy
from orchestrix.core.execution.saga import SAGA_EVENTS
from orchestrix.core.messaging import Command, Event, Serializer

__all__ = [
    "DOMAIN_EVENTS",
    "NOTIFICATION_EVENTS",
    "Channel",
    "NotificationFailed",
    "NotificationMovedToDeadLetter",
    "NotificationRequested",
    "NotificationRetrying",
    "NotificationSent",
    "NotificationStatus",
    "OrderPlaced",
    "PaymentReceived",
    "Receipt",
    "RetryConfig",
    "SendNotification",
    "UserRegistered",
    "notifications_serializer",
]


class Channel(enum.StrEnum):
    """Where a notification goes."""

    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    WEBHOOK = "webhook"


class NotificationStatus(enum.StrEnum):
    """Where a notification is in its lifecycle (see the module docstring)."""

    PENDING = "PENDING"
    SENDING = "SENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    DEAD_LETTER = "DEAD_LETTER"


@attrs.frozen
class RetryConfig:
    """How a notification's delivery is retried: attempts, and an exponential backoff in seconds."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff_multiplier: float = 2.0
    max_delay: float = 60.0

    def policy(self, transient: tuple[type[BaseException], ...]) -> RetryPolicy:
        """The core retry policy with these numbers (it checks them: a bad value is refused)."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial_delay=self.initial_delay,
            backoff_multiplier=self.backoff_multiplier,
            max_delay=self.max_delay,
            transient=transient,
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        return self.policy(()).backoff(attempt)

    def __attrs_post_init__(self) -> None:
        for name in ("initial_delay", "backoff_multiplier", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"RetryConfig.{name} must be a finite number, not {value!r}")
        self.policy(())  # the core policy refuses what cannot work, naming the field


# -- the domain events that trigger notifications ---------------------------------------------


@attrs.frozen
class UserRegistered(Event):
    user_id: str
    name: str
    email: str


@attrs.frozen
class OrderPlaced(Event):
    order_id: str
    user_id: str
    email: str
    phone: str
    device: str
    total: Decimal


@attrs.frozen
class PaymentReceived(Event):
    payment_id: str
    user_id: str
    email: str
    webhook_url: str
    amount: Decimal


DOMAIN_EVENTS: tuple[type, ...] = (UserRegistered, OrderPlaced, PaymentReceived)


# -- a notification's own events --------------------------------------------------------------


@attrs.frozen
class NotificationRequested(Event):
    notification_id: str
    channel: str
    recipient: str
    subject: str
    body: str
    trigger: str
    requested_at: datetime


@attrs.frozen
class NotificationSent(Event):
    notification_id: str
    attempt: int
    receipt_id: str
    sent_at: datetime


@attrs.frozen
class NotificationFailed(Event):
    notification_id: str
    attempt: int
    error: str
    permanent: bool
    failed_at: datetime


@attrs.frozen
class NotificationRetrying(Event):
    notification_id: str
    next_attempt: int
    delay_seconds: float
    retry_at: datetime


@attrs.frozen
class NotificationMovedToDeadLetter(Event):
    notification_id: str
    attempts: int
    reason: str
    moved_at: datetime


NOTIFICATION_EVENTS: tuple[type, ...] = (
    NotificationRequested,
    NotificationSent,
    NotificationFailed,
    NotificationRetrying,
    NotificationMovedToDeadLetter,
)


# -- the command a notification sends, and what a channel answers -----------------------------


@attrs.frozen
class SendNotification(Command):
    """Deliver one notification; ``idempotency_key`` is the same for every attempt of it."""

    notification_id: str
    channel: str
    recipient: str
    subject: str
    body: str
    attempt: int
    idempotency_key: str


@attrs.frozen
class Receipt:
    """A channel's answer to a delivery: its id, and whether this call delivered (False: a repeat)."""

    receipt_id: str
    delivered_now: bool


def notifications_serializer() -> Serializer:
    """Every event this base stores, with the saga machinery's own."""
    return Serializer(types=[*DOMAIN_EVENTS, *NOTIFICATION_EVENTS, *SAGA_EVENTS])
