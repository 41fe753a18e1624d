"""``infermeter ledger …`` and ``infermeter receipt verify``: the verifiable log from the shell.

ledger verify                 every entry's hashes and columns, then every checkpoint's
                              signature and root against the recomputed tree (exit 1 naming
                              the first bad entry or checkpoint)
ledger checkpoint             sign the ledger now
ledger rotate-key             make a new signing key; old public keys stay listed
ledger correct RECORD_ID      --reversal | --credit AMOUNT, with --reason TEXT
receipt verify FILE           check a saved receipt offline (--key FILE or --key-url URL)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

from infermeter.billing.checkpoint_log import CheckpointLog
from infermeter.billing.checkpoints import CheckpointReport
from infermeter.billing.corrections import issue_correction
from infermeter.billing.receipts import verify_receipt
from infermeter.billing.signing import LedgerKeys, key_id_of, keys_from_document, load_public_pem
from infermeter.billing.store import VerifyReport
from infermeter.config import Settings
from infermeter.core.errors import ConfigError, InvalidRequest, LedgerIntegrityError, NotFound
from infermeter.core.money import format_decimal

from . import tlog
from .commands import _emit_json, open_store, out, settings_from


def _keys(settings: Settings, *, create: bool = True) -> LedgerKeys:
    return LedgerKeys(settings.home / "keys", create=create)


def _open_log(settings: Settings, *, create_key: bool = True) -> CheckpointLog:
    from infermeter.app.stores import make_checkpoint_log

    open_store(settings).close()  # makes (and migrates) the database the way the server does
    return make_checkpoint_log(settings, _keys(settings, create=create_key))


# ledger verify ------------------------------------------------------------------------------
def _report_json(chain: VerifyReport, cps: CheckpointReport) -> dict[str, Any]:
    bad_chain = not chain.ok
    return {
        "ok": chain.ok and cps.ok, "entries": chain.entries,
        "first_bad_seq": chain.first_bad_seq if bad_chain else cps.first_bad_seq,
        "first_bad_record_id": chain.first_bad_record_id if bad_chain else None,
        "message": chain.message if bad_chain else cps.message,
        "checkpoints": {"ok": cps.ok, "checked": cps.checked,
                        "first_bad_checkpoint": cps.first_bad_checkpoint,
                        "first_bad_seq": cps.first_bad_seq, "message": cps.message},
    }  # fmt: skip


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    store = open_store(settings, create=False)
    try:
        chain = store.verify()
    finally:
        store.close()
    try:
        from infermeter.app.stores import make_checkpoint_log

        log = make_checkpoint_log(settings, _keys(settings, create=False))
        try:
            cps = log.verify()
        finally:
            log.close()
    except sqlite3.Error as exc:  # e.g. the checkpoints table was dropped by hand
        cps = CheckpointReport(
            False,
            0,
            None,
            None,
            f"the signed checkpoints cannot be read ({exc}): their tables were dropped or damaged",
        )
    public = tlog.audit_public_log(args)  # C2SP checkpoints and --witness cosignatures
    if args.json:
        report = _report_json(chain, cps)
        report["public_log"] = {
            "ok": public.ok,
            "message": public.message,
            "witnessed_size": public.witnessed_size,
        }
        report["ok"] = report["ok"] and public.ok
        _emit_json(report)
        return 0 if report["ok"] else 1
    if not chain.ok:
        extra = "" if cps.ok else f" Checkpoints: {cps.message}"
        raise LedgerIntegrityError(chain.message + extra, seq=chain.first_bad_seq)
    if not cps.ok:
        extra = "" if public.ok else f" Public log: {public.message}"
        raise LedgerIntegrityError(cps.message + extra, seq=cps.first_bad_seq)
    if not public.ok:
        raise LedgerIntegrityError(public.message, seq=public.first_bad_seq)
    out.print(f"[green]intact[/]: {chain.message}")
    out.print(cps.message)
    out.print(public.message)
    return 0


# checkpoints and keys -----------------------------------------------------------------------
def cmd_ledger_checkpoint(args: argparse.Namespace) -> int:
    log = _open_log(settings_from(args))
    try:
        cp, created = log.checkpoint()
    finally:
        log.close()
    if args.json:
        _emit_json({"created": created, **cp.to_json()})
    else:
        what = "signed" if created else "unchanged since"
        out.print(
            f"{what} checkpoint {cp.number}: {cp.tree_size:,} entries, root {cp.root_hash}, "
            f"key {cp.key_id}, {cp.timestamp}"
        )
    return 0


def cmd_ledger_rotate_key(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    keys = _keys(settings, create=False)
    old = keys.active_id() if (keys.dir / "active").exists() else None
    new = keys.rotate()
    out.print(f"new ledger signing key [bold]{new}[/] is active" + (f" (was {old})" if old else ""))
    out.print(
        f"Every public key stays listed at GET /v1/ledger/key and in {keys.dir}/ledger-*.pub, "
        "so older checkpoints stay verifiable. Sign with the new key now: "
        "`infermeter ledger checkpoint`."
    )
    return 0


def cmd_ledger_correct(args: argparse.Namespace) -> int:
    if (args.credit is None) == (not args.reversal):
        raise InvalidRequest("give exactly one of --reversal or --credit AMOUNT")
    store = open_store(settings_from(args))
    try:
        kind = "reversal" if args.reversal else "credit"
        done = issue_correction(store, args.record_id, kind, args.reason, args.credit)
    finally:
        store.close()
    record = done.record
    if args.json:
        _emit_json(
            {
                "record_id": record.record_id,
                "request_id": record.request_id,
                "kind": record.kind,
                "corrects": record.corrects,
                "seq": done.seq,
                "cost": format_decimal(record.cost),
                "currency": record.currency,
                "remaining_cost": format_decimal(done.remaining.cost),
            }
        )
        return 0
    out.print(
        f"{record.kind} {record.record_id} (entry {done.seq}) corrects {record.corrects}: "
        f"{format_decimal(record.cost)} {record.currency}; "
        f"{format_decimal(done.remaining.cost)} {record.currency} of it remains billed"
    )
    return 0


# receipt verify -----------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist; pass the file you saved") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"{what} {path} is not JSON ({exc}); save the response body as it is") from None


def public_keys_for(args: argparse.Namespace) -> dict[str, bytes]:
    """Public keys from --key (a .pub PEM or the saved GET /v1/ledger/key JSON), --key-url, or home."""
    if args.key and args.key_url:
        raise InvalidRequest("give --key or --key-url, not both")
    if args.key:
        path = Path(args.key)
        if path.exists() and path.read_bytes().lstrip().startswith(b"-----BEGIN"):
            raw = load_public_pem(path.read_bytes())
            return {key_id_of(raw): raw}
        return keys_from_document(_read_json(path, "key file"))
    if args.key_url:
        import httpx

        try:
            resp = httpx.get(args.key_url, timeout=30)
            resp.raise_for_status()
            return keys_from_document(resp.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise ConfigError(
                f"could not read keys from {args.key_url} ({exc}); pass the URL of "
                "GET /v1/ledger/key, e.g. http://127.0.0.1:8000/v1/ledger/key"
            ) from None
    keys = _keys(settings_from(args), create=False).public_keys()
    if not keys:
        raise ConfigError(
            "no public key to verify with: pass --key FILE (the saved GET /v1/ledger/key "
            "JSON or a ledger-<id>.pub file) or --key-url URL"
        )
    return keys


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    if tlog.is_tlog_proof(Path(args.file)):
        return tlog.cmd_tlog_receipt_verify(args)
    verdict = verify_receipt(_read_json(Path(args.file), "receipt"), public_keys_for(args))
    if args.json:
        _emit_json(
            {
                "ok": verdict.ok,
                "message": verdict.message,
                "record_id": verdict.record_id,
                "leaf_index": verdict.leaf_index,
                "tree_size": verdict.tree_size,
                "key_id": verdict.key_id,
                "signed_at": verdict.signed_at,
            }
        )
        return 0 if verdict.ok else 1
    if not verdict.ok:
        raise LedgerIntegrityError(f"receipt {args.file} is NOT valid: {verdict.message}")
    out.print(f"[green]{verdict.message}[/]")
    return 0


def register(sub: Any) -> None:
    ledger = sub.add_parser("ledger", help="verify, checkpoint and correct the usage ledger").add_subparsers(
        dest="ledger_command", required=True, metavar="ACTION"
    )
    p = ledger.add_parser(
        "verify", help="check every entry and every signed checkpoint; exit 1 naming the first bad one"
    )
    p.add_argument("--cosigned", action="append", metavar="FILE", help="a saved /log/checkpoint to check too")
    tlog.add_witness_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ledger_verify)
    p = ledger.add_parser("checkpoint", help="sign a checkpoint of the ledger now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ledger_checkpoint)
    p = ledger.add_parser("rotate-key", help="make a new signing key (old public keys stay listed)")
    p.set_defaults(handler=cmd_ledger_rotate_key)
    p = ledger.add_parser(
        "correct", help="credit or reverse a usage record (a new entry; the original stays)"
    )
    p.add_argument("record_id")
    p.add_argument("--reversal", action="store_true", help="undo what remains of the record's cost and RU")
    p.add_argument("--credit", metavar="AMOUNT", help="refund this amount of the record's cost, e.g. 0.50")
    p.add_argument("--reason", required=True, help="why; stored in the ledger entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ledger_correct)

    receipt = sub.add_parser("receipt", help="check saved receipts offline").add_subparsers(
        dest="receipt_command", required=True, metavar="ACTION"
    )
    p = receipt.add_parser("verify", help="check a saved receipt with only the public key; exit 1 if invalid")
    p.add_argument("file", help="the receipt JSON saved from GET /v1/receipts/{record_id}")
    p.add_argument(
        "--key", help="the saved GET /v1/ledger/key JSON, a ledger-<id>.pub PEM file, or (.tlog-proof) a VKEY"
    )
    p.add_argument("--key-url", dest="key_url", help="fetch the keys from this GET /v1/ledger/key URL")
    tlog.add_witness_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_receipt_verify)
