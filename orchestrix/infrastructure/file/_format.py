"""The on-disk format of the file store: file names, headers, record framing and checksums.

Everything here is pure byte work, no file handles; ``docs/file-format.md`` describes the same
layout for readers in other languages. All integers are little-endian.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from orchestrix._speedups import uuid_from_bytes
from orchestrix.core.eventsourcing._backend import new_recorded
from orchestrix.core.messaging.messages import RecordedEvent

FORMAT_VERSION = 2
"""Version 2 added the version check (a CRC-32 of bytes 0-11) to STORE and segment headers."""
OLDEST_FORMAT = 1
"""Version 1 headers (no version check) are still read."""

STORE_FILE = "STORE"
LOCK_FILE = "LOCK"
HEAD_FILE = "HEAD"
INDEX_FILE = "index.sqlite3"
SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".log"

STORE_MAGIC = b"\x89ORXSTO\n"
SEGMENT_MAGIC = b"\x89ORXSEG\n"
HEAD_MAGIC = b"\x89ORXHED\n"
RECORD_MAGIC = b"\xfeORX"

# magic, format version, flags, store id, version check, crc32 of the 36 bytes before it
STORE_STRUCT = struct.Struct("<8sII16sII")
# magic, format version, segment number, store id, base position, version check, crc32 of bytes 0..44
SEGMENT_STRUCT = struct.Struct("<8sII16sQII")
STORE_CHECK_AT = 32
SEGMENT_CHECK_AT = 40
# The version check is a CRC-32 of bytes 0-11 (magic and version): every format from 2 on keeps
# those bytes and this check where they are, so a reader tells a newer format (check matches)
# from a damaged version field (it does not) before it knows anything else of the layout.
SEGMENT_HEADER_SIZE = SEGMENT_STRUCT.size
# magic, last committed position, end offset, segment number, crc32 of bytes 0..28
HEAD_STRUCT = struct.Struct("<8sQQII")
# record frame: magic, crc32 of bytes 8..end, body length (bytes after this field)
FRAME = struct.Struct("<4sII")
FRAME_SIZE = FRAME.size
# record body start: durable position, first position, first version, recorded_at (µs), count, name length
BODY = struct.Struct("<QQQqIH")
SEAL = struct.Struct("<QQQq")  # the first four body fields, written at commit
COUNTS = struct.Struct("<IH")  # the last two: event count, stream name length
EVENT_HEAD = struct.Struct("<16sB")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")

_PREFIX = RECORD_MAGIC + bytes(8)
_BLANK_HEAD = _PREFIX + bytes(SEAL.size)  # frame and commit-time fields, filled in at commit
HAS_CORRELATION = 1
HAS_CAUSATION = 2
BATCH_CONTINUES = 4
"""Set on a record's first event when the next record belongs to the same multi-stream append:
recovery keeps such records only together with the record that ends their append."""
_CONTINUES = bytes([BATCH_CONTINUES])
MAX_BODY = 1 << 30
"""Largest record body accepted on write and believed on read (1 GiB)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_crc32 = zlib.crc32


class FormatProblem(Exception):
    """Raised by the parsers here; the store turns it into CorruptionError or StoreFormatError."""


class NewerFormat(FormatProblem):
    """The file was written by a newer format version: refused as unreadable, not reported as damage."""


class Flaw(enum.Enum):
    """Why :func:`check_frame` found no intact record; each value is the text shown (``{}``: the detail)."""

    INCOMPLETE_FRAME = "incomplete record frame"
    BAD_MAGIC = "bad record magic"
    IMPOSSIBLE_LENGTH = "impossible record length {}"
    INCOMPLETE_RECORD = "incomplete record"
    CHECKSUM_MISMATCH = "record checksum mismatch"
    MALFORMED_BODY = "malformed record body: {}"
    SHORT_BUFFER = "the buffer ends inside the record"
    """Not damage: the caller reads more and asks again."""


class RecordProblem:
    """Why there is no intact record at an offset: ``flaw`` to branch on, ``str()`` to show."""

    __slots__ = ("detail", "flaw")

    def __init__(self, flaw: Flaw, detail: object = "") -> None:
        self.flaw = flaw
        self.detail = detail

    def __str__(self) -> str:
        return self.flaw.value.format(self.detail)

    def __repr__(self) -> str:
        return f"RecordProblem({self.flaw.name}, {self.detail!r})"


_PROBLEM = {flaw: RecordProblem(flaw) for flaw in Flaw}  # the ones without a detail, made once
SHORT_BUFFER = _PROBLEM[Flaw.SHORT_BUFFER]


def segment_name(number: int) -> str:
    """The file name of segment ``number`` (1-based)."""
    return f"{SEGMENT_PREFIX}{number:08d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> int | None:
    """The segment number a file name stands for, or None if it is not a segment file."""
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    if len(digits) != 8 or not digits.isdigit() or int(digits) == 0:
        return None
    return int(digits)


# -- STORE, segment header and HEAD --------------------------------------------------------------


def pack_store(store_id: bytes) -> bytes:
    """The STORE file's bytes."""
    head = STORE_MAGIC + U32.pack(FORMAT_VERSION)
    raw = STORE_STRUCT.pack(STORE_MAGIC, FORMAT_VERSION, 0, store_id, _crc32(head), 0)
    return raw[:-4] + U32.pack(_crc32(raw[:-4]))


def _check_version(data: bytes, check_at: int, what: str) -> int:
    """The format version in ``data[8:12]``, once it is certain that the field is not damaged.

    A version from 2 on comes with its check (a CRC-32 of bytes 0-11 at ``check_at``): a newer
    version whose check matches is a real newer format (NewerFormat); a version whose check does
    not match is damage (FormatProblem), unless it reads 1, whose headers had no check (their
    whole-header checksum is checked next, as it always was).
    """
    version: int = U32.unpack_from(data, 8)[0]
    if len(data) >= check_at + 4 and U32.unpack_from(data, check_at)[0] == _crc32(data[:12]):
        if version > FORMAT_VERSION:
            reads = f"this code reads {OLDEST_FORMAT} to {FORMAT_VERSION}"
            raise NewerFormat(f"written by a newer format version {version} ({reads})")
        if version >= 2:
            return version
    if version != OLDEST_FORMAT:
        raise FormatProblem(f"{what} damaged: its version field reads {version} and fails its check")
    return version


def unpack_store(data: bytes) -> bytes:
    """The store id in a STORE file; FormatProblem if it is not one we can read."""
    if len(data) < 12 or data[:8] != STORE_MAGIC:
        raise FormatProblem("not an orchestrix file store (bad STORE magic)")
    _check_version(data, STORE_CHECK_AT, "STORE file")
    if len(data) != STORE_STRUCT.size:
        raise FormatProblem(f"STORE file has {len(data)} bytes, expected {STORE_STRUCT.size}")
    store_id: bytes
    _, _, _, store_id, _, crc = STORE_STRUCT.unpack(data)
    if _crc32(data[:-4]) != crc:
        raise FormatProblem("STORE file checksum mismatch")
    return store_id


def pack_segment_header(number: int, store_id: bytes, base: int) -> bytes:
    """A segment file's header: it holds events with positions greater than ``base``."""
    check = _crc32(SEGMENT_MAGIC + U32.pack(FORMAT_VERSION))
    raw = SEGMENT_STRUCT.pack(SEGMENT_MAGIC, FORMAT_VERSION, number, store_id, base, check, 0)
    return raw[:-4] + U32.pack(_crc32(raw[:-4]))


def unpack_segment_header(data: bytes) -> tuple[int, int, bytes, int]:
    """(format version, segment number, store id, base position) of a segment header."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FormatProblem(f"segment header has {len(data)} bytes, expected {SEGMENT_HEADER_SIZE}")
    magic, version, number, store_id, base, _, crc = SEGMENT_STRUCT.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise FormatProblem("bad segment magic")
    _check_version(data, SEGMENT_CHECK_AT, "segment header")
    if _crc32(data[: SEGMENT_HEADER_SIZE - 4]) != crc:
        raise FormatProblem("segment header checksum mismatch")
    return version, number, store_id, base


class Head(NamedTuple):
    """The committed end of the log as the last writer published it."""

    position: int
    segment: int
    offset: int


def pack_head(head: Head) -> bytes:
    """The HEAD file's bytes."""
    raw = HEAD_STRUCT.pack(HEAD_MAGIC, head.position, head.offset, head.segment, 0)
    return raw[:-4] + U32.pack(_crc32(raw[:-4]))


def unpack_head(data: bytes) -> Head | None:
    """The head in a HEAD file, or None if it is missing, short or torn."""
    if len(data) < HEAD_STRUCT.size:
        return None
    magic, position, offset, segment, crc = HEAD_STRUCT.unpack_from(data)
    if magic != HEAD_MAGIC or _crc32(data[: HEAD_STRUCT.size - 4]) != crc:
        return None
    return Head(position, segment, offset)


# -- records -------------------------------------------------------------------------------------


def type_field(type_name: str) -> bytes:
    """The length-prefixed type name as it is stored."""
    raw = type_name.encode()
    if len(raw) > 0xFFFF:
        raise FormatProblem(f"type name {type_name[:60]!r}… is longer than 65535 bytes")
    return U16.pack(len(raw)) + raw


def prepare_record(stream: bytes, events: Sequence[tuple[Any, ...]], continues: bool = False) -> bytearray:
    """A whole record except the fields known only at commit; :func:`seal_record` fills them in.

    Each event is ``(event_id, correlation_id, causation_id, type_field, payload)``, all bytes
    (the ids 16 bytes, or None for a missing correlation or causation). ``continues`` marks a
    record that the next record of the same multi-stream append follows (:data:`BATCH_CONTINUES`).
    """
    pack_u32 = U32.pack
    if len(events) == 1:  # most appends: one event, and usually no correlation or causation
        event_id, correlation, causation, type_name, payload = events[0]
        if correlation is None and causation is None:
            counts, size = COUNTS.pack(1, len(stream)), pack_u32(len(payload))
            flag = _CONTINUES if continues else b"\0"  # a stream's part of a multi-stream append
            one = (_BLANK_HEAD, counts, stream, event_id, flag, type_name, size, payload)
            record = bytearray(b"".join(one))
            U32.pack_into(record, 8, len(record) - FRAME_SIZE)
            return record
    parts = [_BLANK_HEAD + COUNTS.pack(len(events), len(stream)), stream]
    append = parts.append
    for k, (event_id, correlation, causation, type_name, payload) in enumerate(events):
        if correlation is None and causation is None and (k or not continues):
            append(event_id + b"\0" + type_name + pack_u32(len(payload)))
        else:
            flags = (
                (HAS_CORRELATION if correlation is not None else 0)
                | (HAS_CAUSATION if causation is not None else 0)
                | (BATCH_CONTINUES if continues and k == 0 else 0)
            )
            append(EVENT_HEAD.pack(event_id, flags) + (correlation or b"") + (causation or b""))
            append(type_name + pack_u32(len(payload)))
        append(payload)
    record = bytearray(b"".join(parts))
    U32.pack_into(record, 8, len(record) - FRAME_SIZE)
    return record


def seal_record(record: bytearray, durable: int, position: int, version: int, recorded_us: int) -> int:
    """Fill in the commit-time fields of a prepared record and its checksum; returns the checksum."""
    SEAL.pack_into(record, FRAME_SIZE, durable, position, version, recorded_us)
    crc = _crc32(memoryview(record)[8:])
    U32.pack_into(record, 4, crc)
    return crc


class RecordInfo(NamedTuple):
    """What the indexes need to know about one record, without its payloads."""

    offset: int
    size: int
    crc: int
    durable: int
    """The last position already on disk when this record was written."""
    position: int
    version: int
    # Shadows tuple.count (a method), which nothing here calls: the field is the format's name.
    count: int  # type: ignore[assignment]
    stream: str
    ids: tuple[bytes, ...]
    continues: bool = False
    """The next record belongs to the same multi-stream append (see :data:`BATCH_CONTINUES`)."""


def check_frame(buf: bytes | memoryview, at: int, available: int) -> tuple[int, int] | RecordProblem:
    """(body length, crc) of a whole, intact record at ``buf[at:]``, else the reason it is not one.

    ``available`` is how many bytes of the file follow ``at`` (the record may not extend past them).
    """
    if available < FRAME_SIZE or len(buf) - at < FRAME_SIZE:
        return _PROBLEM[Flaw.INCOMPLETE_FRAME]
    magic, crc, length = FRAME.unpack_from(buf, at)
    if magic != RECORD_MAGIC:
        return _PROBLEM[Flaw.BAD_MAGIC]
    if length < BODY.size or length > MAX_BODY:
        return RecordProblem(Flaw.IMPOSSIBLE_LENGTH, length)
    if FRAME_SIZE + length > available:
        return _PROBLEM[Flaw.INCOMPLETE_RECORD]
    if len(buf) - at < FRAME_SIZE + length:
        return SHORT_BUFFER
    if _crc32(memoryview(buf)[at + 8 : at + FRAME_SIZE + length]) != crc:
        return _PROBLEM[Flaw.CHECKSUM_MISMATCH]
    return length, crc


def parse_info(buf: bytes | memoryview, at: int, length: int, crc: int, offset: int) -> RecordInfo:
    """The index facts of the intact record at ``buf[at:]``, which lies at ``offset`` in its file."""
    end = at + FRAME_SIZE + length
    durable, position, version, _, count, name_len = BODY.unpack_from(buf, at + FRAME_SIZE)
    p = at + FRAME_SIZE + BODY.size
    try:
        stream = bytes(buf[p : p + name_len]).decode()
    except UnicodeDecodeError as exc:
        raise FormatProblem(f"stream name is not UTF-8: {exc}") from None
    p += name_len
    ids = []
    continues = False
    for k in range(count):
        if p + 17 > end:
            raise FormatProblem("record body ends inside an event")
        event_id, flags = EVENT_HEAD.unpack_from(buf, p)
        if flags & BATCH_CONTINUES:
            if k:
                raise FormatProblem("only a record's first event may mark a multi-stream append")
            continues = True
        ids.append(event_id)
        p += 17 + (16 if flags & HAS_CORRELATION else 0) + (16 if flags & HAS_CAUSATION else 0)
        p += 2 + U16.unpack_from(buf, p)[0]
        p += 4 + U32.unpack_from(buf, p)[0]
    if p != end or count == 0:
        raise FormatProblem("record body length does not match its events")
    return RecordInfo(
        offset, FRAME_SIZE + length, crc, durable, position, version, count, stream, tuple(ids), continues
    )


def timestamp(recorded_us: int) -> datetime:
    """The UTC datetime for microseconds since the Unix epoch, exactly."""
    return _EPOCH + timedelta(microseconds=recorded_us)


def decode_events(
    buf: bytes,
    at: int,
    decode: Callable[[str, bytes], Any],
    min_version: int = 0,
    min_position: int = 0,
) -> Iterator[RecordedEvent]:
    """Yield the events of the intact record at ``buf[at:]`` with version and position at least the minima.

    Payloads are decoded one event at a time, as the caller advances.
    """
    _, position, version, recorded_us, count, name_len = BODY.unpack_from(buf, at + FRAME_SIZE)
    p = at + FRAME_SIZE + BODY.size
    stream = buf[p : p + name_len].decode()
    p += name_len
    recorded_at = timestamp(recorded_us)
    skip = max(min_version - version, min_position - position, 0)
    head = _EVENT_START.unpack_from
    u32 = U32.unpack_from
    new_uuid = uuid_from_bytes
    for i in range(count):
        event_id, flags, type_len = head(buf, p)
        correlation = causation = None
        if flags:  # the ids sit between the flags and the type name
            q = p + 17
            if flags & HAS_CORRELATION:
                correlation = new_uuid(buf[q : q + 16])
                q += 16
            if flags & HAS_CAUSATION:
                causation = new_uuid(buf[q : q + 16])
                q += 16
            type_len = U16.unpack_from(buf, q)[0]
            p = q + 2
        else:
            p += 19
        raw_type = buf[p : p + type_len]
        p += type_len
        payload_len = u32(buf, p)[0]
        p += 4 + payload_len
        if i < skip:
            continue
        type_name = _type_names.get(raw_type)
        if type_name is None:
            type_name = _type_names.setdefault(raw_type, raw_type.decode())
        yield new_recorded(
            new_uuid(event_id),
            stream,
            version + i,
            position + i,
            recorded_at,
            type_name,
            decode(type_name, buf[p - payload_len : p]),
            correlation,
            causation,
        )


_type_names: dict[bytes, str] = {}
"""Decoded type names, shared: a store has a handful of event types."""
_EVENT_START = struct.Struct("<16sBH")  # event id, flags, and (when flags is 0) the type name length
