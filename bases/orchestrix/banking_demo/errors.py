"""The banking rules, one exception each; every one is an orchestrix DomainError."""

from __future__ import annotations

from decimal import Decimal

from orchestrix.core.errors import DomainError

__all__ = [
    "AccountAlreadyOpen",
    "AccountClosed",
    "AccountHasTransfersInFlight",
    "AccountNotActive",
    "AccountNotOpen",
    "AccountNotSuspended",
    "AccountSuspended",
    "BankingError",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidOwnerName",
    "NonZeroBalanceOnClose",
    "SelfTransfer",
    "TransferIdReused",
]


class BankingError(DomainError):
    """A banking rule refused a command; nothing was stored."""


class InvalidAmount(BankingError, ValueError):
    """An amount is not a finite, positive Decimal with at most two decimal places."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field} {value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class InvalidOwnerName(BankingError, ValueError):
    """The owner name is empty or not text."""

    def __init__(self, value: object) -> None:
        super().__init__(f"owner_name {value!r}: must be a non-empty string")
        self.value = value


class AccountNotOpen(BankingError, LookupError):
    """The account was never opened."""

    def __init__(self, account_id: str | None) -> None:
        super().__init__(f"account {account_id!r} has not been opened")
        self.account_id = account_id


class AccountAlreadyOpen(BankingError):
    """The account is already open; opening it again would reset it."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} is already open")
        self.account_id = account_id


class AccountNotActive(BankingError):
    """The account is suspended or closed, so it takes no money movements."""

    def __init__(self, account_id: str | None, status: object, operation: str) -> None:
        super().__init__(f"account {account_id!r} is {status}: cannot {operation}")
        self.account_id = account_id
        self.status = status
        self.operation = operation


class AccountSuspended(AccountNotActive):
    """The account is suspended."""


class AccountClosed(AccountNotActive):
    """The account is closed."""


class AccountNotSuspended(BankingError):
    """Only a suspended account can be reactivated."""

    def __init__(self, account_id: str | None, status: object) -> None:
        super().__init__(f"account {account_id!r} is {status}, not suspended: cannot reactivate")
        self.account_id = account_id
        self.status = status


class InsufficientFunds(BankingError):
    """A withdrawal would overdraw the account."""

    def __init__(self, account_id: str | None, balance: Decimal, requested: Decimal) -> None:
        super().__init__(f"account {account_id!r}: balance {balance} is less than {requested}")
        self.account_id = account_id
        self.balance = balance
        self.requested = requested


class NonZeroBalanceOnClose(BankingError):
    """An account with money left cannot be closed."""

    def __init__(self, account_id: str | None, balance: Decimal) -> None:
        super().__init__(f"account {account_id!r} still holds {balance}: cannot close")
        self.account_id = account_id
        self.balance = balance


class AccountHasTransfersInFlight(BankingError):
    """Closing is refused while a transfer has debited this account and may still be reversed."""

    def __init__(self, account_id: str | None, transfer_ids: tuple[str, ...]) -> None:
        super().__init__(
            f"account {account_id!r} has transfers in flight ({', '.join(transfer_ids)}): cannot close"
        )
        self.account_id = account_id
        self.transfer_ids = transfer_ids


class IdempotencyKeyReused(BankingError):
    """An idempotency key was sent again with a different operation or amount."""

    def __init__(self, account_id: str | None, key: str, detail: str) -> None:
        super().__init__(f"account {account_id!r}: idempotency key {key!r} reused {detail}")
        self.account_id = account_id
        self.key = key


class SelfTransfer(BankingError, ValueError):
    """A transfer names the same account as source and destination."""

    def __init__(self, transfer_id: str, account_id: str) -> None:
        super().__init__(f"transfer {transfer_id!r}: source and destination are both {account_id!r}")
        self.transfer_id = transfer_id
        self.account_id = account_id


class TransferIdReused(BankingError):
    """A transfer id already names a transfer with different accounts, amount or description."""

    def __init__(self, transfer_id: str, detail: str) -> None:
        super().__init__(f"transfer {transfer_id!r} already exists {detail}")
        self.transfer_id = transfer_id
        self.detail = detail
