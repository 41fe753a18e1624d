"""``infermeter export stripe|lago|openmeter|focus``: usage for billing systems, incremental.

Every line printed (or written to ``--out``) is one request body for the billing system
(stripe, lago), one CloudEvent (openmeter), or the FOCUS CSV. ``--cursor FILE`` keeps the
ledger position between runs: the file is updated only after the output is written, so a
re-run exports nothing twice and a crashed run exports its page again (each event carries
the record id as its idempotency key, so the billing system drops the repeat).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from infermeter.core.errors import InvalidRequest, NotFound

from .commands import open_store, settings_from


def _after(args: argparse.Namespace) -> int | None:
    if args.cursor is not None:
        path = Path(args.cursor)
        if path.exists():
            text = path.read_text().strip()
            if text and not text.lstrip("-").isdigit():
                raise InvalidRequest(f"cursor file {path} holds {text!r}, not a ledger position; delete it")
            return int(text) if text else None
    given: int | None = args.after
    return given


def _customers(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise NotFound(f"customer map {file} does not exist; give a JSON object tenant id -> customer id")
    data = json.loads(file.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidRequest(f"customer map {file} must be a JSON object of tenant id -> customer id strings")
    return {str(k): v for k, v in data.items()}


def cmd_export(args: argparse.Namespace) -> int:
    from infermeter.billing.exports import read_page
    from infermeter.billing.plan_registry import load_book
    from infermeter.billing.pricing import DEFAULT_PLAN

    after = _after(args)
    store = open_store(settings_from(args), create=False)
    try:
        book = load_book(store, DEFAULT_PLAN)
        page = read_page(
            store, args.format, after, args.limit, book,
            customers=_customers(args.customer_map), event_name=args.event_name,
        )  # fmt: skip
    finally:
        store.close()
    text = page.csv if page.csv is not None else "".join(json.dumps(b) + "\n" for b in page.bodies)
    if args.out is not None:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if args.cursor is not None and page.next_after is not None:
        Path(args.cursor).write_text(f"{page.next_after}\n")
    sys.stderr.write(f"exported {page.count} {args.format} records; next --after {page.next_after}\n")
    return 0


def register(sub: Any) -> None:
    from infermeter.billing.exports import DEFAULT_EVENT_NAME, FORMATS

    p = sub.add_parser("export", help="usage for Stripe, Lago, OpenMeter or FOCUS, by ledger position")
    p.add_argument("format", choices=FORMATS)
    p.add_argument("--after", type=int, help="ledger position of the last entry already exported")
    p.add_argument("--cursor", help="file holding the position between runs (read, then updated)")
    p.add_argument("--limit", type=int, default=1000, help="ledger entries to read (1-10000)")
    p.add_argument("--out", help="write here instead of stdout")
    p.add_argument("--event-name", dest="event_name", default=DEFAULT_EVENT_NAME,
                   help="Stripe meter event_name / Lago metric code")  # fmt: skip
    p.add_argument("--customer-map", dest="customer_map", help="JSON: tenant id -> customer id")
    p.set_defaults(handler=cmd_export)
