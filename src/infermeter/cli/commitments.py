"""``infermeter commitments add|list``: monthly RU commitments at a reserved price (docs/pricing.md)."""

from __future__ import annotations

import argparse
from typing import Any

from .commands import _emit_json, _tenant, open_store, out, settings_from


def cmd_commitments_add(args: argparse.Namespace) -> int:
    from infermeter.billing.reservations import new_commitment
    from infermeter.core.records import utc_now

    store = open_store(settings_from(args))
    try:
        tenant = _tenant(store, args.tenant)
        made = new_commitment(
            tenant.tenant_id, args.ru_per_month, args.price, args.start_at, args.end_at, utc_now()
        )
        store.add_commitment(made)
    finally:
        store.close()
    if args.json:
        _emit_json(made.to_json())
    else:
        view = made.to_json()
        out.print(
            f"{tenant.name} commits to {view['ru_per_month']} RU a month at {view['per_1000_ru']} "
            f"per 1,000 RU from {view['start_at']}" + (f" to {view['end_at']}" if view["end_at"] else "")
        )
    return 0


def cmd_commitments_list(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args), create=False)
    try:
        rows = [c.to_json() for c in store.list_commitments()]
    finally:
        store.close()
    if args.json:
        _emit_json({"object": "list", "data": rows})
        return 0
    for r in rows:
        out.print(
            f"{r['tenant_id']}  {r['ru_per_month']} RU/month  at {r['per_1000_ru']}/1000 RU  "
            f"{r['start_at']} → {r['end_at'] or 'open'}"
        )
    return 0


def register(sub: Any) -> None:
    group = sub.add_parser("commitments", help="reserved capacity: monthly RU commitments").add_subparsers(
        dest="commitments_command", required=True, metavar="ACTION"
    )
    p = group.add_parser("add", help="commit a tenant to RU per month at a reserved price")
    p.add_argument("tenant", help="tenant name or id")
    p.add_argument("--ru-per-month", dest="ru_per_month", required=True, help="RU per month, e.g. 1000000")
    p.add_argument("--price", required=True, help="reserved price per 1,000 RU, e.g. 0.0015")
    p.add_argument("--start-at", dest="start_at", help="ISO 8601 time >= now (default now)")
    p.add_argument("--end-at", dest="end_at", help="ISO 8601 time after the start (default open)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_commitments_add)
    p = group.add_parser("list", help="every commitment")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_commitments_list)
