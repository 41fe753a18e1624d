"""Store fixtures: ``any_store`` runs a protocol test on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infermeter.billing.store import Store
from tests.pgtools import database, fresh_schema


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with database() as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A PostgreSQL URL whose search path is a fresh, empty schema."""
    return fresh_schema(pg_database)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_any(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Opens the store of this parametrization; the same call again reopens the same database."""
    from infermeter.billing.sqlite_store import SqliteStore

    url = request.getfixturevalue("pg_url") if store_kind == "postgresql" else None

    def make(**kwargs: Any) -> Any:
        if url is not None:
            from infermeter.billing.pg_store import PgStore

            return PgStore(url, **{k: v for k, v in kwargs.items() if k == "max_group"})
        return SqliteStore(tmp_path / "im.db", **kwargs)

    make.url = url  # type: ignore[attr-defined]
    return make


@pytest.fixture
def any_store(open_any: Callable[..., Store]) -> Iterator[Store]:
    s = open_any()
    yield s
    s.close()
