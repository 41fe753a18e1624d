"""Which billing database a process opens: the SQLite file in its home, or PostgreSQL.

``Settings.db`` (``--db URL`` / ``INFERMETER_DB``) names a PostgreSQL database; unset, the
embedded SQLite file ``<home>/infermeter.db`` is used. With ``Settings.queue`` as well
(``--queue nats://…``, cluster mode) requests are billed through the outbox
``<home>/outbox.db`` and the usage stream (``billing.queued_store``). The service and every CLI command
open their store and checkpoint log here, so both back ends are reached the same way.
The PostgreSQL modules (and psycopg) are imported only when a PostgreSQL URL is given.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from infermeter.billing.budgets import BudgetBook, Budgets
from infermeter.billing.checkpoint_log import CheckpointLog
from infermeter.billing.signing import LedgerKeys
from infermeter.billing.store import Store
from infermeter.config import Settings
from infermeter.core.errors import ConfigError


def uses_postgres(settings: Settings) -> bool:
    return settings.db is not None


def _psycopg_missing() -> ConfigError:
    return ConfigError(
        "--db postgresql://… needs psycopg 3, which is not installed; "
        "install it with `pip install 'infermeter[postgres]'`"
    )


def make_store(settings: Settings) -> Store:
    """The store ``settings`` name (PostgreSQL when ``db`` is set, else SQLite in home)."""
    if settings.db is not None and settings.queue is not None:
        try:
            from infermeter.billing.queued_store import QueuedStore
        except ImportError:
            raise ConfigError(
                "--queue nats://… needs psycopg 3 and nats-py; install them with "
                "`pip install 'infermeter[postgres,nats]'`"
            ) from None
        worker = f"{socket.gethostname()}-{settings.port}"
        return QueuedStore(settings.db, settings.queue, settings.home / "outbox.db", worker)
    if settings.db is not None:
        try:
            from infermeter.billing.pg_store import PgStore
        except ImportError:
            raise _psycopg_missing() from None
        return PgStore(settings.db)
    from infermeter.billing.sqlite_store import SqliteStore

    settings.home.mkdir(parents=True, exist_ok=True)
    return SqliteStore(settings.db_path, synchronous=settings.synchronous)


def make_budgets(
    settings: Settings,
    store: Store,
    limit_of: Callable[[str], Decimal | None],
    default_limit: Decimal | None,
) -> BudgetBook:
    """Budgets shared by every worker on PostgreSQL (``billing.pg_budgets``), else this
    process's own (``billing.budgets``)."""
    if settings.db is None:
        return Budgets(spent_of=store.spent, limit_of=limit_of)
    from infermeter.billing.pg_budgets import PgBudgets, worker_name

    return PgBudgets(settings.db, worker_name(settings.port), default_limit=default_limit)


def make_checkpoint_log(settings: Settings, keys: LedgerKeys, store: Store | None = None) -> CheckpointLog:
    """The checkpoint log over the same database (``store`` gives the SQLite file if passed)."""
    if settings.db is not None:
        try:
            from infermeter.billing.pg_checkpoints import PgLogDb
        except ImportError:
            raise _psycopg_missing() from None
        return CheckpointLog(PgLogDb(settings.db), keys)
    from infermeter.billing.sqlite_store import SqliteStore

    path = Path(getattr(store, "path", settings.db_path))
    # the SQLite store's one writer thread makes the log's writes too (docs/ledger.md)
    if isinstance(store, SqliteStore) and store.path.resolve() == path.resolve():
        return CheckpointLog(path, keys, write=store.write)
    return CheckpointLog(path, keys)


__all__ = ["make_budgets", "make_checkpoint_log", "make_store", "uses_postgres"]
