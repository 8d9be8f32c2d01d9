"""The orchestrix side's aggregate: one event type carrying a 128-character text."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from orchestrix.core.eventsourcing.aggregate import AggregateRoot, applies
from orchestrix.core.messaging.messages import Event
from orchestrix.core.messaging.serializer import Serializer


@attrs.frozen
class NoteWritten(Event):
    """The note's text was (re)written."""

    note_id: str
    text: str


class Note(AggregateRoot):
    """A note whose state is its latest text, so replay memory does not grow with history."""

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.text = ""

    def write(self, note_id: str, text: str) -> None:
        """Raise NoteWritten."""
        self.raise_event(NoteWritten(note_id, text))

    @applies(NoteWritten)
    def _written(self, event: NoteWritten) -> None:
        self.id = event.note_id
        self.text = event.text


def serializer() -> Serializer:
    """The serializer the durable stores use for this model."""
    return Serializer([NoteWritten])


def save_new_notes(repo: Any, texts: list[str]) -> float:
    """Create and save one new Note per text, one append each; return the seconds it took."""
    from workloads.common import clock

    start = clock()
    for text in texts:
        note = Note()
        note.write(str(uuid.uuid4()), text)
        repo.save(note)
    return clock() - start
