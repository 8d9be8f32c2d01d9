"""The file store on open: a torn tail is cut off, damage that was once on disk is corruption."""

from __future__ import annotations

import logging
import uuid
import zlib
from pathlib import Path

import pytest

from orchestrix.core.errors import (
    CorruptionError,
)
from orchestrix.core.eventsourcing.store import NO_STREAM
from orchestrix.infrastructure.file._format import (
    FORMAT_VERSION,
    Flaw,
    FormatProblem,
    NewerFormat,
    RecordProblem,
    check_frame,
    pack_segment_header,
    prepare_record,
    seal_record,
    type_field,
    unpack_segment_header,
    unpack_store,
)
from orchestrix.testing import ContractEvent, contract_serializer
from tests.infrastructure.file_support import (
    events,
    numbers,
    open_store,
    record_offsets,
    segments,
    snapshot,
)

# -- torn tails ------------------------------------------------------------------------------------


def _build_with_tail(path: Path) -> tuple[int, list[int]]:
    """A store whose last three appends are small; returns where they start and the survivors' numbers."""
    with open_store(path) as store:
        store.append("s-1", events(0, 1), NO_STREAM)
        store.append("s-2", events(2), NO_STREAM)
        store.append("s-1", events(3, 4), 1)
        store.append("s-2", events(5), 0)
        store.append("s-3", events(6), NO_STREAM)
    (segment,) = segments(path)
    return record_offsets(segment)[2], [0, 1, 2]


def test_a_torn_tail_at_every_offset_opens_to_a_consistent_prefix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    tail_start, _ = _build_with_tail(path)
    (segment,) = segments(path)
    offsets = record_offsets(segment)
    full = segment.read_bytes()
    full = full[: offsets[-1] + 12 + int.from_bytes(full[offsets[-1] + 8 : offsets[-1] + 12], "little")]
    survivors = {offsets[2]: [0, 1, 2], offsets[3]: [0, 1, 2, 3, 4], offsets[4]: [0, 1, 2, 3, 4, 5]}
    # a crash image: HEAD and the index never reached the torn records (both follow the fdatasync)
    for name in ("HEAD", "index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (path / name).unlink(missing_ok=True)
    pristine = snapshot(path)
    for cut in range(tail_start, len(full)):
        for name, data in pristine.items():
            (path / name).write_bytes(data)
        for name in ("HEAD", "index.sqlite3"):
            (path / name).unlink(missing_ok=True)
        segment.write_bytes(full[:cut])
        expected = survivors[max(o for o in survivors if o <= cut)]
        caplog.clear()
        with caplog.at_level(logging.WARNING), open_store(path, sync=False) as store:
            assert numbers(store) == expected, f"cut at {cut}"
            assert store.last_position() == len(expected)
        if cut not in survivors:
            assert f"at offset {max(o for o in survivors if o <= cut)}" in caplog.text
        assert segment.stat().st_size == max(o for o in survivors if o <= cut)
        if cut % 10 == 0 or cut in survivors:
            with open_store(path) as store:  # a second open finds nothing to repair; the store is writable
                assert numbers(store) == expected
                store.append("s-9", events(99), NO_STREAM)
                assert numbers(store)[-1] == 99


def test_a_zero_filled_tail_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _build_with_tail(path)
    (segment,) = segments(path)
    offsets = record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[4] :] = bytes(len(data) - offsets[4])
    segment.write_bytes(bytes(data))
    (path / "index.sqlite3").unlink()
    (path / "HEAD").unlink()  # a crash image: the zeroed record was never acknowledged
    with open_store(path) as store:
        assert numbers(store) == [0, 1, 2, 3, 4, 5]


def _record(position: int, version: int, durable: int, n: int) -> bytes:
    """A record as a writer makes it: event ``n`` at ``position``, written when ``durable`` was on disk."""
    type_name, payload = contract_serializer().encode(ContractEvent(n))
    event = (uuid.uuid4().bytes, None, None, type_field(type_name), payload)
    record = prepare_record(b"s-9", [event])
    seal_record(record, durable, position, version, 0)
    return bytes(record)


def _two_in_flight(path: Path, second_durable: int, across_segments: bool) -> tuple[Path, int]:
    """Positions 1-2 stored; then records 3 and 4 written together, 3 torn (a crash image).

    Returns the segment holding record 3 and its offset.
    """
    with open_store(path) as store:
        store.append("s-1", events(0, 1), NO_STREAM)
    (first,) = segments(path)
    at = record_offsets(first)[-1]
    at += 12 + int.from_bytes(first.read_bytes()[at + 8 : at + 12], "little")
    third, fourth = _record(3, 0, 2, 3), _record(4, 1, second_durable, 4)
    torn = third[:20] + bytes(len(third) - 40) + third[-20:]  # its middle never reached the disk
    with open(first, "r+b") as f:
        f.truncate(at)
        f.seek(at)
        f.write(torn if across_segments else torn + fourth)
    if across_segments:
        store_id = unpack_store((path / "STORE").read_bytes())
        (path / "segment-00000002.log").write_bytes(pack_segment_header(2, store_id, 3) + fourth)
    (path / "index.sqlite3").unlink()
    return first, at


@pytest.mark.parametrize("across_segments", [False, True], ids=["one segment", "two segments"])
def test_two_groups_in_flight_at_a_crash_leave_a_consistent_prefix(
    tmp_path: Path, across_segments: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The next group is written while the previous one syncs; a power cut can keep the later one
    # and lose the earlier. The later one says it was written before position 3 was on disk.
    path = tmp_path / "store"
    _, at = _two_in_flight(path, second_durable=2, across_segments=across_segments)
    with caplog.at_level(logging.WARNING), open_store(path) as store:
        assert numbers(store) == [0, 1]
        store.append("s-1", events(9), 1)
    assert f"at offset {at}" in caplog.text
    assert [p.name for p in segments(path)] == ["segment-00000001.log"]
    with open_store(path) as store:
        assert numbers(store) == [0, 1, 9]


# -- corruption ------------------------------------------------------------------------------------


@pytest.mark.parametrize("across_segments", [False, True], ids=["one segment", "two segments"])
def test_a_damaged_record_that_a_later_one_saw_on_disk_is_corruption(
    tmp_path: Path, across_segments: bool
) -> None:
    path = tmp_path / "store"
    segment, at = _two_in_flight(path, second_durable=3, across_segments=across_segments)
    log_before = {p.name: p.read_bytes() for p in segments(path)}
    with pytest.raises(CorruptionError) as raised:
        open_store(path)
    assert (raised.value.path, raised.value.offset) == (str(segment), at)
    assert {p.name: p.read_bytes() for p in segments(path)} == log_before  # nothing cut, nothing dropped


def test_a_bit_flip_in_the_middle_is_corruption_naming_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _build_with_tail(path)
    (segment,) = segments(path)
    offsets = record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[2] + 40] ^= 0x10
    segment.write_bytes(bytes(data))
    # the index covers the damaged record: reading it (or verify) finds the damage
    with open_store(path) as store:
        with pytest.raises(CorruptionError) as raised:
            list(store.read_all())
        assert (raised.value.path, raised.value.offset) == (str(segment), offsets[2])
        assert "checksum" in str(raised.value) and str(segment) in str(raised.value)
        assert numbers(store, "s-2") == [2, 5]  # streams without the damaged record still read
        with pytest.raises(CorruptionError):
            store.verify()
    # without the index, opening scans the log and refuses it; nothing is cut off
    (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError) as raised:
        open_store(path)
    assert (raised.value.path, raised.value.offset) == (str(segment), offsets[2])
    assert "was written after position 4 was on disk" in raised.value.reason
    assert segment.read_bytes() == bytes(data)


def test_a_damaged_segment_header_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, segment_size=512) as store:
        for i in range(20):
            store.append("s", events(i))
    first = segments(path)[0]
    data = bytearray(first.read_bytes())
    data[20] ^= 1
    first.write_bytes(bytes(data))
    (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError) as raised:
        open_store(path, segment_size=512)
    assert (raised.value.path, raised.value.offset) == (str(first), 0)


def test_a_segment_whose_creation_was_torn_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s", events(1))
    (path / "segment-00000002.log").write_bytes(b"\x89ORX")
    with open_store(path) as store:
        assert numbers(store) == [1]
        store.append("s", events(2))
    assert [p.name for p in segments(path)] == ["segment-00000001.log"]


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path, segment_size=512) as store:
        for i in range(20):
            store.append("s", events(i))
    segments(path)[1].unlink()
    with pytest.raises(CorruptionError, match="missing"):
        open_store(path, segment_size=512)


# -- problems as values ----------------------------------------------------------------------------


def test_why_bytes_are_no_record_is_a_typed_problem_shown_as_before() -> None:
    record = _record(1, 0, 0, 1)
    assert check_frame(record, 0, len(record)) == (len(record) - 12, int.from_bytes(record[4:8], "little"))
    damaged = bytearray(record)
    damaged[30] ^= 1
    cases = {
        Flaw.INCOMPLETE_FRAME: (record[:5], 5),
        Flaw.BAD_MAGIC: (b"ORX?" + record[4:], len(record)),
        Flaw.INCOMPLETE_RECORD: (record, len(record) - 1),
        Flaw.SHORT_BUFFER: (record[:-1], len(record)),
        Flaw.CHECKSUM_MISMATCH: (bytes(damaged), len(record)),
        Flaw.IMPOSSIBLE_LENGTH: (record[:8] + (5).to_bytes(4, "little") + record[12:], len(record)),
    }
    shown = {}
    for flaw, (buf, available) in cases.items():
        problem = check_frame(buf, 0, available)
        assert isinstance(problem, RecordProblem) and problem.flaw is flaw, (flaw, problem)
        shown[flaw] = str(problem)
    # the text in CorruptionError and in the recovery warnings (docs/cli.md shows one)
    assert shown[Flaw.CHECKSUM_MISMATCH] == "record checksum mismatch"
    assert shown[Flaw.IMPOSSIBLE_LENGTH] == "impossible record length 5"
    assert shown[Flaw.INCOMPLETE_RECORD] == "incomplete record"


def test_a_header_of_a_newer_format_is_a_problem_of_its_own_kind() -> None:
    header = bytearray(pack_segment_header(1, bytes(16), 0))
    header[20] ^= 1
    with pytest.raises(FormatProblem) as damaged:
        unpack_segment_header(bytes(header))
    assert not isinstance(damaged.value, NewerFormat)
    header[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    with pytest.raises(FormatProblem, match="fails its check") as damaged:  # no version check: damage
        unpack_segment_header(bytes(header))
    assert not isinstance(damaged.value, NewerFormat)
    header[40:44] = zlib.crc32(bytes(header[:12])).to_bytes(4, "little")
    with pytest.raises(NewerFormat, match=f"newer format version {FORMAT_VERSION + 1}"):
        unpack_segment_header(bytes(header))
