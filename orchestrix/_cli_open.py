"""How the ``orchestrix`` command opens a store: a file store directory or a PostgreSQL DSN.

A tool never creates a store it was asked to inspect, never prints a password, and imports the
user's serializer only when ``--serializer module:factory`` names it. Part of the command line
(cli.py parses and dispatches; the commands use :func:`open_store`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrix._cli_format import UsageError
from orchestrix.core.errors import OrchestrixError
from orchestrix.core.messaging.serializer import RawSerializer, Serializer

__all__: list[str] = []

_PG_SCHEMES = ("postgresql://", "postgres://")


class Found(Exception):
    """A problem the command found and has described in one line (exit status 1)."""


class Opened:
    """An open store, what kind it is, and how to name it without secrets."""

    def __init__(self, store: Any, kind: str, where: str) -> None:
        self.store = store
        self.kind = kind
        self.where = where
        self.serializer: Serializer = RawSerializer()

    def close(self) -> None:
        self.store.close()


@contextlib.contextmanager
def open_store(args: argparse.Namespace, *, writable: bool = False) -> Iterator[Opened]:
    serializer = serializer_from(args.serializer)
    target: str = args.store
    if is_dsn(target):
        opened = open_postgres(target, args.schema, serializer)
    else:
        opened = open_file(target, serializer, writable=writable)
    opened.serializer = serializer
    try:
        yield opened
    finally:
        opened.close()


def open_file(path: str, serializer: Serializer, *, writable: bool = False) -> Opened:
    from orchestrix.infrastructure.file import FileEventStore

    # FileEventStore creates a store in a missing or empty directory; an inspecting tool must
    # not, so a path is only opened once it holds a store's STORE marker.
    if os.path.exists(path) and not os.path.isdir(path):
        raise Found(f"{path}: is a file, not a file store (a store is a directory); nothing was changed")
    if not os.path.isdir(path):
        raise Found(f"{path}: no such directory, so not a file store (nothing was created)")
    if not FileEventStore.is_store(path):
        raise Found(f"{path}: not an orchestrix file store (no STORE file); nothing was changed")
    # A command that only reads opens read-only: no writer lock (a live writer is never held
    # up), no repair of a torn tail, no file created or written. Only the commands that store a
    # request (dead-letters retry/discard, sagas retry) open the store as a writer.
    store = FileEventStore(path, serializer, read_only=not writable)
    return Opened(store, "file", os.path.abspath(path))


def open_postgres(dsn: str, schema: str, serializer: Serializer) -> Opened:
    try:
        from orchestrix.infrastructure.postgres import (
            DatabaseConfigurationError,
            DatabaseUnavailableError,
            PostgresEventStore,
            SchemaNotInitializedError,
        )
    except ImportError as exc:
        raise Found(f"PostgreSQL support is not installed: {exc}") from None  # names the extra
    # The pool logs each failed connection attempt; its cause (no such database, a refused
    # port) is worth one line, not one per retry.
    pool_log = logging.getLogger("psycopg.pool")
    if not any(isinstance(f, _Once) for f in pool_log.filters):
        pool_log.addFilter(_Once())
    # create_schema=False: inspecting a database must never create tables in it. A short
    # retry budget: a tool should report an unreachable server, not wait out an outage.
    # The store's errors carry the server's own reason (no such database, a refused password)
    # and hide the password; the line adds which store, and hints in terms of this command.
    where = hide_password(dsn)
    try:
        store = PostgresEventStore(
            dsn, serializer, schema=schema, create_schema=False, pool_size=2, retry_timeout=3.0
        )
    except SchemaNotInitializedError:
        raise Found(
            f"{where}: no orchestrix tables in schema {schema!r}, so no store there (nothing was created); "
            "name the store's schema with --schema"
        ) from None
    except DatabaseConfigurationError as exc:
        raise Found(f"cannot open {where}: {scrub(str(exc), dsn)}") from None
    except DatabaseUnavailableError as exc:
        raise Found(f"cannot reach {where}: {scrub(str(exc), dsn)}") from None
    except OrchestrixError:
        raise
    except Exception as exc:  # psycopg refusing a DSN: its message may quote the password
        raise Found(f"cannot use {where}: {scrub(str(exc), dsn)}") from None
    return Opened(store, "postgresql", f"{where} (schema {schema})")


def is_dsn(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database (a URI or libpq ``key=value`` words), not a path."""
    if target.lower().startswith(_PG_SCHEMES):
        return True
    keywords = re.search(r"(^|\s)(host|hostaddr|dbname|user|port)=", target)
    return keywords is not None and not os.path.exists(target)


def _passwords(dsn: str) -> list[str]:
    found = re.findall(r"(?:^|\s)password=(\S+)", dsn)
    found += re.findall(r"^[a-zA-Z]+://[^:/@\s]*:([^@\s]*)@", dsn)
    return [p for p in found if p]


def scrub(text: str, dsn: str) -> str:
    for password in _passwords(dsn):
        text = text.replace(password, "***")
    return text


class _Once(logging.Filter):
    """Lets each distinct log message through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


def hide_password(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, fit to print."""
    if not dsn.lower().startswith(_PG_SCHEMES):
        return scrub(dsn, dsn)  # libpq key=value words
    try:
        parts = urlsplit(dsn)
    except ValueError:  # malformed (an unclosed [IPv6] host, say): hide what looks like one
        return scrub(dsn, dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def serializer_from(spec: str | None) -> Serializer:
    if spec is None:
        return RawSerializer()
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"--serializer wants MODULE:FACTORY, not {spec!r}")
    # The console script's sys.path lacks the working directory, where `python -m` has it;
    # a user naming their own module from their project directory expects it to be found.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for name in attribute.split("."):
            target = getattr(target, name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--serializer {spec}: {exc}") from None
    serializer = target
    if callable(target) and not isinstance(target, Serializer):
        try:
            serializer = target()
        except Exception as exc:  # the user's own factory: say what it raised, not where
            raise UsageError(f"--serializer {spec}: calling it raised {type(exc).__name__}: {exc}") from None
    if not isinstance(serializer, Serializer):
        raise UsageError(f"--serializer {spec} gave {type(serializer).__name__}, not a Serializer")
    return serializer
