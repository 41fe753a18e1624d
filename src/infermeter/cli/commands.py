"""The commands. Each reads settings once, opens what it needs, prints, returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

from rich.console import Console
from rich.table import Table

from infermeter.billing.invoices import (
    build_invoice,
    invoice_currency,
    invoice_to_csv,
    invoice_to_json,
    period_bounds,
)
from infermeter.billing.store import Store, Tenant
from infermeter.config import Settings, load_settings
from infermeter.core.errors import InvalidRequest, NotFound
from infermeter.core.money import format_decimal

out = Console(highlight=False, width=160)


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings({"home": args.home, "db": getattr(args, "db", None), **extra})


def require_database(settings: Settings) -> None:
    """Read-only commands never create a home: NotFound (exit 3) naming where they looked."""
    if settings.db is None and not settings.db_path.exists():
        raise NotFound(
            f"no infermeter database at {settings.db_path.resolve()}: nothing to read. Pass the "
            "home the server uses (--home DIR or INFERMETER_HOME; default ./.infermeter), or "
            "start one with `infermeter serve`"
        )


def open_store(settings: Settings, *, create: bool = True) -> Store:
    """The home's store (or ``--db``'s); with ``create=False`` (read-only commands) it must exist."""
    from infermeter.app.stores import make_store

    if not create:
        require_database(settings)
    return make_store(settings)


def _budget(text: str | None) -> Decimal | None:
    if text is None or text.lower() in ("none", "unlimited"):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(f"--budget {text!r} is not a decimal amount; use e.g. 25.00 or 'none'") from None
    if value < 0 or not value.is_finite():
        raise InvalidRequest(f"--budget {text} must be a non-negative amount")
    return value


def _shown(budget: Decimal | None) -> str | None:
    """A budget as plain digits (``0.0000001``, never ``1E-7``); None when unlimited."""
    return None if budget is None else format(budget, "f")


def _tenant(store: Store, name: str) -> Tenant:
    tenant = store.find_tenant(name)
    if tenant is None:
        raise NotFound(f"no tenant named or with id {name!r}; list them with `infermeter tenants list`")
    return tenant


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# serve -----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from infermeter.app.service import Service
    from infermeter.cli import serving

    overrides = {
        "host": args.host,
        "port": args.port,
        "max_batch": args.max_batch,
        "intra_op_threads": args.threads,
        "log_level": args.log_level,
        "model_dir": args.model_dir,
        "queue": args.queue,
        "device": args.device,
        "max_outbox": args.max_outbox,
        "max_body_bytes": args.max_body_bytes,
        "graceful_timeout": args.graceful_timeout,
        "budget_status": args.budget_status,
    }
    if args.no_int8:
        overrides["int8"] = False
    if args.allow_unverified:
        overrides["allow_unverified"] = True
    return serving.serve(settings_from(args, **overrides), Service.from_settings, out)


# tenants and keys -------------------------------------------------------------------
def cmd_tenants_create(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args))
    try:
        if store.find_tenant(args.name) is not None:
            raise InvalidRequest(
                f"tenant {args.name!r} exists already; pick another name or "
                "create a key for it with `infermeter keys create --tenant NAME`"
            )
        tenant = store.create_tenant(args.name, _budget(args.budget))
        key, secret = store.create_key(tenant.tenant_id)
    finally:
        store.close()
    if args.json:
        _emit_json(
            {
                "tenant_id": tenant.tenant_id,
                "name": tenant.name,
                "key_id": key.key_id,
                "api_key": secret,
                "budget": _shown(tenant.budget),
            }
        )
    else:
        out.print(f"tenant [bold]{tenant.name}[/] ({tenant.tenant_id})")
        out.print(f"API key (shown once): [bold green]{secret}[/]")
    return 0


def cmd_tenants_list(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args), create=False)
    try:
        tenants = store.list_tenants()
    finally:
        store.close()
    if args.json:
        _emit_json(
            [
                {
                    "tenant_id": t.tenant_id,
                    "name": t.name,
                    "budget": _shown(t.budget),
                }
                for t in tenants
            ]
        )
        return 0
    table = Table("tenant", "id", "budget")
    for t in tenants:
        table.add_row(t.name, t.tenant_id, _shown(t.budget) or "unlimited")
    out.print(table)
    return 0


def cmd_tenants_budget(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args))
    try:
        tenant = store.set_budget(_tenant(store, args.name).tenant_id, _budget(args.amount))
    finally:
        store.close()
    shown = _shown(tenant.budget) or "unlimited"
    out.print(f"budget of {tenant.name}: {shown} (a running server applies it within 5 s)")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    if bool(args.tenant) == bool(args.admin):
        raise InvalidRequest("give exactly one of --tenant NAME or --admin")
    store = open_store(settings_from(args))
    try:
        tenant_id = _tenant(store, args.tenant).tenant_id if args.tenant else None
        key, secret = store.create_key(tenant_id, admin=args.admin)
    finally:
        store.close()
    if args.json:
        _emit_json({"key_id": key.key_id, "tenant_id": key.tenant_id, "admin": key.admin, "api_key": secret})
    else:
        out.print(
            f"key {key.key_id} ({'admin' if key.admin else key.tenant_id}): "
            f"[bold green]{secret}[/] (shown once)"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args))
    try:
        before = {k.key_id: k.revoked_at for k in store.list_keys()}
        key = store.revoke_key(args.key_id)
    finally:
        store.close()
    if before.get(key.key_id) is not None:
        out.print(f"{key.key_id} was already revoked at {before[key.key_id]:%Y-%m-%d %H:%M:%S} UTC")
    else:
        out.print(f"revoked {key.key_id}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args), create=False)
    try:
        tenant_id = _tenant(store, args.tenant).tenant_id if args.tenant else None
        keys = store.list_keys(tenant_id)
    finally:
        store.close()
    if args.json:
        _emit_json(
            [
                {
                    "key_id": k.key_id,
                    "tenant_id": k.tenant_id,
                    "admin": k.admin,
                    "prefix": k.prefix,
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k in keys
            ]
        )
        return 0
    table = Table("key", "tenant", "admin", "prefix", "revoked")
    for k in keys:
        table.add_row(
            k.key_id,
            k.tenant_id or "-",
            "yes" if k.admin else "no",
            k.prefix,
            k.revoked_at.isoformat() if k.revoked_at else "",
        )
    out.print(table)
    return 0


# usage, invoices, ledger ------------------------------------------------------------
def cmd_usage(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args), create=False)
    try:
        tenant_id = _tenant(store, args.tenant).tenant_id if args.tenant else None
        rows = store.usage_summary(tenant_id, args.group_by)
    finally:
        store.close()
    if args.json:
        _emit_json(
            [
                {
                    "key": r.key,
                    "requests": r.requests,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "device_ms": r.device_us / 1000,
                    "ru": format_decimal(Decimal(r.ru_micros).scaleb(-6)),
                    "cost": format_decimal(r.cost),
                }
                for r in rows
            ]
        )
        return 0
    table = Table(args.group_by, "requests", "prompt tok", "completion tok", "device ms", "RU", "cost")
    for r in rows:
        table.add_row(
            r.key,
            str(r.requests),
            str(r.prompt_tokens),
            str(r.completion_tokens),
            f"{r.device_us / 1000:,.3f}",
            format_decimal(Decimal(r.ru_micros).scaleb(-6)),
            format_decimal(r.cost),
        )
    out.print(table)
    return 0


def cmd_invoice(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    start, end = period_bounds(args.period)
    store = open_store(settings, create=False)
    try:
        tenant = _tenant(store, args.tenant)
        records = [r for _, r in store.list_records(tenant.tenant_id, limit=10**9, start=start, end=end)]
        held = store.list_commitments(tenant.tenant_id)
    finally:
        store.close()
    from infermeter.billing.pricing import DEFAULT_PLAN

    inv = build_invoice(
        tenant.tenant_id, args.period, records, invoice_currency(records, DEFAULT_PLAN.currency), held
    )
    if args.format == "csv":
        sys.stdout.write(invoice_to_csv(inv))
    else:
        _emit_json(invoice_to_json(inv))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from infermeter.cli.bench import run_benchmarks

    return run_benchmarks(args)


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible server on the built-in model")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--max-batch", type=int, dest="max_batch")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--no-int8", action="store_true", help="do not build/serve the INT8 flex engine")
    p.add_argument(
        "--model-dir",
        dest="model_dir",
        help="also serve this model: an Optimum export directory, a Hugging Face folder or a .gguf "
        "(the latter two imported on first start as `models add` would)",
    )
    p.add_argument("--log-level", dest="log_level")
    p.add_argument(
        "--queue", help="cluster mode: bill through the NATS usage stream (needs --db postgresql://…)"
    )
    p.add_argument(
        "--max-outbox",
        type=int,
        dest="max_outbox",
        help="cluster mode: with this many records not yet in the ledger the worker reports "
        "not-ready and refuses new requests (503) (env INFERMETER_MAX_OUTBOX; default 100000; 0 = no bound)",
    )
    p.add_argument(
        "--device",
        help="serve only this device's engines: cpu, or cuda:N for GPU N (one worker per device; "
        "env INFERMETER_DEVICE; default: every engine this machine can run)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        dest="max_body_bytes",
        help="refuse request bodies larger than this with a 413 (default 1048576 = 1 MiB)",
    )
    p.add_argument(
        "--budget-status",
        type=int,
        dest="budget_status",
        help="status of an exhausted budget: 402 (default) or 429 (OpenAI's insufficient_quota)",
    )
    p.add_argument(
        "--graceful-timeout",
        type=int,
        dest="graceful_timeout",
        help="on SIGTERM, drain in-flight requests at most this many seconds, then cancel "
        "(billed for work done) what is left (env INFERMETER_GRACEFUL_TIMEOUT; default 30)",
    )
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        dest="allow_unverified",
        help="serve even if the ledger fails the start-up verification (logged loudly)",
    )
    p.set_defaults(handler=cmd_serve)

    tenants = sub.add_parser("tenants", help="create and list tenants").add_subparsers(
        dest="tenants_command", required=True, metavar="ACTION"
    )
    p = tenants.add_parser("create", help="create a tenant and print its first API key")
    p.add_argument("name")
    p.add_argument("--budget", help="spend limit in the plan currency (default unlimited)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_tenants_create)
    p = tenants.add_parser("list", help="list tenants")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_tenants_list)
    p = tenants.add_parser("budget", help="set a tenant's spend limit ('none' = unlimited)")
    p.add_argument("name")
    p.add_argument("amount")
    p.set_defaults(handler=cmd_tenants_budget)

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    p = keys.add_parser("create", help="create a tenant key (--tenant) or an admin key (--admin)")
    p.add_argument("--tenant")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_keys_create)
    p = keys.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id")
    p.set_defaults(handler=cmd_keys_revoke)
    p = keys.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_keys_list)

    p = sub.add_parser("usage", help="usage summary (all tenants, or one)")
    p.add_argument("--tenant")
    p.add_argument("--group-by", dest="group_by", choices=["day", "model", "tier"], default="day")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_usage)

    p = sub.add_parser("invoice", help="a tenant's invoice for a month")
    p.add_argument("tenant")
    p.add_argument("--period", required=True, help="YYYY-MM")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.set_defaults(handler=cmd_invoice)

    # `ledger …` and `receipt …` live in cli/ledger.py.

    p = sub.add_parser("bench", help="run the benchmarks and print a table")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small workloads (seconds); without it, the sizes in docs/benchmarks.md",
    )
    p.add_argument("--json", dest="json_out", help="also write results to this JSON file")
    p.add_argument("--accuracy", action="store_true", help="metering accuracy: solo vs batched")
    p.set_defaults(handler=cmd_bench)
