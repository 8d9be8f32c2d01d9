"""What users import in their own tests: the store contract suite and hypothesis strategies."""

from orchestrix.testing.contract import (
    ContractEvent,
    EventStoreContract,
    MoneyMoved,
    NotRegistered,
    contract_serializer,
)
from orchestrix.testing.fencing_contract import FencingContract
from orchestrix.testing.strategies import identifiers, invalid_amounts, money, stream_names

__all__ = [
    "ContractEvent",
    "EventStoreContract",
    "FencingContract",
    "MoneyMoved",
    "NotRegistered",
    "contract_serializer",
    "identifiers",
    "invalid_amounts",
    "money",
    "stream_names",
]
