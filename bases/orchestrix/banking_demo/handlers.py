"""BankingCommandHandlers: one entry point per command, sync and asyncio.

Each handler loads the account, lets it decide, and saves with the version it loaded. If
another writer got there first (ConcurrencyError), it reloads and decides again, so a rule
such as "no overdraft" is always checked against the latest balance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.errors import AccountAlreadyOpen, AccountNotOpen
from bases.orchestrix.banking_demo.models import (
    CloseAccount,
    DepositMoney,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    Transaction,
    WithdrawMoney,
)
from orchestrix.core.errors import AggregateNotFoundError, ConcurrencyError
from orchestrix.core.eventsourcing.aggregate import AggregateRepository

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


_HANDLERS: dict[type, str] = {
    OpenAccount: "open_account",
    DepositMoney: "deposit_money",
    WithdrawMoney: "withdraw_money",
    SuspendAccount: "suspend_account",
    ReactivateAccount: "reactivate_account",
    CloseAccount: "close_account",
}
