"""Property: any sequence of commands keeps every balance exact, non-negative, and replayable."""

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bases.orchestrix.banking_demo.aggregate import Account
from bases.orchestrix.banking_demo.errors import BankingError
from bases.orchestrix.banking_demo.handlers import BankingCommandHandlers
from bases.orchestrix.banking_demo.models import (
    CloseAccount,
    DepositMoney,
    OpenAccount,
    ReactivateAccount,
    SuspendAccount,
    WithdrawMoney,
    banking_serializer,
)
from orchestrix.core.eventsourcing import AggregateRepository
from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import money

ACCOUNTS = ["acc-a", "acc-b", "acc-c"]
account_ids = st.sampled_from(ACCOUNTS)
amounts = money("0.01", "500.00")

commands = st.one_of(
    st.builds(OpenAccount, account_ids, st.just("Owner"), money("0.00", "500.00")),
    st.builds(DepositMoney, account_ids, amounts, st.just("in")),
    st.builds(WithdrawMoney, account_ids, amounts, st.just("out")),
    st.builds(SuspendAccount, account_ids, st.just("check")),
    st.builds(ReactivateAccount, account_ids),
    st.builds(CloseAccount, account_ids),
)


@settings(max_examples=max(200, settings.default.max_examples))
@given(st.lists(commands, max_size=40))
def test_balances_equal_opening_plus_deposits_minus_withdrawals(sequence: list[object]) -> None:
    store = InMemoryEventStore(serializer=banking_serializer())
    repo = AggregateRepository(event_store=store)
    bank = BankingCommandHandlers(repo)
    expected = {a: Decimal("0") for a in ACCOUNTS}
    for command in sequence:
        try:
            bank.handle(command)
        except BankingError:
            continue
        if isinstance(command, OpenAccount):
            expected[command.account_id] += command.initial_balance
        elif isinstance(command, DepositMoney):
            expected[command.account_id] += command.amount
        elif isinstance(command, WithdrawMoney):
            expected[command.account_id] -= command.amount

    for account_id in ACCOUNTS:
        if store.stream_version(Account.stream_name(account_id)) == -1:
            assert expected[account_id] == 0
            continue
        account = repo.load(Account, account_id)
        assert account.balance == expected[account_id]
        assert account.balance >= 0
        assert all(t.balance_after >= 0 for t in account.transactions)
        # Replaying again from the store gives the same state and the same audit trail.
        again = repo.load(Account, account_id)
        assert (again.balance, again.status, again.transactions) == (
            account.balance,
            account.status,
            account.transactions,
        )
        running = Decimal("0")
        for t in account.transactions:
            running += t.amount if t.kind.value != "withdrawal" else -t.amount
            assert t.balance_after == running
