"""Where is this event id, and what is this stream's version: the append path's one question.

An append looks up every event id it writes (a retried append must find its first copy; an id
stored elsewhere is refused) and, to check an expected version, its stream's current version.
:class:`Locator` answers both, from three places in order of cost:

* the *tail*: every record after the position the persisted index covers (this process's own
  appends and those it read from other processes), in memory by position, stream and event id
  (in shapes the garbage collector does not track, see :class:`Locator`);
* *filters* over the event ids and stream names of the indexed part (:class:`Seen`): for a
  fresh id and a new stream (nearly every append) the index queries would find nothing, and
  cost more than the rest of the append (about a quarter of a single writer's throughput,
  measured); the filters answer "certainly not in the index" without a query, and a false
  "maybe" only costs the query;
* the SQLite index (:mod:`._index`), and for an id found there the log itself, which says the
  id's stream and version.

The locator is not thread-safe: the view's state lock guards it, except its filters, which
have a lock of their own. Reads use it too (a stream's records after the index, the record
holding a position).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator

from orchestrix.core.errors import StoreError
from orchestrix.core.eventsourcing.store import NO_STREAM
from orchestrix.infrastructure.file._format import RecordInfo
from orchestrix.infrastructure.file._index import (
    COUNT,
    IDS,
    POSITION,
    STREAM,
    VERSION,
    Entry,
    Index,
    event_ids,
    last_position,
    last_version,
)

log = logging.getLogger(__name__)

VERSION_CACHE_LIMIT = 65536
"""Stream versions found in the index that the locator keeps; past that the cache starts over."""
BITS_PER_KEY = 10
"""Filter bits per key it is sized for: about 1.7% false "maybe" when full, with 3 probes."""
MAX_BITS = 1 << 29
"""64 MiB per filter at most: past that the false "maybe"s grow, and queries come back."""
MIN_BITS = 1 << 20
"""128 KiB per filter at least."""
_STREAMS = "SELECT DISTINCT stream FROM chunks"
_PAGE = 4096
"""Keys read per statement while building: each page is a read of its own, so no snapshot is
held for the whole build (one would keep the index's WAL from being emptied, and it grew by
hundreds of MB while a big store's filters were built)."""
_ID_PAGE = (
    f"SELECT generation, id FROM ids WHERE (generation, id) > (?, ?) ORDER BY generation, id LIMIT {_PAGE}"
)
_STREAM_PAGE = f"SELECT DISTINCT stream FROM chunks WHERE stream > ? ORDER BY stream LIMIT {_PAGE}"

Place = tuple[str, int, int]
"""(stream, version, position) of a stored event."""


class Locator:
    """Where each stored event id is and each stream's version, for the whole log this process has read.

    Its own state is the tail: the records after ``bound``, by position, by stream and by
    event id. Older records it finds through its filters (``seen``) and the index.

    The tail holds nothing the garbage collector tracks per record (each one tracked is walked
    by every full collection, which stalls an event loop for tens of ms with a checkpoint's
    worth of them): its records are plain tuples, and a stream's records are chained by their
    numbers (``previous``) rather than listed per stream.
    """

    def __init__(
        self, index: Index, bound: int, records_from: Callable[[int], Iterator[tuple[int, RecordInfo]]]
    ) -> None:
        self.index = index
        self.seen = Seen(index.connect)
        self.bound = bound
        """The index covers every position up to here; the tail holds every record after it."""
        self.entries: list[Entry] = []
        """The tail's records in log order; record number ``dropped + k`` is ``entries[k]``."""
        self.dropped = 0
        """How many records the tail has handed over to the index (numbers below are gone)."""
        self.positions: list[int] = []
        """The first position of each of ``entries``."""
        self.previous: list[int] = []
        """For each of ``entries``, the number of its stream's record before it (-1: none)."""
        self.streams: dict[str, int] = {}
        """The number of each stream's last tail record."""
        self.ids: dict[bytes, Place] = {}
        self.events = 0
        self.versions: dict[str, int] = {}
        """Stream versions looked up in the index; only used while the stream has no tail record."""
        self._records_from = records_from

    # -- the append path's questions ------------------------------------------------------------

    def version(self, stream: str) -> int:
        """The stream's current version, as far as this process has read (NO_STREAM: none)."""
        last = self.streams.get(stream)
        if last is not None:  # the stream's records this process knows (most appends)
            return last_version(self.entries[last - self.dropped])
        version = self.versions.get(stream)
        if version is None:
            indexed = self.bound and self.seen.may_hold_stream(stream)
            found = self.index.stream_version(stream, self.bound) if indexed else None
            version = NO_STREAM if found is None else found
            self._remember(stream, version)
        return version

    def indexed_positions(self, ids: list[bytes]) -> dict[bytes, int]:
        """The positions the index holds for those of ``ids`` (ids the tail does not hold).

        Fresh ids cost no query once the filters are built; asking starts their build.
        """
        maybe = self.seen.may_hold_ids(ids)
        return self.index.positions_of(maybe) if maybe else {}

    def place(self, event_id: bytes, indexed: dict[bytes, int]) -> Place | None:
        """Where ``event_id`` is stored: in the tail, or at its ``indexed`` position in the log.

        ``indexed`` is what :meth:`indexed_positions` found.
        """
        found = self.ids.get(event_id)
        if found is None and event_id in indexed:
            found = self._place_at(indexed[event_id], event_id)
        return found

    def _place_at(self, position: int, event_id: bytes) -> Place:
        for _, info in self._records_from(position):
            if info.position <= position < info.position + info.count:
                if info.ids[position - info.position] != event_id:
                    break
                return info.stream, info.version + position - info.position, position
        path = self.index.path
        raise StoreError(f"{path}: the index disagrees with the log about position {position}; delete it")

    # -- the tail --------------------------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        """Take in the next record of the log."""
        self.extend((entry,))

    def extend(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Take in the next records of the log, in order."""
        streams, ids, positions, previous = self.streams, self.ids, self.positions, self.previous
        number = self.dropped + len(self.entries)
        events = self.events
        self.entries.extend(entries)
        for entry in entries:
            position, count, version, stream = entry[POSITION], entry[COUNT], entry[VERSION], entry[STREAM]
            positions.append(position)
            previous.append(streams.get(stream, -1))
            streams[stream] = number
            number += 1
            if count == 1:
                ids[entry[IDS]] = (stream, version, position)
            else:
                for i, event_id in enumerate(event_ids(entry)):
                    ids[event_id] = (stream, version + i, position + i)
            events += count
        self.events = events

    def stream_entries(self, stream: str, from_version: int) -> list[Entry]:
        """The stream's tail records holding versions >= ``from_version``, in order."""
        entries, previous, dropped = self.entries, self.previous, self.dropped
        found: list[Entry] = []
        number = self.streams.get(stream, -1)
        while number >= dropped:
            entry = entries[number - dropped]
            if last_version(entry) < from_version:
                break  # so are the stream's records before it
            found.append(entry)
            number = previous[number - dropped]
        found.reverse()
        return found

    def entry_at(self, position: int) -> Entry | None:
        """The tail record holding ``position``, if the tail has it."""
        k = bisect_right(self.positions, position) - 1
        if k < 0:
            return None
        entry = self.entries[k]
        return entry if position <= last_position(entry) else None

    def trim(self, covered: int) -> None:
        """Drop the records the index now covers: every position up to ``covered`` (a record end).

        The filters must have taken them in first (``seen.add``): at every moment a record is
        in the tail, the filters or both.
        """
        k = bisect_right(self.positions, covered)
        dropped = self.entries[:k]
        del self.entries[:k]
        del self.positions[:k]
        del self.previous[:k]
        first = self.dropped
        self.dropped = end = first + k
        streams, ids = self.streams, self.ids
        for entry in dropped:
            for event_id in event_ids(entry):
                ids.pop(event_id, None)
            self.events -= entry[COUNT]
            stream = entry[STREAM]
            last = streams.get(stream)
            if last is not None and last < end:  # the stream has no tail record left
                del streams[stream]
                self._remember(stream, last_version(dropped[last - first]))
        self.bound = max(self.bound, covered)

    def _remember(self, stream: str, version: int) -> None:
        """Cache a version found in the index (bounded: the cache is dropped when it grows too big)."""
        if len(self.versions) >= VERSION_CACHE_LIMIT:
            self.versions.clear()
        self.versions[stream] = version


# -- the filters ----------------------------------------------------------------------------------


class _Bloom:
    """A Bloom filter of hashable keys (3 probes from Python's own, per-process hash)."""

    def __init__(self, keys: int) -> None:
        bits = MIN_BITS  # a power of two, so that a mask picks the bit
        while bits < keys * BITS_PER_KEY and bits < MAX_BITS:
            bits <<= 1
        self.capacity = bits // BITS_PER_KEY
        self.count = 0
        self._mask = bits - 1
        self._bits = bytearray(bits >> 3)

    def add_all(self, keys: Iterable[object]) -> None:
        bits, mask = self._bits, self._mask
        n = 0
        for key in keys:  # the probes written out: this runs for every event the index takes in
            h = hash(key)
            one, step = h & 0xFFFFFFFF, (h >> 32) | 1
            p = one & mask
            bits[p >> 3] |= 1 << (p & 7)
            p = (one + step) & mask
            bits[p >> 3] |= 1 << (p & 7)
            p = (one + 2 * step) & mask
            bits[p >> 3] |= 1 << (p & 7)
            n += 1
        self.count += n

    def __contains__(self, key: object) -> bool:
        h = hash(key)
        bits, mask = self._bits, self._mask
        one, step = h & 0xFFFFFFFF, (h >> 32) | 1
        p = one & mask
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (one + step) & mask
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (one + 2 * step) & mask
        return bool(bits[p >> 3] & (1 << (p & 7)))


class Seen:
    """Filters over the event ids and stream names of the indexed part of the log.

    They are built on a background thread from the index, the first time an append needs them
    (a process that only reads never builds them); until then every lookup goes to the index.
    They then take in each record the tail hands over to the index, so they cover every record
    up to the tail's bound (records that other processes index included: this process's tail
    held them first). ``may_hold_*`` answer "maybe" until the filters are built. Adding is
    serialised by a lock; asking is not (bits are only ever set, and a pair of filters is
    swapped in whole).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._using: tuple[_Bloom, _Bloom] | None = None  # (ids, streams)
        self._building: tuple[_Bloom, _Bloom] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def ready(self) -> bool:
        return self._using is not None

    def may_hold_ids(self, ids: list[bytes]) -> list[bytes]:
        """Those of ``ids`` the index may hold (all of them until the filters are built).

        Appends ask this: the first one starts the build.
        """
        using = self._using
        if using is None:
            self._start()
            return ids
        known = using[0]
        return [i for i in ids if i in known]

    def may_hold_stream(self, stream: str) -> bool:
        """Whether the index may hold records of ``stream`` (asking does not start a build)."""
        using = self._using
        return True if using is None else stream in using[1]

    def add(self, entries: list[Entry]) -> None:
        """Take in the records the tail hands over to the index (which already holds them).

        A build that has not started reading yet will read these from the index; the filters
        in use and the ones being read into take them in here.
        """
        with self._lock:
            targets = [pair for pair in (self._using, self._building) if pair is not None]
            if not targets:
                return
            ids = [i for e in entries for i in event_ids(e)]
            streams = [e[STREAM] for e in entries]
            for id_filter, stream_filter in targets:
                id_filter.add_all(ids)
                stream_filter.add_all(streams)
            full = self._using is not None and self._using[0].count > self._using[0].capacity
            grow = full and self._building is None and self._using[0].capacity * BITS_PER_KEY < MAX_BITS  # type: ignore[index]
        if grow:
            self._start(rebuild=True)

    def stop(self) -> None:
        """Stop a build (the store closes) and wait for it."""
        self._stopped = True
        thread = self._thread
        if thread is not None:
            thread.join()

    # -- building ----------------------------------------------------------------------------

    def _start(self, rebuild: bool = False) -> None:
        with self._lock:
            if self._stopped or (self._thread is not None and (not rebuild or self._thread.is_alive())):
                return
            self._thread = threading.Thread(target=self._build, name="orchestrix-file-seen", daemon=True)
            self._thread.start()

    def _build(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error:
            log.exception("orchestrix file store: cannot read the index to build its filters")
            return
        try:
            ids_count = conn.execute("SELECT COUNT(*) FROM ids").fetchone()[0]
            streams_count = conn.execute(f"SELECT COUNT(*) FROM ({_STREAMS})").fetchone()[0]
            pair = (_Bloom(2 * ids_count), _Bloom(2 * streams_count))
            with self._lock:
                self._building = pair  # from now on, hand-overs go in directly
            self._add_pages(conn, _ID_PAGE, (-1, b""), pair[0])
            self._add_pages(conn, _STREAM_PAGE, ("",), pair[1])
            with self._lock:
                if not self._stopped:
                    self._using = pair
        except Exception:  # the filters only spare queries: without them appends ask the index
            log.exception("orchestrix file store: building the index filters failed; appends query the index")
        finally:
            with self._lock:
                self._building = None
            conn.close()

    def _add_pages(
        self, conn: sqlite3.Connection, query: str, after: tuple[object, ...], target: _Bloom
    ) -> None:
        """Add every key ``query`` pages through (keyset paging from ``after``, the key last in
        each row) to ``target``, a page at a time, until done or the filters are stopped."""
        while not self._stopped:
            page = conn.execute(query, after).fetchall()
            if not page:
                return
            with self._lock:
                target.add_all([row[-1] for row in page])
            after = tuple(page[-1])
