"""PostgreSQL backend (``pip install 'orchestrix-es[postgres]'``): the only package importing psycopg."""

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
    "SchemaNotInitializedError",
]
