"""TransferSaga: move money between two accounts; finish, or compensate, exactly once in effect.

The transfer's stream ``transfer-<transfer id>`` is the saga's state. It begins with
``TransferInitiated`` (stored by ``BankingCommandHandlers.transfer_money`` before anything else)
and goes on::

    TransferInitiated ── debit source (WithdrawMoney, key <id>:debit)
        ├─ refused (insufficient funds, suspended, closed, unknown) → TransferFailed
        └─ TransferDebited ── credit destination (DepositMoney, key <id>:credit)
            ├─ done → settle source (SettleTransfer) → TransferCompleted
            └─ refused (suspended, closed, unknown) → TransferCreditFailed
                 ── re-credit source (DepositMoney, key <id>:reverse) → TransferReversed → TransferFailed

Each decision is stored before the command that follows it, and each command carries the
transfer's deterministic idempotency key, which an account applies once: a step run again after
a crash or a redelivered event repeats its commands and gets the original outcomes back.

The reversal is accepted even if the source was suspended meanwhile (the account recognises a
reversal of its own open transfer debit). The source cannot be *closed* meanwhile: an account
that holds an open transfer debit refuses ``CloseAccount`` (``AccountHasTransfersInFlight``)
until the transfer completes (``SettleTransfer``) or is reversed. Should a reversal be refused
anyway, the saga records ``SagaStuck``: the money stays visibly held by the transfer, listed by
``SagaRunner.stuck()``, until a retry succeeds.

A slow destination: with ``credit_timeout`` set (see :meth:`TransferSaga.configured`), the debit
schedules the durable deadline ``credit-timeout``. If the transfer is still waiting for its
credit when it fires (the destination kept failing with a transient error, retried under the
saga's ``retry_policy``), the saga makes one last credit attempt with the same key (a credit
the destination did apply is found that way and completes the transfer) and otherwise records
``TransferCreditFailed`` and compensates, as for a refused credit. A transfer that completes or
fails first cancels the deadline.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from bases.orchestrix.banking_demo.models import (
    DepositMoney,
    SettleTransfer,
    Transaction,
    TransferCompleted,
    TransferCreditFailed,
    TransferDebited,
    TransferFailed,
    TransferInitiated,
    TransferMoney,
    TransferReversed,
    TransferStatus,
    WithdrawMoney,
)
from orchestrix.core.errors import DomainError
from orchestrix.core.eventsourcing.aggregate import applies
from orchestrix.core.execution.deadlines import DeadlineFired, on_deadline
from orchestrix.core.execution.retry import RetryPolicy
from orchestrix.core.execution.saga import Saga, SagaStep, handles

__all__ = ["TransferSaga"]


def _now() -> datetime:
    return datetime.now(UTC)


class TransferSaga(Saga):
    """One transfer: its state, rebuilt from its own stream, and the steps that move it on."""

    category = "transfer"
    correlation_field = "transfer_id"
    terminal_events = (TransferCompleted, TransferFailed)

    credit_timeout: ClassVar[timedelta | None] = None
    """How long the credit may take before the transfer is compensated (None: no limit)."""

    @classmethod
    def configured(
        cls, *, credit_timeout: timedelta | None = None, retry_policy: RetryPolicy | None = None
    ) -> type[TransferSaga]:
        """The saga class to hand a runner: transfers compensated once their credit has taken
        longer than ``credit_timeout``, failed steps retried under ``retry_policy``."""
        if credit_timeout is not None and (
            not isinstance(credit_timeout, timedelta) or credit_timeout <= timedelta(0)
        ):
            raise ValueError(f"credit_timeout must be a positive timedelta, not {credit_timeout!r}")
        attributes = {
            "category": cls.category,
            "credit_timeout": credit_timeout,
            "retry_policy": retry_policy,
            "__module__": cls.__module__,
            "__doc__": cls.__doc__,
        }
        return type(cls.__name__, (cls,), attributes)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.status: TransferStatus | None = None
        self.from_account_id = ""
        self.to_account_id = ""
        self.amount = Decimal("0")
        self.description = ""
        self.initiated_at: datetime | None = None
        self.failure_reason: str | None = None
        self.reversed = False

    @classmethod
    def initiate(cls, command: TransferMoney) -> TransferSaga:
        """A new transfer holding its ``TransferInitiated`` event (the command is already validated)."""
        saga = cls(command.transfer_id)
        saga.raise_event(
            TransferInitiated(
                command.transfer_id,
                command.from_account_id,
                command.to_account_id,
                command.amount,
                command.description,
                _now(),
            )
        )
        return saga

    @property
    def state(self) -> str:
        """The transfer status (``stuck`` shows separately as ``stuck_reason``)."""
        return str(self.status) if self.status is not None else "NEW"

    @property
    def held(self) -> Decimal:
        """Money that left the source and reached neither the destination nor the source again."""
        if self.status in (TransferStatus.DEBITED, TransferStatus.COMPENSATING):
            return self.amount
        return Decimal("0")

    def differences(self, command: TransferMoney) -> list[str]:
        """How ``command`` differs from the transfer this saga holds (empty: an identical repeat)."""
        mine = (self.from_account_id, self.to_account_id, self.amount, self.description)
        theirs = (command.from_account_id, command.to_account_id, command.amount, command.description)
        names = ("from_account_id", "to_account_id", "amount", "description")
        return [
            f"{name} {a!r} (asked: {b!r})" for name, a, b in zip(names, mine, theirs, strict=True) if a != b
        ]

    # -- steps ----------------------------------------------------------------------------

    @handles(TransferInitiated, start=True)
    @handles(TransferDebited, TransferCreditFailed)
    def advance(self, event: Any = None) -> SagaStep:
        """Take the transfer as far as it can go from its current state."""
        while not self.completed and self.stuck_reason is None:
            if self.status is TransferStatus.INITIATED:
                yield from self._debit()
            elif self.status is TransferStatus.DEBITED:
                yield from self._credit()
            elif self.status is TransferStatus.COMPENSATING:
                yield from self._reverse()
            else:
                return

    def resume(self) -> SagaStep:
        """After a retry, continue from the current state."""
        return self.advance()

    def _debit(self) -> SagaStep:
        assert self.id is not None
        try:
            debit: Transaction = yield WithdrawMoney(
                self.from_account_id,
                self.amount,
                f"Transfer {self.id} to {self.to_account_id}",
                self.id,
                self.key("debit"),
            )
        except DomainError as refused:
            self.raise_event(TransferFailed(self.id, f"debit refused: {refused}", _now()))
            return
        self.raise_event(
            TransferDebited(self.id, self.from_account_id, self.amount, debit.transaction_id, _now())
        )
        if self.credit_timeout is not None:
            # Saved with TransferDebited, before the credit is sent: the limit holds across crashes.
            self.schedule_deadline("credit-timeout", after=self.credit_timeout)

    @on_deadline("credit-timeout")
    def credit_timed_out(self, deadline: DeadlineFired) -> SagaStep:
        """The credit has not succeeded in time: one last attempt with its key, else compensate."""
        if self.status is not TransferStatus.DEBITED or self.id is None:
            return
        try:
            credit: Transaction = yield DepositMoney(
                self.to_account_id,
                self.amount,
                f"Transfer {self.id} from {self.from_account_id}",
                self.id,
                self.key("credit"),
            )
        except DomainError as refused:
            reason = f"credit refused: {refused}"
        except Exception as unavailable:  # the destination still does not answer: give up on it
            limit = _seconds(self.credit_timeout) if self.credit_timeout is not None else "its time"
            reason = f"credit not confirmed within {limit} ({type(unavailable).__name__}: {unavailable})"
        else:
            yield SettleTransfer(self.from_account_id, self.id)
            self.raise_event(
                TransferCompleted(self.id, self.to_account_id, self.amount, credit.transaction_id, _now())
            )
            return
        self.raise_event(TransferCreditFailed(self.id, self.to_account_id, reason, _now()))
        yield from self.advance()

    def _credit(self) -> SagaStep:
        assert self.id is not None
        try:
            credit: Transaction = yield DepositMoney(
                self.to_account_id,
                self.amount,
                f"Transfer {self.id} from {self.from_account_id}",
                self.id,
                self.key("credit"),
            )
        except DomainError as refused:
            self.raise_event(
                TransferCreditFailed(self.id, self.to_account_id, f"credit refused: {refused}", _now())
            )
            return
        yield SettleTransfer(self.from_account_id, self.id)
        self.raise_event(
            TransferCompleted(self.id, self.to_account_id, self.amount, credit.transaction_id, _now())
        )

    def _reverse(self) -> SagaStep:
        assert self.id is not None
        reason = self.failure_reason or "credit refused"
        try:
            reversal: Transaction = yield DepositMoney(
                self.from_account_id,
                self.amount,
                f"Reversal of transfer {self.id} ({reason})",
                self.id,
                self.key("reverse"),
            )
        except DomainError as refused:
            self.mark_stuck(f"reversal to {self.from_account_id!r} refused: {refused}")
            return
        self.raise_event(
            TransferReversed(
                self.id, self.from_account_id, self.amount, reason, reversal.transaction_id, _now()
            )
        )
        self.raise_event(TransferFailed(self.id, reason, _now()))

    # -- state ----------------------------------------------------------------------------

    @applies(TransferInitiated)
    def _initiated(self, event: TransferInitiated) -> None:
        self.id = event.transfer_id
        self.status = TransferStatus.INITIATED
        self.from_account_id = event.from_account_id
        self.to_account_id = event.to_account_id
        self.amount = event.amount
        self.description = event.description
        self.initiated_at = event.occurred_at

    @applies(TransferDebited)
    def _debited(self, event: TransferDebited) -> None:
        self.status = TransferStatus.DEBITED

    @applies(TransferCreditFailed)
    def _credit_failed(self, event: TransferCreditFailed) -> None:
        self.status = TransferStatus.COMPENSATING
        self.failure_reason = event.reason

    @applies(TransferReversed)
    def _reversed(self, event: TransferReversed) -> None:
        self.reversed = True

    @applies(TransferCompleted)
    def _completed(self, event: TransferCompleted) -> None:
        self.status = TransferStatus.COMPLETED

    @applies(TransferFailed)
    def _failed(self, event: TransferFailed) -> None:
        self.status = TransferStatus.FAILED
        self.failure_reason = event.reason


def _seconds(waited: timedelta) -> str:
    seconds = waited.total_seconds()
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"
