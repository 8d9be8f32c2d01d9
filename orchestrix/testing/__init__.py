"""What users import in their own tests: the store contract suites, given/when/then scenarios
for aggregates and sagas, and hypothesis strategies.

It needs pytest and hypothesis: ``pip install 'orchestrix-es[testing]'``.
"""

try:
    import hypothesis  # noqa: F401  (checked here, so a missing one is named with the extra)
    import pytest  # noqa: F401
except ImportError as _missing:  # _: a type checker would take the name for a public one
    raise ModuleNotFoundError(
        f"orchestrix.testing needs pytest and hypothesis ({_missing}): pip install 'orchestrix-es[testing]'",
        name=_missing.name,
    ) from _missing

from orchestrix.testing.checkpoint_contract import CheckpointStoreContract
from orchestrix.testing.contract import (
    ContractEvent,
    EventStoreContract,
    MoneyMoved,
    NotRegistered,
    contract_serializer,
)
from orchestrix.testing.fencing_contract import FencingContract
from orchestrix.testing.import_contract import EventImportContract
from orchestrix.testing.scenario import AggregateScenario, Like, SagaScenario, like
from orchestrix.testing.snapshot_contract import (
    ContractTally,
    ContractTallyState,
    SnapshotStoreContract,
    SnapshotStores,
    snapshot_contract_serializer,
)
from orchestrix.testing.strategies import identifiers, invalid_amounts, money, stream_names

__all__ = [
    "AggregateScenario",
    "CheckpointStoreContract",
    "ContractEvent",
    "ContractTally",
    "ContractTallyState",
    "EventImportContract",
    "EventStoreContract",
    "FencingContract",
    "Like",
    "MoneyMoved",
    "NotRegistered",
    "SagaScenario",
    "SnapshotStoreContract",
    "SnapshotStores",
    "contract_serializer",
    "identifiers",
    "invalid_amounts",
    "like",
    "money",
    "snapshot_contract_serializer",
    "stream_names",
]
