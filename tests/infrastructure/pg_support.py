"""Shared helpers for the PostgreSQL tests: the DSN, throwaway schemas, server control.

The tests run when ``ORCHESTRIX_TEST_PG_DSN`` names a database they may create schemas in;
each test (or class) gets its own randomly named schema, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

DSN_VARIABLE = "ORCHESTRIX_TEST_PG_DSN"
SKIP_REASON = (
    f"PostgreSQL tests need {DSN_VARIABLE} (e.g. postgresql://postgres@127.0.0.1:5432/test); "
    "install the extra with pip install -e '.[test]'"
)


def dsn_or_skip() -> str:
    """The test DSN; skips the calling module when it is not set (fails under ORCHESTRIX_REQUIRE_PG)."""
    dsn = os.environ.get(DSN_VARIABLE)
    if not dsn:
        if os.environ.get("ORCHESTRIX_REQUIRE_PG"):
            raise RuntimeError(f"ORCHESTRIX_REQUIRE_PG is set but {DSN_VARIABLE} is not")
        pytest.skip(SKIP_REASON, allow_module_level=True)
    return dsn


def new_schema_name(tag: str = "t") -> str:
    """A fresh schema name nobody else uses."""
    return f"orx_test_{tag}_{uuid.uuid4().hex[:12]}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def throwaway_schema(dsn: str, tag: str = "t") -> Iterator[str]:
    """A schema name for one test; the schema is dropped afterwards if it was created."""
    schema = new_schema_name(tag)
    try:
        yield schema
    finally:
        drop_schema(dsn, schema)


def sql_execute(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on a fresh autocommit connection; returns its rows (if any)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


# -- the server itself (the restart test) ---------------------------------------------------


def _cluster() -> tuple[str, str] | None:
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "5432":
            return fields[0], fields[1]
    return None


def can_restart_server() -> str | None:
    """None if this process can restart the local cluster, else the reason it cannot."""
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root (CI runs as root)"
    if _cluster() is None:
        return "no local pg_ctlcluster-managed cluster on port 5432"
    return None


def restart_server() -> None:
    """Restart the local cluster (fast shutdown: open connections are cut)."""
    version, name = _cluster()  # type: ignore[misc]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def ensure_server_running(dsn: str) -> None:
    """Start the local cluster if it is down, and wait until it accepts connections."""
    import psycopg

    cluster = _cluster()
    for _ in range(60):
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if cluster is not None:
                subprocess.run(
                    ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "start"],
                    capture_output=True,
                    check=False,
                    timeout=120,
                )
            time.sleep(0.5)
    raise RuntimeError("PostgreSQL did not come back")
