"""``infermeter plans create|list|show|assign``: versioned price plans (docs/pricing.md).

A running server sees a change within a second (it reloads plans at most every second).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from infermeter.core.errors import InvalidRequest, NotFound

from .commands import _emit_json, _tenant, open_store, out, settings_from


def _default_plan() -> Any:
    from infermeter.billing.pricing import DEFAULT_PLAN

    return DEFAULT_PLAN


def cmd_plans_create(args: argparse.Namespace) -> int:
    from infermeter.billing.plan_registry import create_version
    from infermeter.billing.plans import parse_prices, parse_time, plan_file
    from infermeter.core.records import utc_now

    if args.file is not None:
        path = Path(args.file)
        if not path.is_file():
            raise NotFound(f"plan file {path} does not exist; see docs/pricing.md for its format")
        spec = plan_file(path.read_text())
        name, currency = str(spec["name"]), str(spec["currency"])
        prices = parse_prices(spec["per_1000_ru"]) if isinstance(spec["per_1000_ru"], dict) else {}
        effective = spec.get("effective_from") or args.effective_from
    else:
        if args.name is None or args.currency is None or not args.price:
            raise InvalidRequest(
                "plans create needs NAME --currency CODE --price TIER=PRICE (repeatable), "
                "or --file plan.json; e.g. infermeter plans create standard --currency USD "
                "--price default=0.0020 --price flex=0.0010"
            )
        name, currency, prices = args.name, args.currency, parse_prices(args.price)
        effective = args.effective_from
    now = utc_now()
    at = now if effective is None else parse_time(effective)
    store = open_store(settings_from(args))
    try:
        version = create_version(store, _default_plan(), name, currency, prices, at, now)
    finally:
        store.close()
    if args.json:
        _emit_json(version.to_json())
    else:
        out.print(f"created {version.version_id}, effective from {version.to_json()['effective_from']}")
    return 0


def _book(args: argparse.Namespace) -> Any:
    from infermeter.billing.plan_registry import load_book

    store = open_store(settings_from(args), create=False)
    try:
        return load_book(store, _default_plan()), {t.tenant_id: t.name for t in store.list_tenants()}
    finally:
        store.close()


def cmd_plans_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    book, names = _book(args)
    if args.json:
        _emit_json(
            {
                "versions": [v.to_json() for v in book.versions()],
                "assignments": [a.to_json() for a in book.assignments()],
            }
        )
        return 0
    table = Table("version", "effective from", "currency", "per 1,000 RU")
    for v in book.versions():
        j = v.to_json()
        table.add_row(
            v.version_id,
            j["effective_from"],
            v.currency,
            ", ".join(f"{t}={p}" for t, p in j["per_1000_ru"].items()),
        )
    out.print(table)
    assigned = Table("tenant", "plan", "effective from")
    for a in book.assignments():
        assigned.add_row(names.get(a.tenant_id, a.tenant_id), a.plan, a.to_json()["effective_from"])
    out.print(assigned)
    return 0


def cmd_plans_show(args: argparse.Namespace) -> int:
    versions = _book(args)[0].versions(args.name)
    if not versions:
        raise NotFound(f"no plan named {args.name!r}; list plans with `infermeter plans list`")
    _emit_json({"plan": args.name, "versions": [v.to_json() for v in versions]})
    return 0


def cmd_plans_assign(args: argparse.Namespace) -> int:
    from infermeter.billing.plan_registry import assign
    from infermeter.billing.plans import parse_time
    from infermeter.core.records import utc_now

    now = utc_now()
    at = now if args.effective_from is None else parse_time(args.effective_from)
    store = open_store(settings_from(args), create=False)
    try:
        tenant = _tenant(store, args.tenant)
        done = assign(store, _default_plan(), tenant.tenant_id, args.plan, at, now)
    finally:
        store.close()
    if args.json:
        _emit_json(done.to_json())
    else:
        out.print(f"{tenant.name} is on plan {done.plan} from {done.to_json()['effective_from']}")
    return 0


def register(sub: Any) -> None:
    plans = sub.add_parser("plans", help="versioned price plans per tenant").add_subparsers(
        dest="plans_command", required=True, metavar="ACTION"
    )
    p = plans.add_parser("create", help="add the next version of a plan (or its first)")
    p.add_argument("name", nargs="?", help="plan name, e.g. standard (or give --file)")
    p.add_argument("--currency", help="ISO 4217 code, e.g. USD")
    p.add_argument("--price", action="append", default=[], help="TIER=PRICE per 1,000 RU (repeat)")
    p.add_argument("--effective-from", dest="effective_from", help="ISO 8601 time >= now (default now)")
    p.add_argument("--file", help="a JSON plan file instead (docs/pricing.md)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_plans_create)
    p = plans.add_parser("list", help="every plan version and tenant assignment")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_plans_list)
    p = plans.add_parser("show", help="one plan's versions as JSON")
    p.add_argument("name")
    p.set_defaults(handler=cmd_plans_show)
    p = plans.add_parser("assign", help="put a tenant on a plan from a time on")
    p.add_argument("tenant", help="tenant name or id")
    p.add_argument("plan")
    p.add_argument("--effective-from", dest="effective_from", help="ISO 8601 time >= now (default now)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_plans_assign)
