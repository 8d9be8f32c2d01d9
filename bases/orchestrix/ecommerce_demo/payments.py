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
from orchestrix.core.eventsourcing.keys import decided_once

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
        """Take ``amount``, or raise PaymentDeclined; a key is decided once (a repeat returns the first
        charge's amount, a declined key is declined again)."""
        amount = validate_money(command.amount, "amount")
        if self.id is None:
            raise UnknownWallet(command.customer_id)
        if command.idempotency_key in self.charges:
            return self.charges[command.idempotency_key]
        return self._charge_new(command, amount)

    @decided_once()
    def _charge_new(self, command: ChargeWallet, amount: Decimal) -> Decimal:
        # A declined key stays declined: a late copy of the charge (a runner that lost its lease
        # while paused) must not take money for an order that was cancelled meanwhile.
        assert self.id is not None
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
