"""Named, transactional schema migrations for the PostgreSQL store, recorded in ``migrations``.

The schema mirrors the SQLite store's (``billing.migrations``) column for column and in the
same representation (ISO-8601 text times, decimal-string costs, hex hashes), so the same
``billing.ledger`` code chains and verifies both. Each migration runs in one transaction
together with the row that records it, under a transaction-level advisory lock, so two
processes starting at once cannot both apply it. Migrations are only ever appended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infermeter.billing.ledger import GENESIS_HASH
from infermeter.billing.pg_budget_schema import BUDGET_STATEMENTS
from infermeter.core.errors import ConfigError
from infermeter.core.records import iso, utc_now

# pg_advisory_xact_lock key: "infermeter migrations"; any constant shared by all processes.
_MIGRATION_LOCK = 0x1F3E7E_0001


@dataclass(frozen=True, slots=True)
class PgMigration:
    name: str
    statements: tuple[str, ...]


_APPEND_ONLY = "the usage ledger is append-only; record a correction as a new reversal or adjustment entry"
_CHECKPOINTS_ONLY_ADDED = "signed checkpoints are never changed or removed; sign a new one instead"

_COMMITMENTS_ONLY_ADDED = (
    "commitments are never changed or removed; add a new commitment (with end_at) instead"
)
_PLANS_ONLY_ADDED = (
    "price plan versions and assignments are never changed or removed; add a new version or "
    "assignment that takes effect later"
)


def _refuse(table: str, message: str) -> tuple[str, ...]:
    """A trigger function and row + TRUNCATE triggers that refuse to change ``table``.

    TRUNCATE fires no DELETE trigger, hence the statement-level one.
    """
    fn = f"{table}_append_only"
    return (
        f"""CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION '{message}'; END $$""",
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    )


PG_MIGRATIONS: tuple[PgMigration, ...] = (
    PgMigration(
        "0001_tenants_and_keys",
        (
            """CREATE TABLE tenants (
                tenant_id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_at TEXT NOT NULL,
                budget TEXT
            )""",
            """CREATE TABLE api_keys (
                key_id TEXT PRIMARY KEY,
                tenant_id TEXT REFERENCES tenants (tenant_id),
                admin BOOLEAN NOT NULL,
                secret_sha256 TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                created_at TEXT NOT NULL,
                revoked_at TEXT
            )""",
            "CREATE INDEX api_keys_tenant ON api_keys (tenant_id)",
        ),
    ),
    PgMigration(
        "0002_ledger",
        (
            """CREATE TABLE ledger (
                seq BIGINT PRIMARY KEY,
                record_id TEXT NOT NULL UNIQUE,
                request_id TEXT NOT NULL UNIQUE,
                tenant_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                event_time TEXT NOT NULL,
                day TEXT NOT NULL,
                model TEXT NOT NULL,
                service_tier TEXT NOT NULL,
                warmup SMALLINT NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                device_us BIGINT NOT NULL,
                ru_micros BIGINT NOT NULL,
                cost TEXT NOT NULL,
                currency TEXT NOT NULL,
                payload TEXT NOT NULL,
                leaf_hash TEXT NOT NULL,
                entry_hash TEXT NOT NULL
            )""",
            "CREATE INDEX ledger_tenant_seq ON ledger (tenant_id, seq)",
            "CREATE INDEX ledger_tenant_day ON ledger (tenant_id, day)",
            *_refuse("ledger", _APPEND_ONLY),
            # The one row every appender locks (SELECT … FOR UPDATE): it serialises appends
            # across processes and records the size and last entry hash.
            """CREATE TABLE ledger_head (
                id SMALLINT PRIMARY KEY CHECK (id = 0),
                size BIGINT NOT NULL,
                head TEXT NOT NULL
            )""",
            f"INSERT INTO ledger_head (id, size, head) VALUES (0, 0, '{GENESIS_HASH.hex()}')",
        ),
    ),
    PgMigration(
        "0003_checkpoints",
        (
            """CREATE TABLE ledger_log (
                id SMALLINT PRIMARY KEY CHECK (id = 0),
                origin TEXT NOT NULL
            )""",
            "INSERT INTO ledger_log (id, origin) VALUES "
            "(0, 'infermeter/' || substr(md5(random()::text || clock_timestamp()::text), 1, 16))",
            """CREATE TABLE checkpoints (
                number BIGINT PRIMARY KEY,
                origin TEXT NOT NULL,
                tree_size BIGINT NOT NULL,
                root_hash TEXT NOT NULL,
                timestamp TEXT NOT NULL,
                key_id TEXT NOT NULL,
                signature TEXT NOT NULL
            )""",
            "CREATE INDEX checkpoints_tree_size ON checkpoints (tree_size)",
            *_refuse("checkpoints", _CHECKPOINTS_ONLY_ADDED),
            *_refuse("ledger_log", "the ledger log origin never changes"),
        ),
    ),
    PgMigration(
        "0005_price_plans",
        (
            """CREATE TABLE plan_versions (
                plan TEXT NOT NULL,
                version INTEGER NOT NULL,
                effective_from TEXT NOT NULL,
                currency TEXT NOT NULL,
                prices TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (plan, version)
            )""",
            """CREATE TABLE plan_assignments (
                number BIGSERIAL PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
                plan TEXT NOT NULL,
                effective_from TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            *_refuse("plan_versions", _PLANS_ONLY_ADDED),
            *_refuse("plan_assignments", _PLANS_ONLY_ADDED),
        ),
    ),
    PgMigration(
        "0006_rate_limits",
        (
            """CREATE TABLE rate_limits (
                subject TEXT PRIMARY KEY,
                requests_per_min BIGINT,
                tokens_per_min BIGINT,
                ru_per_min TEXT,
                updated_at TEXT NOT NULL
            )""",
        ),
    ),
    # shared budgets: accounts, reservations, worker leases (billing.pg_budget_schema)
    PgMigration("0007_shared_budgets", BUDGET_STATEMENTS),
    PgMigration(
        "0008_commitments",
        (
            """CREATE TABLE commitments (
                number BIGSERIAL PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
                ru_per_month TEXT NOT NULL,
                per_1000_ru TEXT NOT NULL,
                start_at TEXT NOT NULL,
                end_at TEXT,
                created_at TEXT NOT NULL
            )""",
            *_refuse("commitments", _COMMITMENTS_ONLY_ADDED),
        ),
    ),
)


def pg_migrate(conn: Any, migrations: tuple[PgMigration, ...] = PG_MIGRATIONS) -> list[str]:
    """Apply the migrations the database lacks, in order; return the names applied.

    ``conn`` is a psycopg connection in autocommit mode.
    """
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        present = {name for (name,) in conn.execute("SELECT name FROM migrations")}
        unknown = sorted(present - {m.name for m in migrations})
        if unknown:
            raise ConfigError(
                f"the database has migrations {unknown} that this infermeter does not know; "
                "it was written by a newer version: upgrade infermeter to open it"
            )
        for migration in migrations:
            if migration.name in present:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (%s, %s)", (migration.name, iso(utc_now()))
            )
            applied.append(migration.name)
    return applied


__all__ = ["PG_MIGRATIONS", "PgMigration", "pg_migrate"]
