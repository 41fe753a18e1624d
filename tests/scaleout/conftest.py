"""PostgreSQL (a fresh database per module, a fresh schema per test) for the scale-out tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgtools import database, fresh_schema


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with database() as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return fresh_schema(pg_database)
