"""``orchestrix copy``: a copy keeps streams, versions, ids, payloads and order, resumes after
a kill without duplicates, and its verification catches a target that differs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from orchestrix.cli import main
from orchestrix.core.eventsourcing.copy import PassThroughSerializer, StoredEvent, _pages, tally
from orchestrix.core.messaging.messages import NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import Serializer
from orchestrix.infrastructure.file import FileEventStore
from tests.infrastructure.pg_support import dsn_or_skip, throwaway_schema


@attrs.frozen
class Deposited:
    amount: int
    note: str = "é ✓"


def serializer() -> Serializer:
    return Serializer([Deposited])


def _fill(path: Path, n: int, streams: int = 7) -> None:
    with FileEventStore(path, serializer(), sync=False) as store:
        for i in range(n):
            store.append(
                f"acct-{i % streams}",
                [NewEvent(Deposited(i), correlation_id=uuid.uuid4(), causation_id=uuid.uuid4())],
            )


def _key(e: RecordedEvent) -> tuple[object, ...]:
    # recorded_at too: a copy keeps each event's original time (import_events), not the copy's.
    return (e.stream, e.version, e.event_id, e.event_type, e.correlation_id, e.causation_id, e.recorded_at)


def _events(path: Path) -> list[RecordedEvent]:
    with FileEventStore(path, serializer()) as store:
        return list(store.read_all())


def test_file_to_file_keeps_streams_versions_ids_payloads_and_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(tmp_path / "src", 120)
    assert main(["copy", str(tmp_path / "src"), str(tmp_path / "dst"), "--page", "16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["copied"], summary["events"], summary["streams"], summary["verified"]) == (
        120,
        120,
        7,
        True,
    )
    assert summary["kept_times"] is True
    source, copied = _events(tmp_path / "src"), _events(tmp_path / "dst")
    assert [_key(e) for e in copied] == [_key(e) for e in source]
    assert [e.event for e in copied] == [e.event for e in source]


def test_a_second_run_copies_nothing_and_verifies_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(tmp_path / "src", 30)
    assert main(["copy", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    capsys.readouterr()
    assert main(["copy", str(tmp_path / "src"), str(tmp_path / "dst"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["copied"], summary["resumed_after"], summary["verified"]) == (0, 30, True)
    assert len(_events(tmp_path / "dst")) == 30


def test_a_target_holding_other_events_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(tmp_path / "src", 20)
    assert main(["copy", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    with FileEventStore(tmp_path / "dst", serializer()) as store:
        store.append("acct-3", [Deposited(999)])
    capsys.readouterr()
    assert main(["copy", str(tmp_path / "src"), str(tmp_path / "dst")]) == 1
    assert "CopyTargetError" in capsys.readouterr().err
    assert len(_events(tmp_path / "dst")) == 21


def test_verification_names_what_differs(tmp_path: Path) -> None:
    _fill(tmp_path / "a", 20)
    _fill(tmp_path / "b", 20)
    with FileEventStore(tmp_path / "a", PassThroughSerializer()) as a:
        expected = tally(a.read_all(), PassThroughSerializer())
    with FileEventStore(tmp_path / "b", serializer()) as b:
        b.append("acct-3", [Deposited(999)])
    with FileEventStore(tmp_path / "b", PassThroughSerializer()) as b:
        found = tally(b.read_all(), PassThroughSerializer())
    differences = expected.differences(found)
    assert differences[0] == "event count 20 in the source, 21 in the target"
    assert differences[1] == "stream versions differ: 'acct-3' (version 2 vs 3)"
    assert differences[2:] == [
        "the sets of event ids differ",
        "the checksum differs (payloads, types, times or order)",
    ]
    assert expected.differences(expected) == []


def test_verification_catches_a_copy_that_lost_the_times(tmp_path: Path) -> None:
    _fill(tmp_path / "a", 5)
    with FileEventStore(tmp_path / "a", PassThroughSerializer()) as a:
        source = list(a.read_all())
        expected = tally(source, PassThroughSerializer())
    later = [attrs.evolve(e, recorded_at=e.recorded_at + timedelta(microseconds=1)) for e in source]
    assert expected.differences(tally(later, PassThroughSerializer())) == [
        "the checksum differs (payloads, types, times or order)"
    ]
    untimed = tally(source, PassThroughSerializer(), times=False)
    assert untimed.differences(tally(later, PassThroughSerializer(), times=False)) == []


def test_upcast_needs_a_serializer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(tmp_path / "src", 3)
    assert main(["copy", str(tmp_path / "src"), str(tmp_path / "dst"), "--upcast"]) == 2
    assert "--upcast needs --serializer" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_upcast_reencodes_through_the_serializer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(tmp_path / "src", 10)
    spec = f"{__name__}:serializer"
    assert main(["copy", str(tmp_path / "src"), str(tmp_path / "dst"), "--upcast", "--serializer", spec]) == 0
    assert "verified: 10 events" in capsys.readouterr().out
    assert [e.event for e in _events(tmp_path / "dst")] == [e.event for e in _events(tmp_path / "src")]


def test_pages_end_before_a_stream_comes_back_so_each_stream_is_once_per_append() -> None:
    def ev(stream: str) -> RecordedEvent:
        return RecordedEvent(uuid.uuid4(), stream, 0, 0, None, "t", None)  # type: ignore[arg-type]

    streams = ["a", "a", "b", "a", "c", "c", "c", "d"]
    pages = [[e.stream for e in page] for page in _pages([ev(s) for s in streams], 3)]
    assert pages == [["a", "a", "b"], ["a", "c", "c", "c"], ["d"]]


def test_a_killed_copy_resumes_without_duplicates(tmp_path: Path) -> None:
    n = 6000
    _fill(tmp_path / "src", n)
    command = [sys.executable, "-m", "orchestrix", "copy", str(tmp_path / "src"), str(tmp_path / "dst")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [*command, "--page", "20", "--progress-every", "0"], stderr=subprocess.PIPE, text=True, env=env
    )
    assert child.stderr is not None
    line = child.stderr.readline()  # the first progress report: some pages are stored
    assert line.startswith("copy: "), line
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    partial = _events(tmp_path / "dst")
    assert 0 < len(partial) < n
    resumed = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, check=False)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_after"] == len(partial)
    assert summary["copied"] + summary["resumed_after"] == n
    assert summary["verified"] is True
    copied = _events(tmp_path / "dst")
    assert len({e.event_id for e in copied}) == n
    assert [_key(e) for e in copied] == [_key(e) for e in _events(tmp_path / "src")]


def test_file_to_postgres_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = dsn_or_skip()
    _fill(tmp_path / "src", 90)
    with throwaway_schema(dsn, "copy") as schema:
        assert main(["copy", str(tmp_path / "src"), dsn, "--target-schema", schema, "--page", "25"]) == 0
        assert "verified: 90 events, 7 streams" in capsys.readouterr().out
        assert main(["copy", dsn, "--schema", schema, str(tmp_path / "back"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["verified"] is True
    source, back = _events(tmp_path / "src"), _events(tmp_path / "back")
    assert [_key(e) for e in back] == [_key(e) for e in source]
    assert [e.event for e in back] == [e.event for e in source]


def test_the_pass_through_serializer_writes_only_what_it_read() -> None:
    from orchestrix.core.errors import SerializationError

    with pytest.raises(SerializationError):
        PassThroughSerializer().encode(Deposited(1))


def test_a_source_that_fails_mid_way_stops_the_copy_with_its_error_after_whole_pages() -> None:
    from orchestrix.core.eventsourcing.copy import copy_store
    from orchestrix.infrastructure.memory.store import InMemoryEventStore

    class Broken(Exception):
        pass

    source = InMemoryEventStore(PassThroughSerializer())
    for i in range(50):
        source.append(f"acct-{i % 3}", [StoredEvent("Deposited", b'{"amount":%d}' % i)])

    class FailingSource:
        def __getattr__(self, name: str) -> object:
            return getattr(source, name)

        def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
            for n, recorded in enumerate(source.read_all(after, limit)):
                if n == 25:
                    raise Broken("the disk went away")
                yield recorded

    target = InMemoryEventStore(PassThroughSerializer())
    with pytest.raises(Broken, match="the disk went away"):
        copy_store(FailingSource(), target, page=10)  # type: ignore[arg-type]
    copied = list(target.read_all())
    assert 0 < len(copied) <= 25  # whole pages (they end early where a stream comes back)
    assert [(e.stream, e.version) for e in copied] == [(e.stream, e.version) for e in source.read_all()][
        : len(copied)
    ]
    assert [e.recorded_at for e in copied] == [e.recorded_at for e in source.read_all()][: len(copied)]
