"""The Wallet aggregate: a customer's prepaid balance, charged once per idempotency key."""

from __future__ import annotations

from decimal import Decimal

from bases.orchestrix.ecommerce_demo.errors import PaymentDeclined, UnknownWallet, WalletExists
from bases.orchestrix.ecommerce_demo.models import (
    ChargeWallet,
    OpenWallet,
    WalletCharged,
    WalletOpened,
    validate_money,
)
from orchestrix.core.eventsourcing.aggregate import AggregateRoot, applies

__all__ = ["Wallet"]


class Wallet(AggregateRoot):
    """A customer's wallet; its balance never goes below zero."""

    category = "Wallet"

    def __init__(self) -> None:
        super().__init__()
        self.balance = Decimal("0")
        self.charges: dict[str, Decimal] = {}

    def open(self, command: OpenWallet) -> None:
        """Open the wallet with its starting balance (zero or more)."""
        if self.id is not None:
            raise WalletExists(command.customer_id)
        balance = validate_money(command.balance, "balance", allow_zero=True)
        self.raise_event(WalletOpened(command.customer_id, balance))

    def charge(self, command: ChargeWallet) -> Decimal:
        """Take ``amount``, or raise PaymentDeclined; a repeated key returns the first charge's amount."""
        amount = validate_money(command.amount, "amount")
        if self.id is None:
            raise UnknownWallet(command.customer_id)
        if command.idempotency_key in self.charges:
            return self.charges[command.idempotency_key]
        if amount > self.balance:
            raise PaymentDeclined(self.id, self.balance, amount)
        self.raise_event(WalletCharged(self.id, amount, self.balance - amount, command.idempotency_key))
        return amount

    @applies(WalletOpened)
    def _opened(self, event: WalletOpened) -> None:
        self.id = event.customer_id
        self.balance = event.balance

    @applies(WalletCharged)
    def _charged(self, event: WalletCharged) -> None:
        self.balance = event.balance_after
        self.charges[event.idempotency_key] = event.amount
