"""``orchestrix deadlines | dead-letters | sagas``: sagas at rest, seen and acted on without their classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrix.cli import main
from orchestrix.core.execution import InMemoryCheckpointStore, ProjectionRunner, SagaRunner
from orchestrix.core.execution.dead_letters import DEAD_LETTER_EVENTS, DEAD_LETTER_STREAM
from orchestrix.core.messaging import Serializer
from orchestrix.infrastructure.file import FileEventStore
from tests.core.deadline_support import EVENTS as HOLD_EVENTS
from tests.core.deadline_support import Clock, Desk, HoldSaga, request
from tests.core.test_projection_retries import Broken, Cancelled, Shipped, Shipping, ship
from tests.core.test_retries import RetryingShipping, failing
from tests.core.test_saga_support import EVENTS as SHIPPING_EVENTS
from tests.core.test_saga_support import Reserve, ShippingSaga, Warehouse, place

TYPES = tuple(dict.fromkeys((*HOLD_EVENTS, *SHIPPING_EVENTS)))


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def open_store(path: Path) -> FileEventStore:
    return FileEventStore(path, Serializer(types=TYPES), sync=False)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A hold with a pending deadline; an order parked as a dead letter; an order stuck without a policy."""
    path = tmp_path / "store"
    clock = Clock()
    with open_store(path) as store:
        request(store, "h-1", seconds=30)
        SagaRunner(store, [HoldSaga], Desk(), InMemoryCheckpointStore(), clock=clock).run_until_idle()
        warehouse = Warehouse()
        warehouse.hooks[Reserve] = failing(1, KeyError("no such shelf"))
        place(store, "o-1")
        SagaRunner(
            store, [RetryingShipping], warehouse, InMemoryCheckpointStore(), clock=clock
        ).run_until_idle()
    return path


def runner(store: Any, saga: type, warehouse: Warehouse) -> SagaRunner:
    return SagaRunner(store, [saga], warehouse, InMemoryCheckpointStore(), clock=Clock())


def test_deadlines_list_shows_pending_deadlines(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    status, out, _ = run(capsys, "deadlines", "list", store_path)
    assert status == 0
    assert out.splitlines() == ["1 pending deadline", "  2026-01-01T12:00:30.000+00:00  hold-h-1  expire"]
    status, out, _ = run(capsys, "deadlines", "list", store_path, "--json")
    [deadline] = json.loads(out)["deadlines"]
    assert deadline == {
        "saga_type": "hold",
        "saga_id": "h-1",
        "stream": "hold-h-1",
        "name": "expire",
        "due_at": "2026-01-01T12:00:30.000+00:00",
        "scheduled_version": 0,
    }


def test_dead_letters_list_retry_and_the_runner_carries_it_out(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(capsys, "dead-letters", "list", store_path, "--json")
    [letter] = json.loads(out)["dead_letters"]
    assert (letter["status"], letter["saga_stream"], letter["error"]) == (
        "parked",
        "shipping-o-1",
        "'no such shelf'",
    )
    status, out, _ = run(capsys, "dead-letters", "list", store_path)
    assert out.splitlines()[0] == "1 dead letter" and letter["id"] in out

    status, out, _ = run(capsys, "dead-letters", "retry", store_path, letter["id"])
    assert status == 0 and "retry of dead letter" in out
    status, _, err = run(capsys, "dead-letters", "retry", store_path, letter["id"])
    assert status == 1 and "DeadLetterNotFoundError" in err and "not parked" in err

    warehouse = Warehouse()
    with open_store(store_path) as store:
        runner(store, RetryingShipping, warehouse).run_until_idle()
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    status, out, _ = run(capsys, "dead-letters", "list", store_path, "--all", "--json")
    assert [d["status"] for d in json.loads(out)["dead_letters"]] == ["retried"]


def test_dead_letters_discard(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    _, out, _ = run(capsys, "dead-letters", "list", store_path, "--json")
    letter_id = json.loads(out)["dead_letters"][0]["id"]
    status, out, _ = run(
        capsys, "dead-letters", "discard", store_path, letter_id, "--reason", "gone", "--json"
    )
    assert status == 0 and json.loads(out)["status"] == "discard requested"
    with open_store(store_path) as store:
        runner(store, RetryingShipping, Warehouse()).run_until_idle()
        assert [r.event_type for r in store.read_stream(DEAD_LETTER_STREAM)][-1] == "DeadLetterResolved"
    _, out, _ = run(capsys, "dead-letters", "list", store_path)
    assert out.splitlines() == ["0 dead letters"]


def test_sagas_stuck_and_retry(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    status, out, _ = run(capsys, "sagas", store_path, "--stuck", "--json")
    [stuck] = json.loads(out)["stuck"]
    assert (stuck["stream"], stuck["saga_type"], stuck["saga_id"]) == ("shipping-o-1", "shipping", "o-1")
    assert "dead-lettered" in stuck["reason"] and stuck["retry_requested"] is False

    status, out, _ = run(capsys, "sagas", "retry", store_path, "shipping-o-1")
    assert status == 0 and "retry of shipping-o-1 requested" in out
    _, out, _ = run(capsys, "sagas", store_path, "--stuck")
    assert "(retry requested)" in out

    warehouse = Warehouse()
    with open_store(store_path) as store:
        runner(store, ShippingSaga, warehouse).run_until_idle()
    assert warehouse.applied == ["o-1:reserve", "o-1:ship"]
    _, out, _ = run(capsys, "sagas", store_path, "--stuck")
    assert out.splitlines() == ["0 stuck sagas"]


def test_sagas_retry_of_a_saga_that_is_not_stuck_is_refused(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, _, err = run(capsys, "sagas", "retry", store_path, "hold-h-1")
    assert status == 1 and "SagaNotStuckError" in err
    with open_store(store_path) as store:
        assert [r.event_type for r in store.read_stream("hold-h-1")] == ["DeadlineScheduled"]


def test_sagas_without_stuck_or_retry_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, _, err = run(capsys, "sagas", store_path)
    assert status == 2 and "orchestrix sagas STORE --stuck" in err


def test_dead_letters_of_a_projection_listed_retried_and_carried_out_by_its_runner(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "projected"
    failing_once: dict[str, list[Exception]] = {"o-2": [Broken("warehouse offline")]}
    types = Serializer(types=[Shipped, Cancelled, *DEAD_LETTER_EVENTS])
    with FileEventStore(path, types, sync=False) as store:
        ship(store, "o-1", "o-2")
        projection = Shipping(failing_once)
        ProjectionRunner(store, [projection], store.checkpoints(), sleep=lambda s: None).run_until_idle()
    status, out, _ = run(capsys, "dead-letters", "list", path, "--json")
    [letter] = json.loads(out)["dead_letters"]
    assert status == 0
    assert (letter["kind"], letter["projection"], letter["stream"], letter["error_type"]) == (
        "projection",
        "shipping",
        "Order-o-2",
        "Broken",
    )
    assert (letter["saga_type"], letter["saga_id"], letter["status"]) == ("", "", "parked")
    _, out, _ = run(capsys, "dead-letters", "list", path)
    assert out.splitlines()[1].split()[2:4] == ["projection", "shipping"]
    status, out, _ = run(capsys, "dead-letters", "retry", path, letter["id"])
    assert status == 0 and "the runner owning projection shipping carries it out" in out
    with FileEventStore(path, types, sync=False) as store:
        projection = Shipping()
        ProjectionRunner(store, [projection], store.checkpoints()).run_until_idle()
        assert projection.shipped == ["o-2"]  # only the parked event: the rest was checkpointed
    status, out, _ = run(capsys, "dead-letters", "list", path, "--all", "--json")
    assert [d["status"] for d in json.loads(out)["dead_letters"]] == ["retried"]
