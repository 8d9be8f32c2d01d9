"""Messages (commands, events, envelopes) and their serialization."""

from orchestrix.core.messaging.evolution import Upcaster, upcaster
from orchestrix.core.messaging.messages import Command, Event, NewEvent, RecordedEvent
from orchestrix.core.messaging.serializer import RawEvent, RawSerializer, Serializer

__all__ = [
    "Command",
    "Event",
    "NewEvent",
    "RawEvent",
    "RawSerializer",
    "RecordedEvent",
    "Serializer",
    "Upcaster",
    "upcaster",
]
