"""BankingCommandHandlers: one handler per command, written once, sent from sync or asyncio code.

Each handler loads the account, lets it decide, and saves with the version it loaded. If
another writer got there first (ConcurrencyError), it reloads and decides again, so a rule
such as "no overdraft" is always checked against the latest balance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.errors import (
    AccountAlreadyOpen,
    AccountClosed,
    AccountNotOpen,
    AccountSuspended,
    SelfTransfer,
    TransferIdReused,
)
from bases.orchestrix.banking_demo.models import (
    AccountStatus,
    CloseAccount,
    DepositMoney,
    OpenAccount,
    ReactivateAccount,
    SettleTransfer,
    SuspendAccount,
    Transaction,
    TransferMoney,
    WithdrawMoney,
    validate_amount,
)
from bases.orchestrix.banking_demo.saga import TransferSaga
from orchestrix.core.errors import (
    AggregateNotFoundError,
    ConcurrencyError,
    DomainError,
    InvalidStreamNameError,
)
from orchestrix.core.eventsourcing.aggregate import AggregateRepository, retry_on_conflict_async
from orchestrix.core.eventsourcing.store import validate_stream_name
from orchestrix.core.execution.dispatch import CommandBus

__all__ = ["BankingCommandHandlers"]

T = TypeVar("T")


class BankingCommandHandlers:
    """Executes banking commands against accounts stored through a repository.

    Each handler is written once, as a coroutine. Send a command with :meth:`handle` from sync
    code or ``await`` :meth:`handle_async` (or the handler itself) from asyncio code: both run
    the same handler, the sync one without an event loop or a thread.
    """

    def __init__(self, repository: AggregateRepository, *, attempts: int = 5) -> None:
        self.repository = repository
        self.attempts = attempts
        self._bus = CommandBus()
        self._bus.register(OpenAccount, self.open_account)
        self._bus.register(DepositMoney, self.deposit_money)
        self._bus.register(WithdrawMoney, self.withdraw_money)
        self._bus.register(SuspendAccount, self.suspend_account)
        self._bus.register(ReactivateAccount, self.reactivate_account)
        self._bus.register(CloseAccount, self.close_account)
        self._bus.register(SettleTransfer, self.settle_transfer)
        self._bus.register(TransferMoney, self.transfer_money)

    def handle(self, command: Any) -> Any:
        """Execute any banking command and return its handler's result; UnknownCommandError for
        anything else."""
        return self._bus.handle(command)

    async def handle_async(self, command: Any) -> Any:
        """Asyncio form of :meth:`handle`."""
        return await self._bus.handle_async(command)

    # -- the handlers -----------------------------------------------------------------------

    async def open_account(self, command: OpenAccount) -> Account:
        """Open a new account; AccountAlreadyOpen if the id is taken."""
        account = Account()
        account.open(command)
        try:
            await self.repository.save_async(account)
        except ConcurrencyError:
            raise AccountAlreadyOpen(command.account_id) from None
        return account

    async def deposit_money(self, command: DepositMoney) -> Transaction:
        """Deposit into an active account (or repeat a keyed deposit's original outcome)."""
        return await self._update(command.account_id, lambda account: account.deposit(command))

    async def withdraw_money(self, command: WithdrawMoney) -> Transaction:
        """Withdraw from an active account without overdrawing it."""
        return await self._update(command.account_id, lambda account: account.withdraw(command))

    async def suspend_account(self, command: SuspendAccount) -> None:
        """Suspend an active account."""
        await self._update(command.account_id, lambda account: account.suspend(command))

    async def reactivate_account(self, command: ReactivateAccount) -> None:
        """Reactivate a suspended account."""
        await self._update(command.account_id, lambda account: account.reactivate(command))

    async def close_account(self, command: CloseAccount) -> None:
        """Close an empty account that holds no transfer in flight."""
        await self._update(command.account_id, lambda account: account.close(command))

    async def settle_transfer(self, command: SettleTransfer) -> None:
        """Release a completed transfer's debit on its source account (idempotent)."""
        await self._update(command.account_id, lambda account: account.settle_transfer(command.transfer_id))

    async def transfer_money(self, command: TransferMoney) -> TransferSaga:
        """Validate a transfer and store its ``TransferInitiated``; the saga runner does the rest.

        Refused up front, with nothing stored: a bad amount (InvalidAmount), the same account on
        both sides (SelfTransfer), an unknown source (AccountNotOpen), a suspended or closed
        source (AccountSuspended, AccountClosed), and a transfer id already used for a different
        transfer (TransferIdReused). Sending the same transfer again returns it unchanged.
        Problems with the destination surface when the saga credits it: the transfer is then
        compensated and fails.
        """
        _check_transfer(command)

        # The transfer is stored expecting no stream, without reading it first: a repeat finds
        # the stream taken (ConcurrencyError) and only then is the stored transfer read and
        # compared. A refused source reads it too, so a repeat of an accepted transfer is still
        # answered with the transfer, whatever became of its source since.
        async def once() -> TransferSaga:
            try:
                await self._update(command.from_account_id, lambda source: _check_source(command, source))
            except DomainError:
                existing = await self._existing(command.transfer_id)
                if existing is None:
                    raise
                return _same_transfer(existing, command)
            transfer = TransferSaga.initiate(command)
            try:
                await self.repository.save_async(transfer)
            except ConcurrencyError:
                existing = await self._existing(command.transfer_id)
                if existing is None:
                    raise  # the stream moved in a way that left no transfer: try again
                return _same_transfer(existing, command)
            return transfer

        return await retry_on_conflict_async(once, attempts=self.attempts)

    # -- queries ----------------------------------------------------------------------------
    # Plain reads through the repository; asyncio code reads with ``repository.load_async``.

    def get_account(self, account_id: str) -> Account:
        """Load an account; AccountNotOpen if it was never opened."""
        try:
            return self.repository.load(Account, account_id)
        except AggregateNotFoundError:
            raise AccountNotOpen(account_id) from None

    def get_transfer(self, transfer_id: str) -> TransferSaga:
        """Load a transfer; AggregateNotFoundError if there is none with this id."""
        return self.repository.load(TransferSaga, transfer_id)

    # -- plumbing ---------------------------------------------------------------------------

    async def _existing(self, transfer_id: str) -> TransferSaga | None:
        try:
            return await self.repository.load_async(TransferSaga, transfer_id)
        except AggregateNotFoundError:
            return None

    async def _update(self, account_id: str, decide: Callable[[Account], T]) -> T:
        try:
            return await self.repository.update_async(Account, account_id, decide, attempts=self.attempts)
        except AggregateNotFoundError:
            raise AccountNotOpen(account_id) from None


def _check_transfer(command: TransferMoney) -> None:
    """The checks that need no stored state: ids, amount, self-transfer."""
    for field in ("transfer_id", "from_account_id", "to_account_id"):
        value = getattr(command, field)
        if not isinstance(value, str) or not value:
            raise InvalidStreamNameError(value, f"{field} must be a non-empty string")
    validate_stream_name(TransferSaga.stream_name(command.transfer_id))
    validate_stream_name(Account.stream_name(command.to_account_id))
    validate_amount(command.amount)
    if command.from_account_id == command.to_account_id:
        raise SelfTransfer(command.transfer_id, command.from_account_id)


def _check_source(command: TransferMoney, source: Account) -> None:
    if source.status is AccountStatus.SUSPENDED:
        raise AccountSuspended(source.id, source.status, f"send transfer {command.transfer_id!r}")
    if source.status is AccountStatus.CLOSED:
        raise AccountClosed(source.id, source.status, f"send transfer {command.transfer_id!r}")


def _same_transfer(existing: TransferSaga, command: TransferMoney) -> TransferSaga:
    differences = existing.differences(command)
    if differences:
        raise TransferIdReused(command.transfer_id, "with " + ", ".join(differences))
    return existing
