"""What this process knows about the records the persisted index does not cover yet.

The store keeps every record after the index's covered position here (its own appends and
those it scanned from other processes), so lookups need the index only for older records.
Not thread-safe: the store guards it with its state lock.
"""

from __future__ import annotations

from bisect import bisect_right

from orchestrix.infrastructure.file._index import Entry

VERSION_CACHE_LIMIT = 65536


class Tail:
    """Records after ``bound``, by position, by stream and by event id."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        """The index covers every position up to here; the tail holds every record after it."""
        self.entries: list[Entry] = []
        self.positions: list[int] = []
        self.streams: dict[str, list[Entry]] = {}
        self.ids: dict[bytes, tuple[str, int, int]] = {}
        self.events = 0
        self.versions: dict[str, int] = {}
        """Stream versions looked up in the index; only used while the stream has no tail entry."""

    def add(self, entry: Entry) -> None:
        """Take in the next record of the log."""
        self.extend((entry,))

    def extend(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Take in the next records of the log, in order."""
        streams, ids, events, positions = self.streams, self.ids, self.events, self.positions
        self.entries.extend(entries)
        for entry in entries:
            stream, version, position = entry.stream, entry.version, entry.position
            positions.append(position)
            mine = streams.get(stream)
            if mine is None:
                streams[stream] = [entry]
            else:
                mine.append(entry)
            if entry.count == 1:
                ids[entry.ids[0]] = (stream, version, position)
            else:
                for i, event_id in enumerate(entry.ids):
                    ids[event_id] = (stream, version + i, position + i)
            events += entry.count
        self.events = events

    def version(self, stream: str) -> int | None:
        """The stream's version if the tail or the cache knows it; None means: ask the index."""
        mine = self.streams.get(stream)
        if mine:
            last = mine[-1]
            return last.version + last.count - 1
        return self.versions.get(stream)

    def remember(self, stream: str, version: int) -> None:
        """Cache a version found in the index (bounded: the cache is dropped when it grows too big)."""
        if len(self.versions) >= VERSION_CACHE_LIMIT:
            self.versions.clear()
        self.versions[stream] = version

    def stream_entries(self, stream: str, from_version: int) -> list[Entry]:
        """The stream's tail records holding versions >= ``from_version``."""
        return [e for e in self.streams.get(stream, ()) if e.version + e.count > from_version]

    def entry_at(self, position: int) -> Entry | None:
        """The tail record holding ``position``, if the tail has it."""
        k = bisect_right(self.positions, position) - 1
        if k < 0:
            return None
        entry = self.entries[k]
        return entry if position < entry.position + entry.count else None

    def trim(self, covered: int) -> None:
        """Drop the records the index now covers: every position up to ``covered`` (a record end)."""
        k = bisect_right(self.positions, covered)
        dropped = self.entries[:k]
        del self.entries[:k]
        del self.positions[:k]
        per_stream: dict[str, int] = {}
        for entry in dropped:
            for event_id in entry.ids:
                self.ids.pop(event_id, None)
            per_stream[entry.stream] = per_stream.get(entry.stream, 0) + 1
            self.events -= entry.count
        for stream, n in per_stream.items():
            mine = self.streams[stream]
            if n < len(mine):
                del mine[:n]
                continue
            last = mine[-1]
            del self.streams[stream]
            self.remember(stream, last.version + last.count - 1)
        self.bound = max(self.bound, covered)
