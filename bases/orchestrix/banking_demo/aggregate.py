"""The Account aggregate: exact money, no overdraft, and an audit trail of every movement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from bases.orchestrix.banking_demo.errors import (
    AccountAlreadyOpen,
    AccountClosed,
    AccountHasTransfersInFlight,
    AccountNotOpen,
    AccountNotSuspended,
    AccountSuspended,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidOwnerName,
    NonZeroBalanceOnClose,
)
from bases.orchestrix.banking_demo.models import (
    AccountClosed as AccountClosedEvent,
)
from bases.orchestrix.banking_demo.models import (
    AccountOpened,
    AccountReactivated,
    AccountState,
    AccountStatus,
    CloseAccount,
    DepositMoney,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    Transaction,
    TransactionKind,
    TransferHoldReleased,
    WithdrawMoney,
    validate_amount,
)
from bases.orchestrix.banking_demo.models import (
    AccountSuspended as AccountSuspendedEvent,
)
from orchestrix.core.eventsourcing.aggregate import AggregateRoot, applies
from orchestrix.core.eventsourcing.keys import decided_once

__all__ = ["Account", "transaction_id_for"]

_KEYS = uuid.UUID("6f1d7a52-3c55-4d0e-9a64-1b7f1f3b2a10")


def transaction_id_for(key: str) -> uuid.UUID:
    """The deterministic transaction (and event) id of a keyed money movement."""
    return uuid.uuid5(_KEYS, key)


def _now() -> datetime:
    return datetime.now(UTC)


class Account(AggregateRoot):
    """A bank account. Command methods check the rules and raise events; appliers change state."""

    category = "Account"
    # Accounts live long and a busy one takes many movements; loads replay at most ten events
    # after the newest snapshot. Small on purpose: the demo shows snapshots being taken.
    snapshot_every = 10

    def __init__(self) -> None:
        super().__init__()
        self.owner_name: str = ""
        self.balance: Decimal = Decimal("0")
        self.status: AccountStatus | None = None
        self.transactions: list[Transaction] = []
        self.suspension_reason: str = ""
        self.transfers_in_flight: dict[str, Decimal] = {}
        self._by_key: dict[str, Transaction] = {}

    # -- commands ------------------------------------------------------------------------

    def open(self, command: OpenAccount) -> None:
        """Open the account with its opening balance (zero or more)."""
        if self.status is not None:
            raise AccountAlreadyOpen(command.account_id)
        if not isinstance(command.owner_name, str) or not command.owner_name.strip():
            raise InvalidOwnerName(command.owner_name)
        initial = validate_amount(command.initial_balance, "initial_balance", allow_zero=True)
        self.raise_event(AccountOpened(command.account_id, command.owner_name, initial, uuid.uuid4(), _now()))

    def deposit(self, command: DepositMoney) -> Transaction:
        """Add money. A keyed deposit is decided once: a repeat returns the original transaction,
        and a key refused before is refused again (KeyAlreadyRefusedError, the same reason)."""
        amount = validate_amount(command.amount)
        self._require_open()
        repeat = self._repeat(command.idempotency_key, TransactionKind.DEPOSIT, amount)
        if repeat is not None:
            return repeat
        return self._deposit_new(command, amount)

    def withdraw(self, command: WithdrawMoney) -> Transaction:
        """Take money out; never below zero. Keyed withdrawals are decided once, like deposits."""
        amount = validate_amount(command.amount)
        self._require_open()
        repeat = self._repeat(command.idempotency_key, TransactionKind.WITHDRAWAL, amount)
        if repeat is not None:
            return repeat
        return self._withdraw_new(command, amount)

    # The rules of a new keyed movement: a refusal here is recorded against the key. Checks of
    # the input and of a repeat come before, so a malformed command or a reused key never
    # decides a key's outcome.
    @decided_once()
    def _deposit_new(self, command: DepositMoney, amount: Decimal) -> Transaction:
        if not self._is_reversal_of_own_debit(command, amount):
            self._require_active("deposit")
        return self._move(MoneyDeposited, amount, self.balance + amount, command)

    @decided_once()
    def _withdraw_new(self, command: WithdrawMoney, amount: Decimal) -> Transaction:
        self._require_active("withdraw")
        if amount > self.balance:
            raise InsufficientFunds(self.id, self.balance, amount)
        return self._move(MoneyWithdrawn, amount, self.balance - amount, command)

    def suspend(self, command: SuspendAccount) -> None:
        """Stop all money movements (a reversal of this account's own transfer debit aside)."""
        self._require_active("suspend")
        self.raise_event(AccountSuspendedEvent(self._id(), command.reason, _now()))

    def reactivate(self, command: ReactivateAccount) -> None:
        """Let a suspended account move money again."""
        self._require_open()
        if self.status is not AccountStatus.SUSPENDED:
            raise AccountNotSuspended(self.id, self.status)
        self.raise_event(AccountReactivated(self._id(), _now()))

    def close(self, command: CloseAccount) -> None:
        """Close for good: the account must be active, empty and hold no transfer in flight."""
        self._require_active("close")
        if self.balance != 0:
            raise NonZeroBalanceOnClose(self.id, self.balance)
        if self.transfers_in_flight:
            raise AccountHasTransfersInFlight(self.id, tuple(sorted(self.transfers_in_flight)))
        self.raise_event(AccountClosedEvent(self._id(), _now()))

    def settle_transfer(self, transfer_id: str) -> None:
        """Release a completed transfer's debit, so it no longer blocks closing. Idempotent."""
        self._require_open()
        if transfer_id in self.transfers_in_flight:
            self.raise_event(
                TransferHoldReleased(self._id(), transfer_id, _now()),
                event_id=transaction_id_for(f"{transfer_id}:settle"),
            )

    # -- snapshots -----------------------------------------------------------------------

    def snapshot(self) -> AccountState:
        """The account's state, for a snapshot."""
        return AccountState(
            self.owner_name,
            self.balance,
            self.status,
            tuple(self.transactions),
            self.suspension_reason,
            dict(self.transfers_in_flight),
        )

    def restore(self, state: AccountState) -> None:
        """Take back a snapshot's state (the repository sets the id)."""
        self.owner_name = state.owner_name
        self.balance = state.balance
        self.status = state.status
        self.transactions = list(state.transactions)
        self.suspension_reason = state.suspension_reason
        self.transfers_in_flight = dict(state.transfers_in_flight)
        self._by_key = {t.idempotency_key: t for t in self.transactions if t.idempotency_key is not None}

    # -- rules ---------------------------------------------------------------------------

    def _id(self) -> str:
        if self.status is None or self.id is None:
            raise AccountNotOpen(self.id)
        return self.id

    def _require_open(self) -> None:
        if self.status is None:
            raise AccountNotOpen(self.id)

    def _require_active(self, operation: str) -> None:
        self._require_open()
        if self.status is AccountStatus.SUSPENDED:
            raise AccountSuspended(self.id, self.status, operation)
        if self.status is AccountStatus.CLOSED:
            raise AccountClosed(self.id, self.status, operation)

    def _repeat(self, key: str | None, kind: TransactionKind, amount: Decimal) -> Transaction | None:
        if key is None:
            return None
        done = self._by_key.get(key)
        if done is None:
            return None
        if done.kind is not kind or done.amount != amount:
            raise IdempotencyKeyReused(
                self.id, key, f"for a {kind} of {amount} (first use: {done.kind} of {done.amount})"
            )
        return done

    def _is_reversal_of_own_debit(self, command: DepositMoney, amount: Decimal) -> bool:
        """A transfer's reversal must land even on a suspended account: it returns our own money."""
        transfer_id = command.transfer_id
        return (
            self.status is AccountStatus.SUSPENDED
            and transfer_id is not None
            and command.idempotency_key == f"{transfer_id}:reverse"
            and self.transfers_in_flight.get(transfer_id) == amount
        )

    def _move(
        self,
        event_type: type[MoneyDeposited] | type[MoneyWithdrawn],
        amount: Decimal,
        balance_after: Decimal,
        command: DepositMoney | WithdrawMoney,
    ) -> Transaction:
        key = command.idempotency_key
        transaction_id = uuid.uuid4() if key is None else transaction_id_for(key)
        event = event_type(
            self._id(),
            transaction_id,
            amount,
            balance_after,
            command.description,
            _now(),
            command.transfer_id,
            key,
        )
        self.raise_event(event, event_id=transaction_id)
        return self.transactions[-1]

    # -- appliers: the only place state changes ------------------------------------------

    @applies(AccountOpened)
    def _opened(self, event: AccountOpened) -> None:
        self.id = event.account_id
        self.owner_name = event.owner_name
        self.balance = event.initial_balance
        self.status = AccountStatus.ACTIVE
        if event.initial_balance:
            self.transactions.append(
                Transaction(
                    event.transaction_id,
                    TransactionKind.OPENING,
                    event.initial_balance,
                    event.initial_balance,
                    "Opening balance",
                    event.occurred_at,
                )
            )

    @applies(MoneyDeposited)
    def _deposited(self, event: MoneyDeposited) -> None:
        self.balance += event.amount
        self._record(TransactionKind.DEPOSIT, event)
        if event.transfer_id is not None and event.idempotency_key == f"{event.transfer_id}:reverse":
            self.transfers_in_flight.pop(event.transfer_id, None)

    @applies(MoneyWithdrawn)
    def _withdrawn(self, event: MoneyWithdrawn) -> None:
        self.balance -= event.amount
        self._record(TransactionKind.WITHDRAWAL, event)
        if event.transfer_id is not None and event.idempotency_key == f"{event.transfer_id}:debit":
            self.transfers_in_flight[event.transfer_id] = event.amount

    @applies(AccountSuspendedEvent)
    def _suspended(self, event: AccountSuspendedEvent) -> None:
        self.status = AccountStatus.SUSPENDED
        self.suspension_reason = event.reason

    @applies(AccountReactivated)
    def _reactivated(self, event: AccountReactivated) -> None:
        self.status = AccountStatus.ACTIVE
        self.suspension_reason = ""

    @applies(AccountClosedEvent)
    def _closed(self, event: AccountClosedEvent) -> None:
        self.status = AccountStatus.CLOSED

    @applies(TransferHoldReleased)
    def _settled(self, event: TransferHoldReleased) -> None:
        self.transfers_in_flight.pop(event.transfer_id, None)

    def _record(self, kind: TransactionKind, event: MoneyDeposited | MoneyWithdrawn) -> None:
        entry = Transaction(
            event.transaction_id,
            kind,
            event.amount,
            self.balance,
            event.description,
            event.occurred_at,
            event.transfer_id,
            event.idempotency_key,
        )
        self.transactions.append(entry)
        if event.idempotency_key is not None:
            self._by_key[event.idempotency_key] = entry
