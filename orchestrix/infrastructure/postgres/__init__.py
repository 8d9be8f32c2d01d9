"""PostgreSQL backend (``pip install 'orchestrix-es[postgres]'``): the only package importing psycopg."""

try:
    import psycopg  # noqa: F401  (here first, so a missing driver is named with the extra)
    import psycopg_pool  # noqa: F401
except ImportError as _missing:  # not installed, or psycopg finding no libpq (_: not public)
    raise ModuleNotFoundError(
        f"the PostgreSQL store needs psycopg 3 and psycopg-pool ({_missing}): "
        "pip install 'orchestrix-es[postgres]', or 'orchestrix-es[postgres-binary]' for psycopg's "
        "binary wheel, which brings its own libpq",
        name=_missing.name,
    ) from _missing

from orchestrix.infrastructure.postgres._schema import MAX_BATCH_SIZE, SCHEMA_VERSION
from orchestrix.infrastructure.postgres.checkpoint import PostgresCheckpointStore
from orchestrix.infrastructure.postgres.errors import (
    BatchTooLargeError,
    DatabaseConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidCheckpointNameError,
    LeaseTimeoutError,
    SchemaNotInitializedError,
)
from orchestrix.infrastructure.postgres.lease import PartitionLease
from orchestrix.infrastructure.postgres.snapshot import PostgresSnapshotStore
from orchestrix.infrastructure.postgres.store import PostgresEventStore

__all__ = [
    "MAX_BATCH_SIZE",
    "SCHEMA_VERSION",
    "BatchTooLargeError",
    "DatabaseConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "InvalidCheckpointNameError",
    "LeaseTimeoutError",
    "PartitionLease",
    "PostgresCheckpointStore",
    "PostgresEventStore",
    "PostgresSnapshotStore",
    "SchemaNotInitializedError",
]
