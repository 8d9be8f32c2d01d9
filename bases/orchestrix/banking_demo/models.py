"""Commands, events and value objects of the banking demo.

Money is always ``Decimal``: finite, with at most two decimal places. Commands are checked by
:func:`validate_amount` before anything is decided, so a bad amount never reaches an event.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import attrs

from bases.orchestrix.banking_demo.errors import InvalidAmount
from orchestrix.core.eventsourcing.keys import KEY_EVENTS
from orchestrix.core.execution.saga import SAGA_EVENTS
from orchestrix.core.messaging import Command, Event, Serializer, Upcaster, upcaster

__all__ = [
    "MAX_AMOUNT",
    "UPCASTERS",
    "AccountClosed",
    "AccountOpened",
    "AccountReactivated",
    "AccountState",
    "AccountStatus",
    "AccountSuspended",
    "CloseAccount",
    "DepositMoney",
    "MoneyDeposited",
    "MoneyWithdrawn",
    "OpenAccount",
    "ReactivateAccount",
    "SettleTransfer",
    "SuspendAccount",
    "Transaction",
    "TransactionKind",
    "TransferCompleted",
    "TransferCreditFailed",
    "TransferDebited",
    "TransferFailed",
    "TransferHoldReleased",
    "TransferInitiated",
    "TransferMoney",
    "TransferReversed",
    "TransferStatus",
    "WithdrawMoney",
    "banking_serializer",
    "money_deposited_v1_to_v2",
    "validate_amount",
]

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("999999999999.99")
"""The largest amount one command may move (just under a trillion)."""


def validate_amount(value: object, field: str = "amount", *, allow_zero: bool = False) -> Decimal:
    """Return ``value`` if it is a valid amount, or raise InvalidAmount saying what is wrong.

    The value keeps its own exponent (``Decimal("1500")`` stays ``1500``); only its precision
    is checked: at most two decimal places by value, so ``Decimal("1.50")`` and ``1.5`` pass.
    """
    if type(value) is not Decimal:
        raise InvalidAmount(field, value, f"must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise InvalidAmount(field, value, "must be finite")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidAmount(field, value, "must be zero or more" if allow_zero else "must be positive")
    if value > MAX_AMOUNT:
        raise InvalidAmount(field, value, f"must not exceed {MAX_AMOUNT}")
    try:
        cents = value.quantize(CENT)
    except InvalidOperation:
        raise InvalidAmount(field, value, "cannot be represented in cents") from None
    if cents != value:
        raise InvalidAmount(field, value, "must have at most two decimal places")
    return value + 0  # turns -0 into 0


class AccountStatus(enum.StrEnum):
    """Where an account is in its life."""

    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    CLOSED = "CLOSED"


class TransactionKind(enum.StrEnum):
    """The kind of one money movement in an account's audit trail."""

    OPENING = "opening"
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"


class TransferStatus(enum.StrEnum):
    """Where a transfer is. INITIATED, DEBITED and COMPENSATING hold money; the last two end it."""

    INITIATED = "INITIATED"
    DEBITED = "DEBITED"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


# -- commands ---------------------------------------------------------------------------------


@attrs.frozen
class OpenAccount(Command):
    """Open a new account with an opening balance (zero or more)."""

    account_id: str
    owner_name: str
    initial_balance: Decimal = Decimal("0")


@attrs.frozen
class DepositMoney(Command):
    """Add money to an account; a repeated idempotency key returns the original outcome."""

    account_id: str
    amount: Decimal
    description: str = ""
    transfer_id: str | None = None
    idempotency_key: str | None = None


@attrs.frozen
class AccountState:
    """An Account as a snapshot keeps it (its audit trail included: the keys of keyed movements
    are found in it, so a repeat after a snapshot is still answered with the original)."""

    owner_name: str
    balance: Decimal
    status: AccountStatus | None
    transactions: tuple[Transaction, ...]
    suspension_reason: str
    transfers_in_flight: dict[str, Decimal]


@attrs.frozen
class WithdrawMoney(Command):
    """Take money from an account; never below zero."""

    account_id: str
    amount: Decimal
    description: str = ""
    transfer_id: str | None = None
    idempotency_key: str | None = None


@attrs.frozen
class TransferMoney(Command):
    """Move money between two accounts; finishes or is compensated."""

    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount: Decimal
    description: str = ""


@attrs.frozen
class SettleTransfer(Command):
    """Release a completed transfer's debit on its source account (sent by the transfer saga)."""

    account_id: str
    transfer_id: str


@attrs.frozen
class SuspendAccount(Command):
    """Stop all money movements on an account."""

    account_id: str
    reason: str = ""


@attrs.frozen
class ReactivateAccount(Command):
    """Let a suspended account move money again."""

    account_id: str


@attrs.frozen
class CloseAccount(Command):
    """Close an account for good; it must be empty and hold no transfer in flight."""

    account_id: str


# -- value objects ----------------------------------------------------------------------------


@attrs.frozen
class Transaction:
    """One entry of an account's audit trail: a single money movement."""

    transaction_id: uuid.UUID
    kind: TransactionKind
    amount: Decimal
    balance_after: Decimal
    description: str
    occurred_at: datetime
    transfer_id: str | None = None
    idempotency_key: str | None = None


# -- account events ----------------------------------------------------------------------------


@attrs.frozen
class AccountOpened(Event):
    """An account was opened with its opening balance."""

    account_id: str
    owner_name: str
    initial_balance: Decimal
    transaction_id: uuid.UUID
    occurred_at: datetime


@attrs.frozen
class MoneyDeposited(Event):
    """Money was added to an account.

    Version 2 added ``currency``; deposits stored at version 1 were all in euros (see
    :func:`money_deposited_v1_to_v2`).
    """

    __schema_version__: ClassVar[int] = 2

    account_id: str
    transaction_id: uuid.UUID
    amount: Decimal
    balance_after: Decimal
    description: str
    occurred_at: datetime
    transfer_id: str | None = None
    idempotency_key: str | None = None
    currency: str = "EUR"


@upcaster("MoneyDeposited", 1)
def money_deposited_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A deposit stored before currencies existed was in euros.

    Written out, not left to the field's default: the default may change one day (a bank that
    opens in another country), while what a stored deposit meant never does.
    """
    return {**data, "currency": "EUR"}


@attrs.frozen
class MoneyWithdrawn(Event):
    """Money was taken from an account."""

    account_id: str
    transaction_id: uuid.UUID
    amount: Decimal
    balance_after: Decimal
    description: str
    occurred_at: datetime
    transfer_id: str | None = None
    idempotency_key: str | None = None


@attrs.frozen
class AccountSuspended(Event):
    """An account was suspended."""

    account_id: str
    reason: str
    occurred_at: datetime


@attrs.frozen
class AccountReactivated(Event):
    """A suspended account was reactivated."""

    account_id: str
    occurred_at: datetime


@attrs.frozen
class AccountClosed(Event):
    """An account was closed for good."""

    account_id: str
    occurred_at: datetime


@attrs.frozen
class TransferHoldReleased(Event):
    """A transfer that debited this account completed; its money is no longer held for a reversal.

    Stored as ``TransferSettled`` before it was renamed: that name is an alias of this class.
    """

    account_id: str
    transfer_id: str
    occurred_at: datetime


# -- transfer events (stored in the transfer's own stream) ----------------------------------


@attrs.frozen
class TransferInitiated(Event):
    """A transfer was accepted; the saga takes it from here."""

    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount: Decimal
    description: str
    occurred_at: datetime


@attrs.frozen
class TransferDebited(Event):
    """The source account was debited."""

    transfer_id: str
    from_account_id: str
    amount: Decimal
    transaction_id: uuid.UUID
    occurred_at: datetime


@attrs.frozen
class TransferCompleted(Event):
    """The destination account was credited; the transfer is done."""

    transfer_id: str
    to_account_id: str
    amount: Decimal
    transaction_id: uuid.UUID
    occurred_at: datetime


@attrs.frozen
class TransferCreditFailed(Event):
    """The destination refused the credit; the saga will re-credit the source (decided, not yet done)."""

    transfer_id: str
    to_account_id: str
    reason: str
    occurred_at: datetime


@attrs.frozen
class TransferReversed(Event):
    """Compensation: the debit was re-credited to the source after the credit failed."""

    transfer_id: str
    from_account_id: str
    amount: Decimal
    reason: str
    transaction_id: uuid.UUID
    occurred_at: datetime


@attrs.frozen
class TransferFailed(Event):
    """The transfer ended without moving money (after a reversal if the debit had happened)."""

    transfer_id: str
    reason: str
    occurred_at: datetime


ACCOUNT_EVENTS = (
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    AccountSuspended,
    AccountReactivated,
    AccountClosed,
    TransferHoldReleased,
)
TRANSFER_EVENTS = (
    TransferInitiated,
    TransferDebited,
    TransferCompleted,
    TransferCreditFailed,
    TransferReversed,
    TransferFailed,
)


UPCASTERS: tuple[Upcaster, ...] = (money_deposited_v1_to_v2,)
"""Every step of the banking events' history, for :func:`banking_serializer`."""


def banking_serializer() -> Serializer:
    """A serializer that knows every banking event, also as stored by earlier versions, for the
    durable stores."""
    return Serializer(
        types=[*ACCOUNT_EVENTS, *TRANSFER_EVENTS, *SAGA_EVENTS, *KEY_EVENTS, Transaction, AccountState],
        upcasters=UPCASTERS,
        aliases={"TransferSettled": TransferHoldReleased},
    )
