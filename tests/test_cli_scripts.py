"""The ``orchestrix`` command as scripts use it: ``--json`` read back, unambiguous text lines,
``tail -n``, and progress with percentage and ETA on long reads."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrix._cli_format import PROGRESS_CHECK
from orchestrix._cli_read import start_of_last
from orchestrix.cli import main
from orchestrix.core.eventsourcing.store import NO_STREAM
from orchestrix.core.messaging import Event, RecordedEvent, Serializer
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.testing import ContractEvent, contract_serializer
from tests.infrastructure.pg_support import dsn_or_skip, throwaway_schema
from tests.test_cli import REF, _fill, _flip_a_bit_in_the_third_record, run
from tests.test_cli import store_path as store_path  # the fixture

CONTRACT = "orchestrix.testing:contract_serializer"


def ndjson(out: str) -> list[dict[str, Any]]:
    """Every line of ``out`` parsed as one JSON object."""
    assert out.endswith("\n")
    objects = [json.loads(line) for line in out.splitlines()]
    assert all(isinstance(o, dict) for o in objects)
    return objects


def one_object(out: str) -> dict[str, Any]:
    assert out.count("\n") == 1
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


# -- --json, parsed back ---------------------------------------------------------------------------


def test_inspect_json_is_one_object_with_the_summary(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, err = run(capsys, "inspect", store_path, "--json")
    assert status == 0, err
    summary = one_object(out)
    assert summary["store"] == {"kind": "file", "location": str(store_path)}
    assert (summary["count"], summary["last_position"], summary["streams"]) == (7, 7, 3)
    assert summary["first_recorded_at"] <= summary["last_recorded_at"]
    assert summary["top_streams"] == [
        {"stream": "a", "count": 4},
        {"stream": "b", "count": 2},
        {"stream": "c", "count": 1},
    ]
    assert summary["event_types"] == [
        {"type": "ContractEvent", "count": 6},
        {"type": "MoneyMoved", "count": 1},
    ]


def test_inspect_json_of_an_empty_store_has_no_times(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    FileEventStore(tmp_path / "empty", contract_serializer(), sync=False).close()
    status, out, _ = run(capsys, "inspect", tmp_path / "empty", "--json")
    summary = one_object(out)
    assert status == 0
    assert (summary["count"], summary["first_recorded_at"], summary["top_streams"]) == (0, None, [])


def test_inspect_json_of_a_stream_lists_its_events_with_their_envelopes(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(capsys, "inspect", store_path, "--stream", "a", "--json")
    listing = one_object(out)
    assert status == 0
    assert (listing["stream"], listing["count"], listing["version"]) == ("a", 4, 3)
    events = listing["events"]
    assert [(e["version"], e["position"], e["type"]) for e in events] == [
        (0, 1, "ContractEvent"),
        (1, 2, "ContractEvent"),
        (2, 4, "MoneyMoved"),
        (3, 7, "ContractEvent"),
    ]
    assert events[2]["data"] == {"amount": "10.05", "at": "2024-05-01T12:00:00+00:00", "ref": str(REF)}
    with FileEventStore(store_path, contract_serializer(), sync=False) as store:
        stored = list(store.read_stream("a"))
    assert [e["id"] for e in events] == [str(r.event_id) for r in stored]
    assert all(e["stream"] == "a" and e["correlation_id"] is None for e in events)


def test_verify_json_says_ok_and_what_was_checked(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(capsys, "verify", store_path, "--json")
    assert status == 0
    assert one_object(out) == {
        "store": {"kind": "file", "location": str(store_path)},
        "ok": True,
        "count": 7,
        "checked": ["checksums", "positions"],
    }


def test_verify_json_names_the_damaged_file_and_offset(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    segment, offset = _flip_a_bit_in_the_third_record(store_path)
    status, out, _ = run(capsys, "verify", store_path, "--json")
    result = one_object(out)
    assert status == 1
    assert (result["ok"], result["file"], result["offset"]) == (False, str(segment), offset)
    assert result["problem"].startswith(f"corrupt store file {segment} at offset {offset}")


def test_tail_json_is_one_event_per_line(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    status, out, _ = run(capsys, "tail", store_path, "--json")
    events = ndjson(out)
    assert status == 0
    assert [(e["position"], e["stream"], e["version"], e["type"]) for e in events] == [
        (1, "a", 0, "ContractEvent"),
        (2, "a", 1, "ContractEvent"),
        (3, "b", 0, "ContractEvent"),
        (4, "a", 2, "MoneyMoved"),
        (5, "c", 0, "ContractEvent"),
        (6, "b", 1, "ContractEvent"),
        (7, "a", 3, "ContractEvent"),
    ]
    assert events[1]["data"] == {"n": 1, "note": "x"}
    assert set(events[0]) == {
        "position",
        "stream",
        "version",
        "type",
        "id",
        "recorded_at",
        "correlation_id",
        "causation_id",
        "data",
    }


def test_tail_json_with_the_users_serializer_writes_the_same_data(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    _, raw, _ = run(capsys, "tail", store_path, "--json")
    status, decoded, _ = run(capsys, "tail", store_path, "--json", "--serializer", CONTRACT)
    assert status == 0
    assert ndjson(decoded) == ndjson(raw)


def test_replay_json_writes_progress_lines_then_the_result(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with FileEventStore(tmp_path / "big", contract_serializer(), sync=False) as store:
        for start in range(0, 2 * PROGRESS_CHECK + 10, 500):
            store.append("s", [ContractEvent(n) for n in range(start, start + 500)])
    status, out, err = run(
        capsys, "replay", tmp_path / "big", "--stream", "s", "--json", "--progress-every", "0"
    )
    lines = ndjson(out)
    assert (status, err) == (0, "")
    assert [line["kind"] for line in lines] == ["progress", "progress", "result"]
    assert [(p["count"], p["percent"]) for p in lines[:2]] == [(1024, 41.0), (2048, 81.9)]
    assert all(p["eta_seconds"] >= 0 and p["rate"] > 0 for p in lines[:2])
    result = lines[2]
    assert (result["stream"], result["count"], result["decoded"]) == ("s", 2500, False)
    assert result["seconds"] > 0 and result["rate"] > 0
    status, out, _ = run(capsys, "replay", tmp_path / "big", "--all", "--json", "--serializer", CONTRACT)
    assert status == 0
    assert [(o["kind"], o["stream"], o["count"], o["decoded"]) for o in ndjson(out)] == [
        ("result", None, 2500, True)
    ]


# -- text lines split unambiguously ------------------------------------------------------------------


def split_tail_line(line: str) -> tuple[int, str, int, str, str]:
    """(position, stream, version, type, payload) of a ``tail`` line, as the docs tell a script to read it."""
    position, rest = line.split(" ", 1)
    stream, rest = _word(rest)
    stream, _, version = stream.rpartition("@")
    if stream.startswith('"'):
        stream = json.loads(stream)
    event_type, rest = _word(rest)
    if event_type.startswith('"'):
        event_type = json.loads(event_type)
    return int(position), stream, int(version), event_type, rest


def _word(text: str) -> tuple[str, str]:
    """The first word of ``text`` (a JSON string with what follows it up to a space) and the rest."""
    if text.startswith('"'):
        _, end = json.JSONDecoder().raw_decode(text)
        tail_end = text.index(" ", end)
        return text[:tail_end], text[tail_end + 1 :]
    word, rest = text.split(" ", 1)
    return word, rest


SPACED = 'Spaced Out\t"1"@'
"""A type name (they are free text) with a space, a tab, quotes and an ``@``."""


@attrs.frozen
class Spaced(Event):
    n: int


@pytest.mark.parametrize(
    "stream",
    ["my stream", "a@b", "@", '"quoted"', 'mid"quote', " lead", "x  y@1", "ünï cödé", "a" * 255],
)
def test_tail_lines_split_unambiguously_whatever_the_stream_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stream: str
) -> None:
    serializer = Serializer()
    serializer.register(Spaced, name=SPACED)
    with FileEventStore(tmp_path / "s", serializer, sync=False) as store:
        store.append(stream, [Spaced(1), Spaced(2)], NO_STREAM)
    status, out, _ = run(capsys, "tail", tmp_path / "s")
    assert status == 0
    assert [split_tail_line(line) for line in out.splitlines()] == [
        (1, stream, 0, SPACED, '{"n":1}'),
        (2, stream, 1, SPACED, '{"n":2}'),
    ]


def test_a_plain_stream_name_is_written_bare(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with FileEventStore(tmp_path / "s", contract_serializer(), sync=False) as store:
        store.append("my stream", [ContractEvent(1)])
        store.append("Account-acc-1", [ContractEvent(2)])
    status, out, _ = run(capsys, "tail", tmp_path / "s")
    assert status == 0
    assert out.splitlines() == [
        '1 "my stream"@0 ContractEvent {"n":1,"note":""}',
        '2 Account-acc-1@0 ContractEvent {"n":2,"note":""}',
    ]
    status, out, _ = run(capsys, "inspect", tmp_path / "s")
    assert '  1  "my stream"\n' in out


# -- tail -n ---------------------------------------------------------------------------------------


def test_tail_n_starts_that_many_events_before_the_end(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(capsys, "tail", store_path, "-n", "3")
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == ["5", "6", "7"]
    assert run(capsys, "tail", store_path, "--lines", "100")[1].count("\n") == 7
    assert run(capsys, "tail", store_path, "-n", "0")[1] == ""
    status, out, _ = run(capsys, "tail", store_path, "-n", "3", "--limit", "1")
    assert (status, out.split()[0]) == (0, "5")


def test_tail_n_and_after_together_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, err = run(capsys, "tail", store_path, "-n", "3", "--after", "2")
    assert (status, out) == (2, "")
    assert "not allowed with argument" in err


def _follow(
    capsys: pytest.CaptureFixture[str], argv: list[str], result: list[int], first_lines: int
) -> tuple[threading.Thread, list[str]]:
    """Start ``tail --follow`` in a thread; return once it has printed its first lines (and these)."""
    follower = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    follower.start()
    printed = ""
    deadline = time.monotonic() + 10
    while printed.count("\n") < first_lines and time.monotonic() < deadline:
        time.sleep(0.01)
        printed += capsys.readouterr().out
    return follower, printed.splitlines()


def test_tail_n_follow_prints_the_last_events_then_new_ones(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    result: list[int] = []
    argv = ["tail", str(store_path), "-n", "2", "--follow", "--limit", "3"]
    follower, first = _follow(capsys, argv, result, 2)
    with FileEventStore(store_path, contract_serializer(), sync=False) as store:
        store.append("d", [ContractEvent(10)])
    follower.join(10)
    assert not follower.is_alive() and result == [0]
    out, _ = capsys.readouterr()
    assert [line.split()[0] for line in [*first, *out.splitlines()]] == ["6", "7", "8"]


def test_tail_follow_alone_starts_ten_events_before_the_end(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with FileEventStore(tmp_path / "s", contract_serializer(), sync=False) as store:
        store.append("s", [ContractEvent(n) for n in range(25)])
    result: list[int] = []
    follower, first = _follow(capsys, ["tail", str(tmp_path / "s"), "--follow", "--limit", "11"], result, 10)
    with FileEventStore(tmp_path / "s", contract_serializer(), sync=False) as store:
        store.append("s", [ContractEvent(25)])
    follower.join(10)
    assert not follower.is_alive() and result == [0]
    out, _ = capsys.readouterr()
    assert [int(line.split()[0]) for line in [*first, *out.splitlines()]] == list(range(16, 27))


class SparseStore:
    """Just what ``tail -n`` reads of a store, over given (sparse) positions; counts what it reads."""

    def __init__(self, positions: list[int]) -> None:
        self.positions = positions
        self.read = 0
        self.reads = 0

    def last_position(self) -> int:
        return self.positions[-1] if self.positions else 0

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        self.reads += 1
        for p in self.positions:
            if p > after:
                self.read += 1
                yield RecordedEvent(REF, "s", 0, p, None, "T", None)  # type: ignore[arg-type]


@given(
    gaps=st.lists(st.integers(1, 2**20), max_size=60),
    n=st.integers(0, 70),
)
def test_tail_n_counts_events_not_positions(gaps: list[int], n: int) -> None:
    positions = list(itertools.accumulate(gaps))
    store = SparseStore(positions)
    start = start_of_last(store, n)  # type: ignore[arg-type]
    assert [p for p in positions if p > start] == positions[len(positions) - min(n, len(positions)) :]


def test_tail_n_reads_about_n_events_not_the_whole_store() -> None:
    # PostgreSQL-like: each transaction's events sit 2**20 positions apart.
    store = SparseStore([k * 2**20 for k in range(1, 100_001)])
    assert start_of_last(store, 10) == 99_990 * 2**20  # type: ignore[arg-type]
    assert store.reads <= 6 and store.read < 100


def test_postgres_tail_n_counts_events_over_sparse_positions(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = dsn_or_skip()
    from orchestrix.infrastructure.postgres import PostgresEventStore

    with throwaway_schema(dsn, "clitail") as schema:
        with PostgresEventStore(dsn, contract_serializer(), schema=schema, pool_size=2) as store:
            _fill(store)
            positions = [r.position for r in store.read_all()]
        assert positions[-1] - positions[0] > 7  # sparse
        status, out, err = run(capsys, "tail", dsn, "--schema", schema, "-n", "2", "--json")
        assert status == 0, err
        assert [e["position"] for e in ndjson(out)] == positions[-2:]


# -- progress --------------------------------------------------------------------------------------

PROGRESS = re.compile(r"(\w+): ([\d,]+) events read \([\d,]+/s\), (\d+)%, ETA (\d+h\d\dm|\d+m\d\ds|\d+s)")


def _big_store(path: Path, records: int = 6, per_record: int = 500) -> None:
    with FileEventStore(path, contract_serializer(), sync=False) as store:
        for r in range(records):
            store.append(f"s{r % 2}", [ContractEvent(n) for n in range(per_record)])


def test_a_long_replay_shows_percentage_and_eta(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _big_store(tmp_path / "big")
    status, _, err = run(capsys, "replay", tmp_path / "big", "--all", "--progress-every", "0")
    assert status == 0
    found = [PROGRESS.fullmatch(line) for line in err.splitlines()]
    assert all(found), err
    assert [(m[2], m[3]) for m in found if m] == [("1,024", "34"), ("2,048", "68")]
    status, _, err = run(capsys, "replay", tmp_path / "big", "--stream", "s1", "--progress-every", "0")
    assert [(m[2], m[3]) for m in map(PROGRESS.fullmatch, err.splitlines()) if m] == [("1,024", "68")]


def test_a_long_file_verify_shows_percentage_and_eta(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _big_store(tmp_path / "big")  # six records of 500 events: reports after 1,500 and 3,000
    status, out, err = run(capsys, "verify", tmp_path / "big", "--progress-every", "0")
    assert (status, out) == (0, "OK: 3,000 events, checksums and positions verified\n")
    found = [PROGRESS.fullmatch(line) for line in err.splitlines()]
    assert [(m[1], m[2], m[3]) for m in found if m] == [("verify", "1,500", "50"), ("verify", "3,000", "100")]
    assert len(found) == 2


def test_a_long_inspect_shows_percentage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _big_store(tmp_path / "big")
    status, out, err = run(capsys, "inspect", tmp_path / "big", "--json", "--progress-every", "0")
    assert status == 0 and one_object(out)["count"] == 3000
    assert [(m[1], m[3]) for m in map(PROGRESS.fullmatch, err.splitlines()) if m] == [
        ("inspect", "34"),
        ("inspect", "68"),
    ]
