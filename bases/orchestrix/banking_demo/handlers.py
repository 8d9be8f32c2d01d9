"""BankingCommandHandlers: one entry point per command, sync and asyncio.

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
from orchestrix.core.errors import AggregateNotFoundError, ConcurrencyError, InvalidStreamNameError
from orchestrix.core.eventsourcing.aggregate import (
    AggregateRepository,
    retry_on_conflict,
    retry_on_conflict_async,
)
from orchestrix.core.eventsourcing.store import validate_stream_name

__all__ = ["BankingCommandHandlers"]

T = TypeVar("T")


class BankingCommandHandlers:
    """Executes banking commands against accounts stored through a repository."""

    def __init__(self, repository: AggregateRepository, *, attempts: int = 5) -> None:
        self.repository = repository
        self.attempts = attempts

    # -- sync -------------------------------------------------------------------------------

    def open_account(self, command: OpenAccount) -> Account:
        """Open a new account; AccountAlreadyOpen if the id is taken."""
        account = Account()
        account.open(command)
        try:
            self.repository.save(account)
        except ConcurrencyError:
            raise AccountAlreadyOpen(command.account_id) from None
        return account

    def deposit_money(self, command: DepositMoney) -> Transaction:
        """Deposit into an active account (or repeat a keyed deposit's original outcome)."""
        return self._update(command.account_id, lambda account: account.deposit(command))

    def withdraw_money(self, command: WithdrawMoney) -> Transaction:
        """Withdraw from an active account without overdrawing it."""
        return self._update(command.account_id, lambda account: account.withdraw(command))

    def suspend_account(self, command: SuspendAccount) -> None:
        """Suspend an active account."""
        self._update(command.account_id, lambda account: account.suspend(command))

    def reactivate_account(self, command: ReactivateAccount) -> None:
        """Reactivate a suspended account."""
        self._update(command.account_id, lambda account: account.reactivate(command))

    def close_account(self, command: CloseAccount) -> None:
        """Close an empty account that holds no transfer in flight."""
        self._update(command.account_id, lambda account: account.close(command))

    def settle_transfer(self, command: SettleTransfer) -> None:
        """Release a completed transfer's debit on its source account (idempotent)."""
        self._update(command.account_id, lambda account: account.settle_transfer(command.transfer_id))

    def transfer_money(self, command: TransferMoney) -> TransferSaga:
        """Validate a transfer and store its ``TransferInitiated``; the saga runner does the rest.

        Refused up front, with nothing stored: a bad amount (InvalidAmount), the same account on
        both sides (SelfTransfer), an unknown source (AccountNotOpen), a suspended or closed
        source (AccountSuspended, AccountClosed), and a transfer id already used for a different
        transfer (TransferIdReused). Sending the same transfer again returns it unchanged.
        Problems with the destination surface when the saga credits it: the transfer is then
        compensated and fails.
        """
        _check_transfer(command)

        def once() -> TransferSaga:
            existing = self._existing_transfer(command)
            if existing is not None:
                return existing
            self._update(command.from_account_id, lambda source: _check_source(command, source))
            transfer = TransferSaga.initiate(command)
            self.repository.save(transfer)
            return transfer

        return retry_on_conflict(once, attempts=self.attempts)

    def get_transfer(self, transfer_id: str) -> TransferSaga:
        """Load a transfer; AggregateNotFoundError if there is none with this id."""
        return self.repository.load(TransferSaga, transfer_id)

    def _existing_transfer(self, command: TransferMoney) -> TransferSaga | None:
        try:
            existing = self.repository.load(TransferSaga, command.transfer_id)
        except AggregateNotFoundError:
            return None
        return _same_transfer(existing, command)

    def get_account(self, account_id: str) -> Account:
        """Load an account; AccountNotOpen if it was never opened."""
        try:
            return self.repository.load(Account, account_id)
        except AggregateNotFoundError:
            raise AccountNotOpen(account_id) from None

    def handle(self, command: Any) -> Any:
        """Dispatch any banking command to its handler."""
        return self._route(command)(command)

    # -- asyncio ----------------------------------------------------------------------------

    async def open_account_async(self, command: OpenAccount) -> Account:
        """Asyncio form of :meth:`open_account`."""
        account = Account()
        account.open(command)
        try:
            await self.repository.save_async(account)
        except ConcurrencyError:
            raise AccountAlreadyOpen(command.account_id) from None
        return account

    async def deposit_money_async(self, command: DepositMoney) -> Transaction:
        """Asyncio form of :meth:`deposit_money`."""
        return await self._update_async(command.account_id, lambda account: account.deposit(command))

    async def withdraw_money_async(self, command: WithdrawMoney) -> Transaction:
        """Asyncio form of :meth:`withdraw_money`."""
        return await self._update_async(command.account_id, lambda account: account.withdraw(command))

    async def suspend_account_async(self, command: SuspendAccount) -> None:
        """Asyncio form of :meth:`suspend_account`."""
        await self._update_async(command.account_id, lambda account: account.suspend(command))

    async def reactivate_account_async(self, command: ReactivateAccount) -> None:
        """Asyncio form of :meth:`reactivate_account`."""
        await self._update_async(command.account_id, lambda account: account.reactivate(command))

    async def close_account_async(self, command: CloseAccount) -> None:
        """Asyncio form of :meth:`close_account`."""
        await self._update_async(command.account_id, lambda account: account.close(command))

    async def settle_transfer_async(self, command: SettleTransfer) -> None:
        """Asyncio form of :meth:`settle_transfer`."""
        await self._update_async(
            command.account_id, lambda account: account.settle_transfer(command.transfer_id)
        )

    async def transfer_money_async(self, command: TransferMoney) -> TransferSaga:
        """Asyncio form of :meth:`transfer_money`."""
        _check_transfer(command)

        async def once() -> TransferSaga:
            try:
                existing = await self.repository.load_async(TransferSaga, command.transfer_id)
            except AggregateNotFoundError:
                pass
            else:
                return _same_transfer(existing, command)
            await self._update_async(command.from_account_id, lambda source: _check_source(command, source))
            transfer = TransferSaga.initiate(command)
            await self.repository.save_async(transfer)
            return transfer

        return await retry_on_conflict_async(once, attempts=self.attempts)

    async def get_transfer_async(self, transfer_id: str) -> TransferSaga:
        """Asyncio form of :meth:`get_transfer`."""
        return await self.repository.load_async(TransferSaga, transfer_id)

    async def get_account_async(self, account_id: str) -> Account:
        """Asyncio form of :meth:`get_account`."""
        try:
            return await self.repository.load_async(Account, account_id)
        except AggregateNotFoundError:
            raise AccountNotOpen(account_id) from None

    async def handle_async(self, command: Any) -> Any:
        """Asyncio form of :meth:`handle`."""
        return await self._route_async(command)(command)

    # -- plumbing ---------------------------------------------------------------------------

    def _update(self, account_id: str, decide: Callable[[Account], T]) -> T:
        try:
            return self.repository.update(Account, account_id, decide, attempts=self.attempts)
        except AggregateNotFoundError:
            raise AccountNotOpen(account_id) from None

    async def _update_async(self, account_id: str, decide: Callable[[Account], T]) -> T:
        try:
            return await self.repository.update_async(Account, account_id, decide, attempts=self.attempts)
        except AggregateNotFoundError:
            raise AccountNotOpen(account_id) from None

    def _route(self, command: Any) -> Callable[[Any], Any]:
        name = _HANDLERS.get(type(command))
        if name is None:
            raise TypeError(f"no banking handler for {type(command).__name__}")
        return getattr(self, name)

    def _route_async(self, command: Any) -> Callable[[Any], Any]:
        name = _HANDLERS.get(type(command))
        if name is None:
            raise TypeError(f"no banking handler for {type(command).__name__}")
        return getattr(self, name + "_async")


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


_HANDLERS: dict[type, str] = {
    OpenAccount: "open_account",
    DepositMoney: "deposit_money",
    WithdrawMoney: "withdraw_money",
    SuspendAccount: "suspend_account",
    ReactivateAccount: "reactivate_account",
    CloseAccount: "close_account",
    SettleTransfer: "settle_transfer",
    TransferMoney: "transfer_money",
}
