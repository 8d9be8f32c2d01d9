"""The ``orchestrix`` command: what it prints and its exit status, on file and PostgreSQL stores."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import attrs
import pytest

from orchestrix._cli_format import PROGRESS_CHECK
from orchestrix.cli import main
from orchestrix.core.eventsourcing.store import NO_STREAM
from orchestrix.core.messaging import Event, Serializer
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file._format import SEGMENT_HEADER_SIZE
from orchestrix.testing import ContractEvent, contract_serializer
from orchestrix.testing.contract import MoneyMoved
from tests.infrastructure.pg_support import dsn_or_skip, sql_execute, throwaway_schema

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REF = uuid.UUID("12345678-1234-5678-1234-567812345678")
MONEY_JSON = f'{{"amount":"10.05","at":"2024-05-01T12:00:00+00:00","ref":"{REF}"}}'


def _fill(store: object) -> None:
    """Three streams: a (4 events, one MoneyMoved), b (2), c (1), interleaved in global order."""
    store.append("a", [ContractEvent(0), ContractEvent(1, note="x")], NO_STREAM)  # type: ignore[attr-defined]
    store.append("b", [ContractEvent(2)], NO_STREAM)  # type: ignore[attr-defined]
    store.append("a", [MoneyMoved(Decimal("10.05"), WHEN, REF)], 1)  # type: ignore[attr-defined]
    store.append("c", [ContractEvent(3)], NO_STREAM)  # type: ignore[attr-defined]
    store.append("b", [ContractEvent(4)], 0)  # type: ignore[attr-defined]
    store.append("a", [ContractEvent(5)], 2)  # type: ignore[attr-defined]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with FileEventStore(path, contract_serializer(), sync=False) as store:
        _fill(store)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# -- inspect --------------------------------------------------------------------------------------


def test_inspect_summarizes_events_streams_and_types(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, err = run(capsys, "inspect", store_path)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"store:         file {store_path}"
    assert lines[1] == "events:        7 (last position 7)"
    assert lines[2] == "streams:       3"
    assert re.fullmatch(
        r"recorded:      \d{4}-\d\d-\d\dT[\d:.]+\+00:00 \.\. \d{4}-\d\d-\d\dT[\d:.]+\+00:00", lines[3]
    )
    assert lines[4:] == [
        "top streams:   (3 of 3, by events)",
        "  4  a",
        "  2  b",
        "  1  c",
        "event types:",
        "  6  ContractEvent",
        "  1  MoneyMoved",
    ]


def test_inspect_top_limits_the_streams_listed(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    status, out, _ = run(capsys, "inspect", store_path, "--top", "1")
    assert status == 0
    assert "top streams:   (1 of 3, by events)\n  4  a\nevent types:" in out


def test_inspect_an_empty_store_says_it_has_no_events(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    FileEventStore(tmp_path / "empty", contract_serializer(), sync=False).close()
    status, out, _ = run(capsys, "inspect", tmp_path / "empty")
    assert status == 0
    assert "events:        0 (last position 0)\nstreams:       0\n" in out
    assert "top streams" not in out


def test_inspect_one_stream_lists_its_events_with_raw_json(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(capsys, "inspect", store_path, "--stream", "a")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "stream 'a': 4 events, version 3"
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("0", "1", "ContractEvent", '{"n":0,"note":""}'),
        ("1", "2", "ContractEvent", '{"n":1,"note":"x"}'),
        (
            "2",
            "4",
            "MoneyMoved",
            MONEY_JSON,
        ),
        ("3", "7", "ContractEvent", '{"n":5,"note":""}'),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r[2]) for r in rows)


def test_inspect_a_stream_that_does_not_exist_is_a_problem(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, err = run(capsys, "inspect", store_path, "--stream", "nope")
    assert (status, out) == (1, "")
    assert err == "orchestrix: stream 'nope' has no events\n"


def test_stored_type_names_are_never_imported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    @attrs.frozen
    class Canary(Event):
        n: int

    name = "orchestrix_cli_canary_module:boom"
    serializer = Serializer()
    serializer.register(Canary, name=name)
    with FileEventStore(tmp_path / "s", serializer, sync=False) as store:
        store.append("s", [Canary(1)])
    status, out, _ = run(capsys, "tail", tmp_path / "s")
    assert (status, out) == (0, f'1 s@0 {name} {{"n":1}}\n')
    assert not any(m.startswith("orchestrix_cli_canary") for m in sys.modules)


# -- verify ---------------------------------------------------------------------------------------


def test_verify_an_intact_store(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    status, out, _ = run(capsys, "verify", store_path)
    assert (status, out) == (0, "OK: 7 events, checksums and positions verified\n")


def _record_offsets(segment: Path) -> list[int]:
    """Where each record of a segment starts (frame: 4-byte marker, 4-byte CRC, 4-byte body length)."""
    data = segment.read_bytes()
    offsets, at = [], SEGMENT_HEADER_SIZE
    while at < len(data) and data[at : at + 4] != bytes(4):
        offsets.append(at)
        at += 12 + int.from_bytes(data[at + 8 : at + 12], "little")
    return offsets


def _flip_a_bit_in_the_third_record(store_path: Path) -> tuple[Path, int]:
    """Damage the third record of the store's segment; return the segment and that record's offset."""
    (segment,) = sorted(store_path.glob("segment-*.log"))
    offsets = _record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[2] + 40] ^= 0x10
    segment.write_bytes(bytes(data))
    return segment, offsets[2]


def test_verify_a_bit_flip_in_the_middle_names_file_and_offset(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    segment, offset = _flip_a_bit_in_the_third_record(store_path)
    status, out, _ = run(capsys, "verify", store_path)
    assert status == 1
    assert out.startswith("CORRUPT: ")
    assert f"{segment} at offset {offset}" in out
    assert out.count("\n") == 1


def test_verify_damage_found_while_opening_is_reported_the_same_way(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    segment, offset = _flip_a_bit_in_the_third_record(store_path)
    (store_path / "index.sqlite3").unlink()  # opening now scans the whole log
    status, out, _ = run(capsys, "verify", store_path)
    assert status == 1
    assert out.startswith("CORRUPT: ") and f"{segment} at offset {offset}" in out


# -- tail -----------------------------------------------------------------------------------------


def test_tail_prints_events_in_global_order_after_a_position(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(capsys, "tail", store_path, "--after", "2", "--limit", "3")
    assert status == 0
    assert out.splitlines() == [
        '3 b@0 ContractEvent {"n":2,"note":""}',
        "4 a@2 MoneyMoved " + MONEY_JSON,
        '5 c@0 ContractEvent {"n":3,"note":""}',
    ]
    status, out, _ = run(capsys, "tail", store_path, "--after", "7")
    assert (status, out) == (0, "")


def test_tail_with_the_users_serializer_prints_decoded_events(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(
        capsys, "tail", store_path, "--limit", "1", "--serializer", "orchestrix.testing:contract_serializer"
    )
    assert (status, out) == (0, "1 a@0 ContractEvent ContractEvent(n=0, note='')\n")


def test_tail_follow_prints_events_appended_later(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    result: list[int] = []
    follower = threading.Thread(
        target=lambda: result.append(
            main(["tail", str(store_path), "--after", "7", "--follow", "--limit", "2"])
        )
    )
    follower.start()
    with FileEventStore(store_path, contract_serializer(), sync=False) as store:
        store.append("d", [ContractEvent(10)])
        store.append("d", [ContractEvent(11)])
    follower.join(10)
    assert not follower.is_alive()
    out, _ = capsys.readouterr()
    assert result == [0]
    assert out == '8 d@0 ContractEvent {"n":10,"note":""}\n9 d@1 ContractEvent {"n":11,"note":""}\n'


# -- replay ---------------------------------------------------------------------------------------

REPLAYED = re.compile(
    r"replayed ([\d,]+) events of (.+) \((raw JSON|decoded)\) in [\d.]+ s: [\d,]+ events/s\n"
)


def test_replay_all_reports_count_and_rate(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    status, out, _ = run(capsys, "replay", store_path, "--all")
    match = REPLAYED.fullmatch(out)
    assert status == 0 and match is not None, out
    assert match.groups() == ("7", "the whole store", "raw JSON")


def test_replay_a_stream_decoded_with_the_users_serializer(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, _ = run(
        capsys,
        "replay",
        store_path,
        "--stream",
        "a",
        "--serializer",
        "orchestrix.testing:contract_serializer",
    )
    match = REPLAYED.fullmatch(out)
    assert status == 0 and match is not None, out
    assert match.groups() == ("4", "stream 'a'", "decoded")


def test_replay_with_a_serializer_missing_a_type_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    status, out, err = run(capsys, "replay", store_path, "--all", "--serializer", "tests.test_cli:_partial")
    assert (status, out) == (1, "")
    assert err.startswith("orchestrix: UnknownEventTypeError: ") and "MoneyMoved" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def _partial() -> Serializer:
    return Serializer(types=[ContractEvent])


def test_replay_of_an_empty_stream_is_a_problem(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    status, _, err = run(capsys, "replay", store_path, "--stream", "nope")
    assert (status, err) == (1, "orchestrix: stream 'nope' has no events\n")


def test_a_long_replay_shows_progress_on_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with FileEventStore(tmp_path / "big", contract_serializer(), sync=False) as store:
        for start in range(0, 2 * PROGRESS_CHECK + 10, 500):
            store.append("s", [ContractEvent(n) for n in range(start, start + 500)])
    status, out, err = run(capsys, "replay", tmp_path / "big", "--all", "--progress-every", "0")
    assert status == 0
    assert REPLAYED.fullmatch(out) is not None
    assert [line.split(" events read")[0] for line in err.splitlines()] == ["replay: 1,024", "replay: 2,048"]
    status, out, err = run(capsys, "replay", tmp_path / "big", "--all")  # at most one line a second
    assert status == 0 and len(err.splitlines()) <= 1


# -- what is not a store, and usage errors --------------------------------------------------------


def test_a_directory_that_is_not_a_store_is_refused_and_left_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "mine.txt").write_text("my data")
    for command in (["inspect"], ["verify"], ["tail"], ["replay", "--all"]):
        status, out, err = run(capsys, command[0], tmp_path, *command[1:])
        assert (status, out) == (1, "")
        assert "not an orchestrix file store (no STORE file)" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(capsys, "inspect", empty)[0] == 1
    missing = tmp_path / "missing"
    status, _, err = run(capsys, "verify", missing)
    assert status == 1 and "no such directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine.txt"]
    assert list(empty.iterdir()) == []


def test_a_regular_file_is_said_to_be_a_file_and_left_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "events.log").write_text("my data")
    for command in (["inspect"], ["verify"], ["tail"], ["replay", "--all"]):
        status, out, err = run(capsys, command[0], tmp_path / "events.log", *command[1:])
        assert (status, out) == (1, "")
        assert err == (
            f"orchestrix: {tmp_path / 'events.log'}: is a file, not a file store (a store is a directory); "
            "nothing was changed\n"
        )
    assert (tmp_path / "events.log").read_text() == "my data"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate", "x"],
        ["inspect"],
        ["replay", "STORE"],
        ["replay", "STORE", "--all", "--stream", "a"],
        ["tail", "STORE", "--limit", "0"],
        ["tail", "STORE", "--after", "-1"],
        ["tail", "STORE", "--after", "soon"],
        ["tail", "STORE", "-n", "-1"],
        ["inspect", "STORE", "--progress-every", "nan"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], store_path: Path, argv: list[str]) -> None:
    argv = [str(store_path) if a == "STORE" else a for a in argv]
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert "usage: orchestrix" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "wants MODULE:FACTORY"),
        ("orchestrix_no_such_module:f", "No module named"),
        ("orchestrix.testing:no_such_factory", "no_such_factory"),
        ("orchestrix.testing:ContractEvent", "calling it raised TypeError"),
        ("orchestrix.testing:EventStoreContract", "not a Serializer"),
    ],
)
def test_a_serializer_that_cannot_be_used_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], store_path: Path, spec: str, message: str
) -> None:
    status, out, err = run(capsys, "inspect", store_path, "--serializer", spec)
    assert (status, out) == (2, "")
    assert message in err and err.count("\n") == 1


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert all(command in out for command in ("inspect", "verify", "tail", "replay"))


# -- as a real process ----------------------------------------------------------------------------


def _orchestrix(*argv: object) -> list[str]:
    return [sys.executable, "-m", "orchestrix", *map(str, argv)]


def test_python_m_orchestrix_runs_the_command(store_path: Path) -> None:
    done = subprocess.run(
        _orchestrix("verify", store_path), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "OK: 7 events, checksums and positions verified\n",
        "",
    )
    done = subprocess.run(_orchestrix("tail"), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "usage: orchestrix tail" in done.stderr


def test_ctrl_c_ends_tail_follow_quietly_with_status_0(store_path: Path) -> None:
    follower = subprocess.Popen(
        _orchestrix("tail", store_path, "--after", "6", "--follow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # the command is now in its waiting loop
        follower.send_signal(signal.SIGINT)
        rest, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert first == '7 a@3 ContractEvent {"n":5,"note":""}\n'
    assert (follower.returncode, rest, err) == (0, "", "")


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture
def postgres_store() -> Iterator[tuple[str, str, list[int]]]:
    """A DSN (with a password, which trust authentication ignores), a filled schema, its positions."""
    dsn = dsn_or_skip()
    from orchestrix.infrastructure.postgres import PostgresEventStore

    with throwaway_schema(dsn, "cli") as schema:
        with PostgresEventStore(dsn, contract_serializer(), schema=schema, pool_size=2) as store:
            _fill(store)
            positions = [r.position for r in store.read_all()]
        yield dsn.replace("postgres@", "postgres:s3cret@", 1), schema, positions


def test_postgres_inspect_hides_the_password(
    capsys: pytest.CaptureFixture[str], postgres_store: tuple[str, str, list[int]]
) -> None:
    dsn, schema, positions = postgres_store
    status, out, err = run(capsys, "inspect", dsn, "--schema", schema)
    assert status == 0, err
    assert "s3cret" not in out + err
    lines = out.splitlines()
    assert lines[0].startswith("store:         postgresql postgresql://postgres:***@")
    assert lines[0].endswith(f"(schema {schema})")
    assert lines[1] == f"events:        7 (last position {positions[-1]:,})"
    assert lines[2] == "streams:       3"
    assert lines[5:8] == ["  4  a", "  2  b", "  1  c"]
    status, out, _ = run(capsys, "inspect", dsn, "--schema", schema, "--stream", "b")
    assert status == 0 and out.splitlines()[0] == "stream 'b': 2 events, version 1"


def test_postgres_tail_after_a_position_with_a_limit(
    capsys: pytest.CaptureFixture[str], postgres_store: tuple[str, str, list[int]]
) -> None:
    dsn, schema, positions = postgres_store
    status, out, _ = run(capsys, "tail", dsn, "--schema", schema, "--after", positions[5], "--limit", "1")
    assert (status, out) == (0, f'{positions[6]} a@3 ContractEvent {{"n":5,"note":""}}\n')


def test_postgres_verify_checks_positions_and_gapless_versions(
    capsys: pytest.CaptureFixture[str], postgres_store: tuple[str, str, list[int]]
) -> None:
    dsn, schema, positions = postgres_store
    status, out, _ = run(capsys, "verify", dsn, "--schema", schema)
    assert (status, out) == (0, "OK: 7 events, positions and stream versions verified\n")
    sql_execute(dsn_or_skip(), f'DELETE FROM "{schema}".events WHERE stream = %s AND version = 1', ("a",))
    status, out, _ = run(capsys, "verify", dsn, "--schema", schema)
    assert status == 1
    assert out == f"CORRUPT: stream 'a': version 2 at position {positions[3]}, expected 1\n"


def test_postgres_a_schema_without_a_store_is_refused_and_not_created(
    capsys: pytest.CaptureFixture[str], postgres_store: tuple[str, str, list[int]]
) -> None:
    dsn, schema, _ = postgres_store
    missing = schema + "_missing"
    status, out, err = run(capsys, "inspect", dsn, "--schema", missing)
    assert (status, out) == (1, "")
    assert "no orchestrix tables" in err and err.count("\n") == 1
    assert sql_execute(dsn_or_skip(), "SELECT 1 FROM pg_namespace WHERE nspname = %s", (missing,)) == []


def test_postgres_a_raw_store_refuses_appends(postgres_store: tuple[str, str, list[int]]) -> None:
    from orchestrix.core.errors import SerializationError
    from orchestrix.core.messaging.serializer import RawSerializer
    from orchestrix.infrastructure.postgres import PostgresEventStore

    dsn, schema, _ = postgres_store
    with PostgresEventStore(dsn, RawSerializer(), schema=schema, create_schema=False, pool_size=1) as store:
        raw = next(iter(store.read_all()))
        with pytest.raises(SerializationError, match="read-only"):
            store.append("a", [raw.event])
        assert store.stream_version("a") == 3


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:s3cret@[::1/test",  # malformed: psycopg quotes the whole URI
        "POSTGRESQL://postgres:s3cret@127.0.0.1:1/test",
        "host=127.0.0.1 port=1 dbname=test user=postgres password=s3cret connect_timeout=1",
    ],
)
def test_a_bad_or_unreachable_dsn_is_one_line_without_the_password(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg")
    status = main(["inspect", dsn])
    out = capsys.readouterr()
    assert status == 1
    assert "s3cret" not in out.err + out.out
    assert "Traceback" not in out.err
    assert out.err.rstrip().splitlines()[-1].startswith("orchestrix: ")
