"""``infermeter limits set|list``: rate limits per tenant or key (docs/pricing.md).

A running server sees a change within a second.
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from infermeter.core.errors import InvalidRequest, NotFound

from .commands import _emit_json, _tenant, open_store, out, settings_from

if TYPE_CHECKING:
    from infermeter.billing.rate_limits import Limits


def _ru(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(f"--ru-per-min {text!r} is not a decimal; use e.g. 5000") from None


def cmd_limits_set(args: argparse.Namespace) -> int:
    from infermeter.billing.rate_limits import Limits

    limits = Limits(args.rpm, args.tpm, _ru(args.ru_per_min))
    store = open_store(settings_from(args), create=False)
    try:
        if args.key is not None:
            keys = {k.key_id: k for k in store.list_keys()}
            if args.key not in keys:
                raise NotFound(f"no API key {args.key!r}; list them with `infermeter keys list`")
            subject = f"key:{args.key}"
        else:
            if args.tenant is None:
                raise InvalidRequest("limits set needs a TENANT or --key KEY_ID")
            subject = f"tenant:{_tenant(store, args.tenant).tenant_id}"
        store.set_rate_limits(subject, limits)
    finally:
        store.close()
    out.print(f"{subject}: {_describe(limits)}")
    return 0


def _describe(limits: Limits) -> str:
    """`3 requests, 100000 tokens per minute` (only the limits set), or `no limits`."""
    parts = [
        f"{value} {unit}"
        for value, unit in (
            (limits.requests_per_min, "requests"),
            (limits.tokens_per_min, "tokens"),
            (limits.ru_per_min, "RU"),
        )
        if value is not None
    ]
    return f"{', '.join(parts)} per minute" if parts else "no limits"


def cmd_limits_list(args: argparse.Namespace) -> int:
    store = open_store(settings_from(args), create=False)
    try:
        limits = store.list_rate_limits()
    finally:
        store.close()
    _emit_json({subject: value.to_json() for subject, value in limits.items()})
    return 0


def register(sub: Any) -> None:
    limits = sub.add_parser("limits", help="rate limits per tenant or API key").add_subparsers(
        dest="limits_command", required=True, metavar="ACTION"
    )
    p = limits.add_parser("set", help="set (or, with no limit given, remove) a tenant's or key's limits")
    p.add_argument("tenant", nargs="?", help="tenant name or id (or give --key)")
    p.add_argument("--key", help="an API key id (key_…) instead of a tenant")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute (prompt + max_tokens, at admission)")
    p.add_argument("--ru-per-min", dest="ru_per_min", help="RU per minute (measured)")
    p.set_defaults(handler=cmd_limits_set)
    p = limits.add_parser("list", help="every configured limit as JSON")
    p.set_defaults(handler=cmd_limits_list)
