"""The CheckpointStore contract suite: subclass it once per checkpoint store.

Example::

    from orchestrix.testing import CheckpointStoreContract

    class TestMyCheckpoints(CheckpointStoreContract):
        @pytest.fixture
        def checkpoints(self, tmp_path):
            return MyCheckpointStore(tmp_path / "checkpoints")

Durable stores should also override :meth:`CheckpointStoreContract.reopen`, so that the
"survives reopening" test opens the store again from its storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from orchestrix.core.errors import InvalidCheckpointError
from orchestrix.core.execution.checkpoint import CheckpointStore

__all__ = ["CheckpointStoreContract"]

_BAD_NAMES = ["", "a\x00b", "tab\there", "x" * 256, 42, None, b"runner"]
_BAD_POSITIONS = [-1, -5, True, False, 1.5, float("nan"), "3", None, 2**63, 2**70]


class CheckpointStoreContract:
    """Every promise a CheckpointStore makes, as tests. Subclass and provide ``checkpoints``."""

    @pytest.fixture
    def checkpoints(self) -> CheckpointStore:
        """The checkpoint store under test, empty."""
        raise NotImplementedError("subclasses provide a `checkpoints` fixture")

    def reopen(self, checkpoints: CheckpointStore) -> CheckpointStore:
        """Close ``checkpoints`` and open them again from storage; in-memory stores return it."""
        return checkpoints

    def test_satisfies_the_protocol(self, checkpoints: CheckpointStore) -> None:
        assert isinstance(checkpoints, CheckpointStore)

    def test_an_unsaved_name_loads_as_zero(self, checkpoints: CheckpointStore) -> None:
        assert checkpoints.load("runner") == 0

    def test_saved_positions_load_back_by_name(self, checkpoints: CheckpointStore) -> None:
        checkpoints.save("runner", 7)
        checkpoints.save("projection", 3)
        checkpoints.save("runner", 9)
        assert (checkpoints.load("runner"), checkpoints.load("projection")) == (9, 3)

    def test_a_position_may_go_back_to_zero(self, checkpoints: CheckpointStore) -> None:
        checkpoints.save("runner", 5)
        checkpoints.save("runner", 0)
        assert checkpoints.load("runner") == 0

    def test_the_largest_position_round_trips(self, checkpoints: CheckpointStore) -> None:
        checkpoints.save("runner", 2**63 - 1)
        assert checkpoints.load("runner") == 2**63 - 1

    @pytest.mark.parametrize(
        "name", ["../../etc/passwd", "'; DROP TABLE checkpoints;--", "Konto-Müller-€", "x" * 255, " "]
    )
    def test_odd_but_valid_names_are_plain_data(self, checkpoints: CheckpointStore, name: str) -> None:
        checkpoints.save(name, 4)
        checkpoints = self.reopen(checkpoints)
        assert checkpoints.load(name) == 4

    def test_positions_survive_reopening(self, checkpoints: CheckpointStore) -> None:
        checkpoints.save("runner", 11)
        checkpoints.save("other", 2)
        checkpoints = self.reopen(checkpoints)
        assert (checkpoints.load("runner"), checkpoints.load("other")) == (11, 2)

    @pytest.mark.parametrize("name", _BAD_NAMES)
    def test_invalid_names_are_refused(self, checkpoints: CheckpointStore, name: object) -> None:
        calls: list[Callable[[], object]] = [
            lambda: checkpoints.save(name, 1),  # type: ignore[arg-type]
            lambda: checkpoints.load(name),  # type: ignore[arg-type]
            lambda: asyncio.run(checkpoints.save_async(name, 1)),  # type: ignore[arg-type]
            lambda: asyncio.run(checkpoints.load_async(name)),  # type: ignore[arg-type]
        ]
        for call in calls:
            with pytest.raises(InvalidCheckpointError) as raised:
                call()
            assert raised.value.parameter == "name"
            assert raised.value.value == name

    @pytest.mark.parametrize("position", _BAD_POSITIONS)
    def test_invalid_positions_are_refused_and_nothing_is_saved(
        self, checkpoints: CheckpointStore, position: object
    ) -> None:
        checkpoints.save("runner", 5)
        calls: list[Callable[[], object]] = [
            lambda: checkpoints.save("runner", position),  # type: ignore[arg-type]
            lambda: checkpoints.save("fresh", position),  # type: ignore[arg-type]
            lambda: asyncio.run(checkpoints.save_async("runner", position)),  # type: ignore[arg-type]
        ]
        for call in calls:
            with pytest.raises(InvalidCheckpointError) as raised:
                call()
            assert raised.value.parameter == "position"
            assert raised.value.value is position
        checkpoints = self.reopen(checkpoints)
        assert (checkpoints.load("runner"), checkpoints.load("fresh")) == (5, 0)

    def test_async_forms_match_the_sync_ones(self, checkpoints: CheckpointStore) -> None:
        async def scenario() -> tuple[int, int, int]:
            before = await checkpoints.load_async("runner")
            await checkpoints.save_async("runner", 12)
            return before, await checkpoints.load_async("runner"), checkpoints.load("runner")

        assert asyncio.run(scenario()) == (0, 12, 12)
