"""The ``orchestrix`` command on a PostgreSQL store it cannot open: one line, the server's reason,
no password, and hints in terms of the command's own options."""

from __future__ import annotations

import uuid

import pytest

from orchestrix.cli import main
from tests.infrastructure.pg_support import dsn_or_skip, new_schema_name, sql_execute

DSN = dsn_or_skip()


def _with_password(dsn: str) -> str:
    """``dsn`` with a password, which trust authentication ignores (to check it is never shown)."""
    return dsn.replace("postgres@", "postgres:s3cret@", 1)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == ""
    return status, captured.err


def test_an_unknown_database_is_one_line_with_the_servers_reason(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"orx_no_such_db_{uuid.uuid4().hex[:8]}"
    dsn = _with_password(DSN).rsplit("/", 1)[0] + f"/{name}"
    status, err = _run(capsys, "inspect", dsn)
    assert status == 1
    assert err.count("\n") == 1  # no pool log lines before it either
    assert err.startswith("orchestrix: cannot open postgresql://postgres:***@")
    assert f'database "{name}" does not exist' in err
    assert "s3cret" not in err and "couldn't get a connection" not in err


def test_an_unknown_role_is_one_line_with_the_servers_reason(capsys: pytest.CaptureFixture[str]) -> None:
    role = f"orx_no_such_role_{uuid.uuid4().hex[:8]}"
    status, err = _run(capsys, "tail", DSN.replace("postgres@", f"{role}@", 1))
    assert status == 1
    assert err.count("\n") == 1
    assert f'role "{role}" does not exist' in err


def test_a_schema_without_a_store_names_the_schema_option_not_an_api_argument(
    capsys: pytest.CaptureFixture[str],
) -> None:
    schema = new_schema_name("cli_missing")
    status, err = _run(capsys, "verify", _with_password(DSN), "--schema", schema)
    assert status == 1
    assert err.count("\n") == 1
    assert f"no orchestrix tables in schema {schema!r}" in err
    assert "--schema" in err and "create_schema" not in err
    assert "s3cret" not in err
    assert sql_execute(DSN, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)) == []


def test_a_malformed_dsn_is_one_line_naming_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _run(capsys, "inspect", "postgresql://postgres:s3cret@127.0.0.1:5432/test?sslmode=bogus")
    assert status == 1
    assert err.count("\n") == 1
    assert 'invalid sslmode value: "bogus"' in err and "s3cret" not in err


def test_an_unreachable_server_is_one_line_naming_the_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _run(capsys, "inspect", "postgresql://postgres:s3cret@127.0.0.1:1/test?connect_timeout=1")
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith("orchestrix: cannot reach postgresql://postgres:***@127.0.0.1:1/test")
    assert "Connection refused" in err and "couldn't get a connection" not in err
