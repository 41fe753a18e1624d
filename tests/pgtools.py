"""PostgreSQL for tests: a fresh database per test module, a fresh schema per test.

The machine's PostgreSQL (127.0.0.1:5432, trust auth, user postgres; override with
INFERMETER_TEST_PG) is used; tests that need it are skipped, saying why, only when it is
unreachable or psycopg is not installed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

SERVER = os.environ.get("INFERMETER_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _admin_url() -> str:
    return f"{SERVER}/postgres"


def _reachable() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'infermeter[postgres]')"
    try:
        psycopg.connect(_admin_url(), connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return f"PostgreSQL at {SERVER} is unreachable: {str(exc).strip()}"
    return None


@contextmanager
def database() -> Iterator[str]:
    """CREATE DATABASE infermeter_test_<random>; yield its URL; drop it after."""
    why = _reachable()
    if why is not None:
        pytest.skip(why)
    import psycopg

    name = f"infermeter_test_{secrets.token_hex(6)}"
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(_admin_url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fresh_schema(db_url: str) -> str:
    """A new, empty schema in ``db_url``; the URL that puts it first on the search path."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{db_url}?options={quote(f'-csearch_path={schema}')}"


def checkpoint_log_for(store: object, keys: object, **kwargs: object) -> object:
    """The checkpoint log over ``store``'s database, whichever kind it is."""
    from infermeter.billing.checkpoint_log import CheckpointLog

    url = getattr(store, "url", None)
    if url is None:
        # the SQLite store's one writer makes the log's writes, as in the service
        return CheckpointLog(store.path, keys, write=store.write, **kwargs)  # type: ignore[attr-defined, arg-type]
    from infermeter.billing.pg_checkpoints import PgLogDb

    return CheckpointLog(PgLogDb(url), keys, **kwargs)  # type: ignore[arg-type]


def raw_query(store: object, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Run ``sql`` (``?`` placeholders) on the store's database directly, as a person could."""
    url = getattr(store, "url", None)
    if url is None:
        import sqlite3

        with sqlite3.connect(store.path) as db:  # type: ignore[attr-defined]
            return db.execute(sql, args).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), args)
        return cur.fetchall() if cur.description else []


def raw_edit(store: object, sql: str, *args: object) -> None:
    """Change the store's database behind its back, its append-only triggers disabled first."""
    url = getattr(store, "url", None)
    if url is None:
        import sqlite3

        db = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f"DROP TRIGGER {name}")
        db.execute(sql, args)
        db.commit()
        db.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("ledger", "checkpoints", "ledger_log"):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        conn.execute(sql.replace("?", "%s"), args)
