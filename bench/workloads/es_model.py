"""The peer's (eventsourcing 9.5.6) aggregate and application, as its docs write them."""

from __future__ import annotations

from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class Note(Aggregate):
    """A note whose state is its latest text."""

    @event("Created")
    def __init__(self, text: str) -> None:
        self.text = text

    @event("Written")
    def write(self, text: str) -> None:
        """Trigger a Written event."""
        self.text = text


class Notes(Application):
    """The application that saves and loads notes."""


def popo_app() -> Notes:
    """An application on the in-memory (POPO) store."""
    return Notes(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def sqlite_app(path: str, **env: Any) -> Notes:
    """An application on the SQLite store as it ships (WAL, synchronous FULL)."""
    return Notes(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path, **env})


def postgres_app(schema: str, **env: Any) -> Notes:
    """An application on the PostgreSQL store in ``schema`` (which must exist)."""
    return Notes(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": "test",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": "5432",
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "",
            "POSTGRES_SCHEMA": schema,
            **env,
        }
    )
