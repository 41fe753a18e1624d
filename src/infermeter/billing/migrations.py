"""Named, transactional schema migrations for the SQLite store, recorded in ``migrations``.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the row that
records it, so a crash leaves it either wholly applied or not at all, and two processes
opening the same file cannot both apply it. Migrations are only ever appended to this list;
an applied one is never edited (add a new one instead).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from infermeter.billing.ledger import GENESIS_HASH
from infermeter.core.errors import ConfigError
from infermeter.core.records import iso, utc_now


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    statements: tuple[str, ...]


_APPEND_ONLY = "the usage ledger is append-only; record a correction as a new reversal or adjustment entry"
_PUBLIC_LOG_ONLY_ADDED = "the public log only grows: salts, checkpoints and cosignatures are never changed"
_CHECKPOINTS_ONLY_ADDED = "signed checkpoints are never changed or removed; sign a new one instead"
_COMMITMENTS_ONLY_ADDED = (
    "commitments are never changed or removed; add a new commitment (with end_at) instead"
)
_PLANS_ONLY_ADDED = (
    "price plan versions and assignments are never changed or removed; add a new version or "
    "assignment that takes effect later"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
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
                admin INTEGER NOT NULL,
                secret_sha256 TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                created_at TEXT NOT NULL,
                revoked_at TEXT
            )""",
            "CREATE INDEX api_keys_tenant ON api_keys (tenant_id)",
        ),
    ),
    Migration(
        "0002_ledger",
        (
            """CREATE TABLE ledger (
                seq INTEGER PRIMARY KEY,
                record_id TEXT NOT NULL,
                request_id TEXT NOT NULL,
                tenant_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                event_time TEXT NOT NULL,
                day TEXT NOT NULL,
                model TEXT NOT NULL,
                service_tier TEXT NOT NULL,
                warmup INTEGER NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                device_us INTEGER NOT NULL,
                ru_micros INTEGER NOT NULL,
                cost TEXT NOT NULL,
                currency TEXT NOT NULL,
                payload TEXT NOT NULL,
                leaf_hash TEXT NOT NULL,
                entry_hash TEXT NOT NULL
            )""",
            "CREATE UNIQUE INDEX ledger_record_id ON ledger (record_id)",
            "CREATE UNIQUE INDEX ledger_request_id ON ledger (request_id)",
            "CREATE INDEX ledger_tenant_seq ON ledger (tenant_id, seq)",
            "CREATE INDEX ledger_tenant_day ON ledger (tenant_id, day)",
            f"""CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
                BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
            f"""CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
                BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
            # One row: the size and last entry hash, updated with every append, so that
            # entries removed from the end are noticed (until checkpoints are published).
            """CREATE TABLE ledger_head (
                id INTEGER PRIMARY KEY CHECK (id = 0),
                size INTEGER NOT NULL,
                head TEXT NOT NULL
            )""",
            f"INSERT INTO ledger_head (id, size, head) VALUES (0, 0, '{GENESIS_HASH.hex()}')",
        ),
    ),
    Migration(
        "0003_checkpoints",
        (
            # The log's name, signed into every checkpoint: random per installation, so a
            # checkpoint of one infermeter is never taken for another's.
            """CREATE TABLE ledger_log (
                id INTEGER PRIMARY KEY CHECK (id = 0),
                origin TEXT NOT NULL
            )""",
            "INSERT INTO ledger_log (id, origin) VALUES (0, 'infermeter/' || lower(hex(randomblob(8))))",
            # Signed tree heads (billing.checkpoints); number is the order they were made in.
            """CREATE TABLE checkpoints (
                number INTEGER PRIMARY KEY,
                origin TEXT NOT NULL,
                tree_size INTEGER NOT NULL,
                root_hash TEXT NOT NULL,
                timestamp TEXT NOT NULL,
                key_id TEXT NOT NULL,
                signature TEXT NOT NULL
            )""",
            "CREATE INDEX checkpoints_tree_size ON checkpoints (tree_size)",
            f"""CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
                BEGIN SELECT RAISE(ABORT, '{_CHECKPOINTS_ONLY_ADDED}'); END""",
            f"""CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
                BEGIN SELECT RAISE(ABORT, '{_CHECKPOINTS_ONLY_ADDED}'); END""",
            "CREATE TRIGGER ledger_log_no_update BEFORE UPDATE ON ledger_log "
            "BEGIN SELECT RAISE(ABORT, 'the ledger log origin never changes'); END",
        ),
    ),
    Migration(
        "0004_c2sp_public_log",
        (
            # The public log (billing.public_log): each entry's salt for its commitment, the
            # C2SP signed-note checkpoints, and the witnesses' cosignatures of them.
            "CREATE TABLE log_salts (seq INTEGER PRIMARY KEY, salt BLOB NOT NULL)",
            """CREATE TABLE log_checkpoints (
                number INTEGER PRIMARY KEY,
                tree_size INTEGER NOT NULL,
                root_hash TEXT NOT NULL,
                note TEXT NOT NULL
            )""",
            "CREATE INDEX log_checkpoints_tree_size ON log_checkpoints (tree_size)",
            """CREATE TABLE log_cosignatures (
                number INTEGER NOT NULL REFERENCES log_checkpoints (number),
                witness TEXT NOT NULL,
                line TEXT NOT NULL,
                PRIMARY KEY (number, witness)
            )""",
            *(
                f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} "
                f"BEGIN SELECT RAISE(ABORT, '{_PUBLIC_LOG_ONLY_ADDED}'); END"
                for t in ("log_salts", "log_checkpoints", "log_cosignatures")
                for op in ("UPDATE", "DELETE")
            ),
        ),
    ),
    Migration(
        "0005_price_plans",
        (
            # billing.plans: immutable versions of each plan, and which tenant is on which
            # plan from when. Times are ISO 8601 UTC text (core.records.iso): they sort.
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
                number INTEGER PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
                plan TEXT NOT NULL,
                effective_from TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            *(
                f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} "
                f"BEGIN SELECT RAISE(ABORT, '{_PLANS_ONLY_ADDED}'); END"
                for t in ("plan_versions", "plan_assignments")
                for op in ("UPDATE", "DELETE")
            ),
        ),
    ),
    Migration(
        "0006_rate_limits",
        (
            # billing.rate_limits: per-minute limits of a tenant ("tenant:<id>") or a key
            # ("key:<id>"). Configuration, not the ledger: a row is replaced when it changes.
            """CREATE TABLE rate_limits (
                subject TEXT PRIMARY KEY,
                requests_per_min INTEGER,
                tokens_per_min INTEGER,
                ru_per_min TEXT,
                updated_at TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        "0007_commitments",
        (
            # billing.reservations: monthly RU commitments at a reserved price. Only added;
            # an invoice is rebuilt from the ledger and these rows.
            """CREATE TABLE commitments (
                number INTEGER PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
                ru_per_month TEXT NOT NULL,
                per_1000_ru TEXT NOT NULL,
                start_at TEXT NOT NULL,
                end_at TEXT,
                created_at TEXT NOT NULL
            )""",
            *(
                f"CREATE TRIGGER commitments_no_{op.lower()} BEFORE {op} ON commitments "
                f"BEGIN SELECT RAISE(ABORT, '{_COMMITMENTS_ONLY_ADDED}'); END"
                for op in ("UPDATE", "DELETE")
            ),
        ),
    ),
)


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply the migrations ``conn``'s database lacks, in order; return the names applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    known = {m.name for m in migrations}
    present = {name for (name,) in conn.execute("SELECT name FROM migrations")}
    unknown = sorted(present - known)
    if unknown:
        raise ConfigError(
            f"the database has migrations {unknown} that this infermeter does not know; "
            "it was written by a newer version: upgrade infermeter to open it"
        )
    applied: list[str] = []
    for migration in migrations:
        if migration.name in present:
            continue  # already applied: no write lock needed to find that out
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(  # another process may have applied it meanwhile
                "SELECT 1 FROM migrations WHERE name = ?", (migration.name,)
            ).fetchone()
            if done is None:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                    (migration.name, iso(utc_now())),
                )
                applied.append(migration.name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied
