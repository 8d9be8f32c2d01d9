"""Which event ids and stream names the persisted index may hold: Bloom filters, in memory.

An append looks up every event id it writes (a retried append must find its first copy) and,
for a stream this process knows nothing of, the stream's version. Once the index covers part
of the log, each lookup that the tail cannot answer is an SQLite query; for a fresh id and a
new stream (nearly every append) both queries find nothing, and cost more than the rest of
the append (about a quarter of a single writer's throughput, measured). These filters answer
"certainly not in the index" without a query; a false "maybe" only costs the query.

The filters are built on a background thread from the index, the first time an append needs
them (a process that only reads never builds them); until then every lookup goes to the
index. They then take in each record the tail hands over to the index, so they cover every
record up to the tail's bound: the records after it are in the tail itself. Records that
other processes index are taken in the same way, as this process's tail held them first.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable

from orchestrix.infrastructure.file._index import Entry

log = logging.getLogger("orchestrix.file")

BITS_PER_KEY = 10
"""Filter bits per key it is sized for: about 1.7% false "maybe" when full, with 3 probes."""
MAX_BITS = 1 << 29
"""64 MiB per filter at most: past that the false "maybe"s grow, and queries come back."""
MIN_BITS = 1 << 20
"""128 KiB per filter at least."""
_STREAMS = "SELECT DISTINCT stream FROM chunks"


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

    ``may_hold_*`` answer "maybe" until the filters are built. Adding is serialised by a
    lock; asking is not (bits are only ever set, and a pair of filters is swapped in whole).
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
            ids = [i for e in entries for i in e.ids]
            streams = [e.stream for e in entries]
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
            for query, target in (("SELECT id FROM ids", pair[0]), (_STREAMS, pair[1])):
                rows = conn.execute(query)
                while not self._stopped:
                    page = rows.fetchmany(4096)
                    if not page:
                        break
                    with self._lock:
                        target.add_all([row[0] for row in page])
            with self._lock:
                if not self._stopped:
                    self._using = pair
        except Exception:  # the filters only spare queries: without them appends ask the index
            log.exception("orchestrix file store: building the index filters failed; appends query the index")
        finally:
            with self._lock:
                self._building = None
            conn.close()
