"""The persisted index: where each stream's records are, which event ids exist, and position marks.

It lives in an SQLite database beside the log, written without fsync and rebuilt from the log
whenever it is missing, damaged or does not match the log. It covers the log up to a
*covered* position; records after that are scanned from the log when a store opens. The log
stays the only truth: nothing here is ever needed to recover an event.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import threading
import urllib.parse
import uuid
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, NamedTuple

from orchestrix.core.eventsourcing.store import NO_STREAM
from orchestrix.infrastructure.file._format import SEGMENT_HEADER_SIZE, Head

INDEX_VERSION = 2
CHUNK = 512
"""Record locations per stored chunk of one stream."""
MARK_EVERY = 128
"""Positions between two marks, the entry points of ``read_all``."""
FIRST_VERSION = NO_STREAM + 1
"""The version of a stream's first event."""
ID_SIZE = 16
"""Bytes of an event id."""
GENERATION_BITS = 18
"""Event ids are kept by generation: the ids of 2**18 consecutive positions.

Random ids inserted into one B-tree land on random pages: once it holds millions of ids, every
index checkpoint rewrote most of its pages (a store of 3M events appended a third as fast as an
empty one, and its WAL took ~460 bytes per event). Keyed by (generation, id), a checkpoint only
touches the current generation's few thousand pages, whatever the store's size. A lookup seeks
once per generation instead of once, and only runs for the ids the filters cannot rule out.
"""
TRANSACTION_EVENTS = 16384
"""Events added per SQLite transaction at most: the WAL holds about one transaction's pages."""
WAL_LIMIT = 8 << 20
"""WAL bytes past which a checkpoint truncates it (after a commit, if no reader holds it back)."""
WRITE_CACHE_KIB = 16384
"""SQLite page cache of a writing connection."""
_OFFSET_BITS = 40
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks(
    stream TEXT NOT NULL, first_version INTEGER NOT NULL, entries BLOB NOT NULL,
    PRIMARY KEY (stream, first_version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ids(
    generation INTEGER NOT NULL, id BLOB NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (generation, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks(
    position INTEGER PRIMARY KEY, segment INTEGER NOT NULL, "offset" INTEGER NOT NULL);
"""

_INSERT_IDS = f"""
WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < :count)
INSERT OR IGNORE INTO ids(generation, id, position)
SELECT (:first + i) >> {GENERATION_BITS}, substr(:ids, i * 16 + 1, 16), :first + i FROM k ORDER BY 1, 2
"""
"""Inserts the ids of consecutive positions from ``:first`` on, given as one blob of 16-byte ids.

Named parameters, bound from a dict: numbered ones (``?1``) bound from a sequence are deprecated
since Python 3.12 and an error from 3.14.

Sorted first: random ids land on random B-tree pages, and in key order each page is visited
once (a third less CPU per checkpoint once the index holds a million ids).
"""


_ChunkRow = tuple[str, int, bytes]
"""(stream, first version, entries) of one row of the chunks table."""


Entry = tuple[int, int, int, str, int, int, int, int, bytes]
"""One record as the indexes see it: where it is and what it holds; its fields by the names below.

A plain tuple of atomic values, not a NamedTuple: the garbage collector stops tracking an exact
tuple whose items it does not track, never an instance of a subclass. The tail keeps up to a
checkpoint's worth of records in memory, and each tracked one was walked by every full
collection (15-51 ms per collection under load, with the event loop stalled; bench/README.md).
The event ids are one ``bytes`` (``IDS``, 16 bytes per event, see :func:`event_ids`), not a
tuple: an inner tuple still tracked when the collector looks at the record keeps the record
tracked, and the collector's walk may reach the outer tuple first.
"""
POSITION: Final = 0
COUNT: Final = 1
VERSION: Final = 2
STREAM: Final = 3
SEGMENT: Final = 4
OFFSET: Final = 5
SIZE: Final = 6
CRC: Final = 7
IDS: Final = 8


def new_entry(
    position: int,
    count: int,
    version: int,
    stream: str,
    segment: int,
    offset: int,
    size: int,
    crc: int,
    ids: tuple[bytes, ...],
) -> Entry:
    """An entry, its fields named (the hot paths build the tuple themselves)."""
    return (position, count, version, stream, segment, offset, size, crc, b"".join(ids))


def event_ids(entry: Entry) -> list[bytes]:
    """The record's event ids, in order."""
    ids = entry[IDS]
    return [ids] if entry[COUNT] == 1 else [ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)]


def last_position(entry: Entry) -> int:
    """The position of the record's last event."""
    return entry[POSITION] + entry[COUNT] - 1


def last_version(entry: Entry) -> int:
    """The stream version of the record's last event."""
    return entry[VERSION] + entry[COUNT] - 1


class Covered(NamedTuple):
    """How far the index reaches, and the last record it covers (to check it against the log)."""

    end: Head
    record_offset: int
    record_crc: int


EMPTY = Covered(Head(0, 1, SEGMENT_HEADER_SIZE), 0, 0)


class IndexDamaged(Exception):
    """The index database cannot be used; the store deletes it and rebuilds from the log."""


class Mode(enum.Enum):
    """How an index is opened: the store's own file, that file read-only, or a private one in memory."""

    WRITE = "write"
    READ_ONLY = "read-only"
    """The file as it is: nothing written (a read-only store reads another process's index)."""
    MEMORY = "memory"
    """A private, empty index in memory (a read-only store whose index file is missing or stale)."""


def _connect(path: str, sync: bool, mode: Mode = Mode.WRITE, writer: bool = False) -> sqlite3.Connection:
    if mode is Mode.WRITE:
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False, uri=True)
    try:
        if mode is Mode.WRITE:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL never corrupts a WAL database (it may lose the last commits: the log has them)
            conn.execute("PRAGMA synchronous=NORMAL" if sync else "PRAGMA synchronous=OFF")
            if writer:
                # Checkpoints revisit the newest pages of the ids and chunks: 2 MiB (the default)
                # kept them reading those back from the OS. Only the pages used are held.
                conn.execute(f"PRAGMA cache_size={-WRITE_CACHE_KIB}")
        elif mode is Mode.READ_ONLY:
            conn.execute("PRAGMA query_only=ON")
    except BaseException:  # a damaged database fails here: the caller never sees this connection
        conn.close()
        raise
    return conn


class Index:
    """The SQLite index of one store. Thread-safe; safe to share between processes."""

    def __init__(self, path: str, store_id: bytes, sync: bool = True, mode: Mode = Mode.WRITE) -> None:
        self.path = path
        self.mode = mode
        self._store_id = store_id
        self._sync = sync
        if mode is Mode.READ_ONLY:
            self._target = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
        elif mode is Mode.MEMORY:  # shared by this index's two connections, and by nothing else
            self._target = f"file:orchestrix-index-{uuid.uuid4().hex}?mode=memory&cache=shared"
        else:
            self._target = path
        try:
            if mode is Mode.READ_ONLY and not all(os.path.isfile(path + end) for end in ("", "-wal", "-shm")):
                # Without its -wal and -shm (no process has the index open) SQLite would create
                # them even for a read-only connection: the caller builds its own index instead.
                raise sqlite3.OperationalError("no index file open by a writer")
            self._read = _connect(self._target, sync, mode)
            self._write = _connect(self._target, sync, mode, writer=True)
            if mode is not Mode.READ_ONLY:
                self._write.executescript(_SCHEMA)
            meta = dict(self._read.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            self.close()
            raise IndexDamaged(str(exc)) from exc
        if meta and (meta.get("version") != INDEX_VERSION or meta.get("store_id") != store_id):
            self.close()
            raise IndexDamaged("index belongs to another store or another index version")
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()

    def connect(self) -> sqlite3.Connection:
        """A connection of its own, for a long read on another thread."""
        return _connect(self._target, self._sync, self.mode)

    @staticmethod
    def remove(path: str) -> None:
        """Delete an index database and its WAL files."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)

    def close(self) -> None:
        """Close both connections."""
        for name in ("_read", "_write"):
            conn = getattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                setattr(self, name, None)

    # -- coverage --------------------------------------------------------------------------

    def covered(self) -> Covered:
        """How far the index reaches (EMPTY for a new index)."""
        with self._read_lock:
            meta = dict(self._read.execute("SELECT key, value FROM meta"))
        if "position" not in meta:
            return EMPTY
        return Covered(
            Head(meta["position"], meta["segment"], meta["offset"]), meta["record_offset"], meta["record_crc"]
        )

    def reset(self) -> None:
        """Forget everything: the index no longer matches the log."""
        with self._write_lock:
            self._write.execute("BEGIN IMMEDIATE")
            try:
                for table in ("meta", "chunks", "ids", "marks"):
                    self._write.execute(f"DELETE FROM {table}")  # fixed table names, no data
                self._write.execute("COMMIT")
            except BaseException:
                self._write.execute("ROLLBACK")
                raise

    # -- adding ----------------------------------------------------------------------------

    def add(self, entries: Sequence[Entry]) -> int:
        """Index ``entries`` (consecutive records) beyond what is covered; returns the new covered position.

        Several processes may add the same records: each adds only what the index lacks. Many
        records go in as several transactions, so that the WAL stays the size of one.
        """
        covered = 0
        start = 0
        while True:
            end, events = start, 0
            while end < len(entries) and (events < TRANSACTION_EVENTS or end == start):
                events += entries[end][COUNT]
                end += 1
            covered = self._add_part(entries[start:end])
            if end >= len(entries):
                return covered
            start = end

    def _add_part(self, entries: Sequence[Entry]) -> int:
        with self._write_lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                meta: dict[str, int] = dict(conn.execute("SELECT key, value FROM meta"))
                covered = meta.get("position", 0)
                if entries and entries[0][POSITION] > covered:  # the usual case: none indexed yet
                    fresh = list(entries)
                else:
                    fresh = [e for e in entries if e[POSITION] > covered]
                if not fresh or fresh[0][POSITION] != covered + 1:
                    conn.execute("COMMIT")
                    return covered
                self._add(conn, fresh, meta.get("last_mark", -MARK_EVERY))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            self._truncate_wal(conn)
        return last_position(fresh[-1])

    def _truncate_wal(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and empty it, once it is big and no reader needs it.

        SQLite's own checkpoints never shrink the file, and cannot restart it while any reader
        holds an older snapshot: while the store stayed open its WAL grew with the store (gone
        only at close). Without waiting: a reader in the way only puts this off to the next add.
        """
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:  # an index in memory has no WAL file
            return
        if size <= WAL_LIMIT:
            return
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:  # busy: another process checkpoints or writes
            pass
        finally:
            conn.execute("PRAGMA busy_timeout=60000")

    def _add(self, conn: sqlite3.Connection, entries: list[Entry], last_mark: int) -> None:
        count = sum(e[COUNT] for e in entries)
        first, last = entries[0], entries[-1]
        blob = b"".join([e[IDS] for e in entries])
        if last_position(last) + 1 - first[POSITION] == count and len(blob) == ID_SIZE * count:
            # One statement for every id: SQLite runs it without the GIL, which executemany
            # takes back for each row (each time making the appenders wait for it).
            conn.execute(_INSERT_IDS, {"ids": blob, "first": first[POSITION], "count": count})
        else:
            conn.executemany(
                "INSERT OR IGNORE INTO ids(generation, id, position) VALUES (?, ?, ?)",
                [
                    ((e[POSITION] + i) >> GENERATION_BITS, event_id, e[POSITION] + i)
                    for e in entries
                    for i, event_id in enumerate(event_ids(e))
                ],
            )
        by_stream: dict[str, list[Entry]] = {}
        for e in entries:
            by_stream.setdefault(e[STREAM], []).append(e)
        chunks: list[_ChunkRow] = []
        for stream, mine in by_stream.items():
            self._extend_stream(conn, stream, mine, chunks)
        chunks.sort()  # in key order each B-tree page is visited once (a third less for new streams)
        conn.executemany(
            "INSERT OR REPLACE INTO chunks(stream, first_version, entries) VALUES (?, ?, ?)", chunks
        )
        marks = []
        for position, _, _, _, segment, offset, _, _, _ in entries:
            if position >= last_mark + MARK_EVERY or offset == SEGMENT_HEADER_SIZE:
                marks.append((position, segment, offset))
                last_mark = position
        conn.executemany('INSERT OR REPLACE INTO marks(position, segment, "offset") VALUES (?, ?, ?)', marks)
        last = entries[-1]
        meta = {
            "version": INDEX_VERSION,
            "store_id": self._store_id,
            "position": last_position(last),
            "segment": last[SEGMENT],
            "offset": last[OFFSET] + last[SIZE],
            "record_offset": last[OFFSET],
            "record_crc": last[CRC],
            "last_mark": last_mark,
        }
        conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())

    def _extend_stream(
        self,
        conn: sqlite3.Connection,
        stream: str,
        entries: list[Entry],
        chunks: list[_ChunkRow],
    ) -> None:
        """Add the stream's chunk rows for ``entries`` to ``chunks``, filling up its last chunk first."""
        row = None
        if entries[0][VERSION] > FIRST_VERSION:  # a stream's first record starts a chunk: no lookup
            row = conn.execute(
                "SELECT first_version, entries FROM chunks WHERE stream = ? "
                "ORDER BY first_version DESC LIMIT 1",
                (stream,),
            ).fetchone()
        if row is not None and len(row[1]) < CHUNK * 32:
            first_version, chunk = row[0], array("q", row[1])
        else:
            first_version, chunk = entries[0][VERSION], array("q")
        for position, count, version, _, segment, offset, _, _, _ in entries:
            if len(chunk) >= CHUNK * 4:
                chunks.append((stream, first_version, chunk.tobytes()))
                first_version, chunk = version, array("q")
            chunk.extend((version, count, position, (segment << _OFFSET_BITS) | offset))
        chunks.append((stream, first_version, chunk.tobytes()))

    # -- looking up ------------------------------------------------------------------------

    def stream_version(self, stream: str, bound: int) -> int | None:
        """The stream's last version among records at positions <= ``bound``; None if it has none."""
        with self._read_lock:
            rows = self._read.execute(
                "SELECT entries FROM chunks WHERE stream = ? ORDER BY first_version DESC", (stream,)
            )
            try:
                for (blob,) in rows:
                    chunk: array[int] = array("q", blob)
                    for k in range(len(chunk) - 4, -1, -4):
                        if chunk[k + 2] <= bound:
                            return chunk[k] + chunk[k + 1] - 1
            finally:
                rows.close()
        return None

    def stream_records(
        self, stream: str, from_version: int, bound: int
    ) -> Iterator[tuple[int, int, int, int, int]]:
        """(first version, count, position, segment, offset) of the stream's records up to ``bound``.

        Only records holding versions >= ``from_version`` are yielded, a few chunks at a time.
        """
        with self._read_lock:
            row = self._read.execute(
                "SELECT MAX(first_version) FROM chunks WHERE stream = ? AND first_version <= ?",
                (stream, from_version),
            ).fetchone()
        after = -1 if row is None or row[0] is None else row[0] - 1
        while True:
            with self._read_lock:
                page = self._read.execute(
                    "SELECT first_version, entries FROM chunks WHERE stream = ? AND first_version > ? "
                    "ORDER BY first_version LIMIT 8",
                    (stream, after),
                ).fetchall()
            for first_version, blob in page:
                after = first_version
                chunk = array("q", blob)
                for k in range(0, len(chunk), 4):
                    version, count, position, place = chunk[k : k + 4]
                    if position > bound:
                        return
                    if version + count > from_version:
                        yield version, count, position, place >> _OFFSET_BITS, place & _OFFSET_MASK
            if len(page) < 8:
                return

    def positions_of(self, ids: Iterable[bytes]) -> dict[bytes, int]:
        """The positions of those ``ids`` the index knows."""
        wanted = list(ids)
        found: dict[bytes, int] = {}
        if not wanted:
            return found
        with self._read_lock:
            top = self._read.execute("SELECT MAX(generation) FROM ids").fetchone()[0]
            if top is None:
                return found
            # integers written into the statement: one seek per (generation, id) pair
            generations = ",".join(str(g) for g in range(int(top) + 1))
            for k in range(0, len(wanted), 500):
                part = wanted[k : k + 500]
                marks = ",".join("?" * len(part))
                rows = self._read.execute(
                    f"SELECT id, position FROM ids WHERE generation IN ({generations}) AND id IN ({marks})",
                    part,
                )
                for event_id, position in rows:  # an id stored twice: its first position counts
                    if found.get(event_id, position) >= position:
                        found[event_id] = position
        return found

    def mark_before(self, position: int) -> tuple[int, int, int] | None:
        """(position, segment, offset) of the last marked record starting at or before ``position``."""
        with self._read_lock:
            mark: tuple[int, int, int] | None = self._read.execute(
                'SELECT position, segment, "offset" FROM marks WHERE position <= ? '
                "ORDER BY position DESC LIMIT 1",
                (position,),
            ).fetchone()
        return mark
