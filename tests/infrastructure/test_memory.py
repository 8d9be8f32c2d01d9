import pytest

from orchestrix.infrastructure.memory.store import InMemoryEventStore
from orchestrix.testing import EventStoreContract, contract_serializer


class TestInMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryEventStore:
        return InMemoryEventStore(serializer=contract_serializer())
