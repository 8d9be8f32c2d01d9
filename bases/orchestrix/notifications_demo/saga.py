"""A notification is a saga: one message on one channel, delivered, or retried, or dead-lettered.

Each channel has its saga class (``email``, ``sms``, ``push``, ``webhook``: the stream prefix),
started by the domain events that call for a message on that channel; the saga id names the
trigger (``welcome-<user>``, ``order-<order>``, ``payment-<payment>``), so a trigger redelivered
finds its notification instead of requesting another.

Every attempt sends :class:`SendNotification` with the same idempotency key
(``<channel>:<id>:send``).
A transient failure records ``NotificationFailed`` and ``NotificationRetrying`` and schedules a
durable ``retry`` deadline after the backoff of :class:`RetryConfig`; the deadline's handler
makes the next attempt. A permanent failure, or the last attempt failing, records
``NotificationMovedToDeadLetter``: the dead letter queue is the set of notifications in that
state, listed with their reason. The saga saves each decision before it sends, and decides from
its state, so a redelivered trigger or deadline never makes an attempt early or twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from bases.orchestrix.notifications_demo.handlers import ChannelError, ChannelUnavailable
from bases.orchestrix.notifications_demo.models import (
    Channel,
    NotificationFailed,
    NotificationMovedToDeadLetter,
    NotificationRequested,
    NotificationRetrying,
    NotificationSent,
    NotificationStatus,
    OrderPlaced,
    PaymentReceived,
    Receipt,
    RetryConfig,
    SendNotification,
    UserRegistered,
)
from orchestrix.core.eventsourcing.aggregate import applies
from orchestrix.core.execution.deadlines import DeadlineFired, on_deadline
from orchestrix.core.execution.saga import Saga, SagaStep, handles

__all__ = [
    "EmailNotification",
    "NotificationSaga",
    "PushNotification",
    "SmsNotification",
    "WebhookNotification",
    "notifiers",
]

Status = NotificationStatus


class NotificationSaga(Saga):
    """One notification on one channel; subclasses name the channel and their triggers."""

    channel: ClassVar[Channel]
    retry_config: ClassVar[RetryConfig] = RetryConfig()
    correlation_field = "notification_id"
    terminal_events = (NotificationSent, NotificationMovedToDeadLetter)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.status: NotificationStatus | None = None
        self.recipient = ""
        self.subject = ""
        self.body = ""
        self.trigger = ""
        self.attempts = 0
        self.receipt_id: str | None = None
        self.last_error: str | None = None
        self.dead_letter_reason: str | None = None
        self.next_attempt_at: Any = None

    @property
    def idempotency_key(self) -> str:
        """The key of every attempt of this notification: ``<channel>:<id>:send``."""
        return f"{self.channel}:{self.key('send')}"

    @property
    def state(self) -> str:
        """The lifecycle status (PENDING before the request is recorded)."""
        return str(self.status or Status.PENDING)

    # -- steps ----------------------------------------------------------------------------

    def request(self, trigger: Any, recipient: str, subject: str, body: str) -> SagaStep:
        """Record the request (once), then make the first attempt (once)."""
        if self.status is None:
            self.raise_event(
                NotificationRequested(
                    self.id or "",
                    str(self.channel),
                    recipient,
                    subject,
                    body,
                    type(trigger).__name__,
                    self.now(),
                )
            )
        if self.status is Status.PENDING:
            yield from self._attempt()

    @on_deadline("retry")
    def retry_due(self, deadline: DeadlineFired) -> SagaStep:
        """The backoff has passed: the next attempt."""
        if self.status is Status.SENDING and self.now() >= self.next_attempt_at:
            yield from self._attempt()

    def _attempt(self) -> SagaStep:
        attempt = self.attempts + 1
        try:
            receipt: Receipt = yield SendNotification(
                self.id or "",
                str(self.channel),
                self.recipient,
                self.subject,
                self.body,
                attempt,
                self.idempotency_key,
            )
        except ChannelError as failure:
            self._failed(attempt, failure)
            return
        self.raise_event(NotificationSent(self.id or "", attempt, receipt.receipt_id, self.now()))

    def _failed(self, attempt: int, failure: ChannelError) -> None:
        policy = self.retry_config.policy((ChannelUnavailable,))
        permanent = not policy.is_transient(failure)
        now = self.now()
        self.raise_event(NotificationFailed(self.id or "", attempt, str(failure), permanent, now))
        if policy.retries(failure, attempt):
            delay = policy.delay(attempt)
            retry_at = now + delay
            self.raise_event(
                NotificationRetrying(self.id or "", attempt + 1, delay.total_seconds(), retry_at)
            )
            self.schedule_deadline("retry", at=retry_at)
            return
        why = "permanent failure" if permanent else f"gave up after {attempt} attempts"
        self.raise_event(NotificationMovedToDeadLetter(self.id or "", attempt, f"{why}: {failure}", now))

    # -- state ----------------------------------------------------------------------------

    @applies(NotificationRequested)
    def _requested(self, event: NotificationRequested) -> None:
        self.status = Status.PENDING
        self.recipient, self.subject, self.body = event.recipient, event.subject, event.body
        self.trigger = event.trigger

    @applies(NotificationFailed)
    def _failed_applied(self, event: NotificationFailed) -> None:
        self.status = Status.FAILED
        self.attempts = event.attempt
        self.last_error = event.error

    @applies(NotificationRetrying)
    def _retrying(self, event: NotificationRetrying) -> None:
        self.status = Status.SENDING
        self.next_attempt_at = event.retry_at

    @applies(NotificationSent)
    def _sent(self, event: NotificationSent) -> None:
        self.status = Status.SENT
        self.attempts = event.attempt
        self.receipt_id = event.receipt_id

    @applies(NotificationMovedToDeadLetter)
    def _dead(self, event: NotificationMovedToDeadLetter) -> None:
        self.status = Status.DEAD_LETTER
        self.attempts = event.attempts
        self.dead_letter_reason = event.reason


def _id(prefix: str, field: str) -> Callable[[Any], str]:
    return lambda event: f"{prefix}-{getattr(event, field)}"


class EmailNotification(NotificationSaga):
    """Emails: a welcome, an order confirmation, a payment receipt."""

    category = "email"
    channel = Channel.EMAIL

    @handles(UserRegistered, start=True, correlate=_id("welcome", "user_id"))
    def on_registered(self, event: UserRegistered) -> SagaStep:
        return self.request(event, event.email, "Welcome", f"Hello {event.name}, welcome aboard.")

    @handles(OrderPlaced, start=True, correlate=_id("order", "order_id"))
    def on_order(self, event: OrderPlaced) -> SagaStep:
        return self.request(
            event, event.email, f"Order {event.order_id}", f"We got your order: {event.total}."
        )

    @handles(PaymentReceived, start=True, correlate=_id("payment", "payment_id"))
    def on_payment(self, event: PaymentReceived) -> SagaStep:
        return self.request(event, event.email, "Receipt", f"Payment {event.payment_id}: {event.amount}.")


class SmsNotification(NotificationSaga):
    """Text messages: the order confirmation."""

    category = "sms"
    channel = Channel.SMS

    @handles(OrderPlaced, start=True, correlate=_id("order", "order_id"))
    def on_order(self, event: OrderPlaced) -> SagaStep:
        return self.request(event, event.phone, "Order", f"Order {event.order_id} confirmed.")


class PushNotification(NotificationSaga):
    """Push notifications: the order confirmation."""

    category = "push"
    channel = Channel.PUSH

    @handles(OrderPlaced, start=True, correlate=_id("order", "order_id"))
    def on_order(self, event: OrderPlaced) -> SagaStep:
        return self.request(event, event.device, "Order", f"Order {event.order_id} is on its way.")


class WebhookNotification(NotificationSaga):
    """Webhooks: the payment event, posted to the merchant's endpoint."""

    category = "webhook"
    channel = Channel.WEBHOOK

    @handles(PaymentReceived, start=True, correlate=_id("payment", "payment_id"))
    def on_payment(self, event: PaymentReceived) -> SagaStep:
        return self.request(
            event, event.webhook_url, "payment.received", f"{event.payment_id} {event.amount}"
        )


NOTIFIERS: tuple[type[NotificationSaga], ...] = (
    EmailNotification,
    SmsNotification,
    PushNotification,
    WebhookNotification,
)


def notifiers(retry: RetryConfig | None = None) -> tuple[type[NotificationSaga], ...]:
    """The saga classes to run, each delivering with ``retry`` (default: ``RetryConfig()``)."""
    if retry is None or retry == RetryConfig():
        return NOTIFIERS
    return tuple(
        type(
            cls.__name__,
            (cls,),
            {"category": cls.category, "retry_config": retry, "__module__": cls.__module__},
        )
        for cls in NOTIFIERS
    )
