"""The public log from the shell: ``witness serve``, and the C2SP parts of ``ledger verify``
and ``receipt verify`` (``--witness``, ``--min-witnesses``, ``--cosigned``, ``.tlog-proof``).

Heavy modules are imported inside the functions, so ``infermeter --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermeter.core.errors import ConfigError, InvalidRequest, LedgerIntegrityError, NotFound

from .commands import _emit_json, out, settings_from

if TYPE_CHECKING:
    from infermeter.billing.log_audit import LogAudit
    from infermeter.billing.signed_note import VerifierKey


def read_vkeys(values: list[str] | None, what: str) -> list[VerifierKey]:
    """Verifier keys from each value: a key itself, a file of keys (one a line), or the saved
    GET /v1/ledger/key JSON (its ``verifier_keys``)."""
    from infermeter.billing.signed_note import NoteError, VerifierKey

    keys: list[VerifierKey] = []
    for value in values or []:
        path = Path(value)
        texts = [value]
        if "+" not in value or path.exists():
            if not path.exists():
                raise NotFound(f"{what} {value!r} is neither a verifier key (name+id+base64) nor a file")
            raw = path.read_text()
            try:
                doc = json.loads(raw)
                texts = list(doc["verifier_keys"]) if isinstance(doc, dict) else []
            except (ValueError, KeyError):
                texts = [line for line in raw.splitlines() if line.strip()]
        for text in texts:
            try:
                keys.append(VerifierKey.parse(text))
            except NoteError as exc:
                raise InvalidRequest(f"{what} {value!r}: {exc}") from None
    return keys


def _required(args: argparse.Namespace, witnesses: list[VerifierKey]) -> int:
    k = len(witnesses) if args.min_witnesses is None else args.min_witnesses
    if not 0 <= k <= len(witnesses):
        raise InvalidRequest(
            f"--min-witnesses {k} must be between 0 and the {len(witnesses)} --witness keys given"
        )
    return k


def is_tlog_proof(path: Path) -> bool:
    from infermeter.billing.tlog_proof import HEADER

    try:
        return path.read_bytes().startswith(HEADER.encode())
    except OSError:
        return False


def cmd_tlog_receipt_verify(args: argparse.Namespace) -> int:
    """``receipt verify FILE.tlog-proof --key VKEY [--witness VKEY …] [--min-witnesses K]``."""
    from infermeter.billing import tlog_proof

    log_keys = read_vkeys([args.key] if args.key else None, "--key")
    if not log_keys:
        raise InvalidRequest(
            "a .tlog-proof receipt needs the log's verifier key: --key 'infermeter/…+id+base64' "
            "(verifier_key of GET /v1/ledger/key) or the saved key JSON"
        )
    witnesses = read_vkeys(args.witness, "--witness")
    verdict = tlog_proof.verify(Path(args.file).read_bytes(), log_keys, witnesses, _required(args, witnesses))
    if args.json:
        _emit_json(
            {"ok": verdict.ok, "message": verdict.message, "record_id": verdict.record_id,
             "leaf_index": verdict.index, "tree_size": verdict.tree_size, "origin": verdict.origin,
             "cosigned_by": list(verdict.cosigned_by)}
        )  # fmt: skip
        return 0 if verdict.ok else 1
    if not verdict.ok:
        raise LedgerIntegrityError(f"receipt {args.file} is NOT valid: {verdict.message}")
    out.print(f"[green]{verdict.message}[/]")
    return 0


def _size_of(note: str) -> int:
    """The tree size a checkpoint note claims (its second line); 0 when it has none."""
    lines = note.split("\n")
    return int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0


def audit_public_log(args: argparse.Namespace) -> LogAudit:
    """Every stored and ``--cosigned`` checkpoint against the ledger rebuilt from its entries."""
    from infermeter.billing.log_audit import LogAudit, audit
    from infermeter.billing.public_log import PublicLog
    from infermeter.billing.signing import LedgerKeys

    settings = settings_from(args)
    witnesses = read_vkeys(args.witness, "--witness")
    required = _required(args, witnesses)
    if settings.db is not None:
        if witnesses:
            raise ConfigError("--witness needs the public C2SP log, which only the SQLite store has for now")
        return LogAudit(True, 0, "public log: none (the PostgreSQL store has no C2SP log yet)")
    plog = PublicLog(settings.db_path, LedgerKeys(settings.home / "keys", create=False))
    try:
        tree, size = plog.rebuilt()
        notes = [
            (f"public checkpoint {cp.number}", plog.cosigned(cp).encode().decode())
            for cp in plog.checkpoints()
        ]
        notes += [(f"checkpoint file {f}", Path(f).read_text()) for f in args.cosigned or []]
        # Entries get their salt when the log publishes them (a CLI correction has none yet),
        # so the tree may be shorter than the ledger; but a checkpoint beyond the salted entries
        # (and within the ledger) means salts were removed after it was signed.
        for where, note in notes:
            covered = _size_of(note)
            if tree.size < covered <= size:
                return LogAudit(
                    False,
                    0,
                    f"{where} covers {covered} entries but only {tree.size} of the ledger's {size} "
                    "have their public-log salt: salts were removed outside the store",
                    tree.size,
                )
        return audit(notes, size, tree.root, plog.origin, plog.verifier_keys(), witnesses, required)
    finally:
        plog.close()


def cmd_witness_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from infermeter.api.witness import create_witness_app
    from infermeter.billing.witness import Witness

    logs = read_vkeys(args.log, "--log")
    if not logs:
        raise InvalidRequest("give the log to witness: --log VKEY (verifier_key of its GET /v1/ledger/key)")
    witness = Witness(args.dir, args.name, logs)
    out.print(f"witness [bold]{args.name}[/] for {', '.join(sorted(witness.logs))}; state in {witness.dir}")
    out.print(
        f"its verifier key (give it to the log and to verifiers): [bold]{witness.verifier_key.text()}[/]"
    )
    uvicorn.run(create_witness_app(witness), host=args.host, port=args.port, log_level="warning")
    return 0


def add_witness_args(p: Any) -> None:
    p.add_argument(
        "--witness", action="append", metavar="VKEY", help="a witness's verifier key (or a file of them)"
    )
    p.add_argument("--min-witnesses", dest="min_witnesses", type=int, metavar="K",
                   help="cosignatures required of the --witness keys (default: all of them)")  # fmt: skip


def register(sub: Any) -> None:
    witness = sub.add_parser("witness", help="run a C2SP witness for a log").add_subparsers(
        dest="witness_command", required=True, metavar="ACTION"
    )
    p = witness.add_parser("serve", help="cosign a log's checkpoints while it only grows (tlog-witness)")
    p.add_argument("--dir", required=True, help="the witness's own key and state directory")
    p.add_argument("--name", required=True, help="the witness's key name, e.g. witness.example.com/w1")
    p.add_argument("--log", action="append", metavar="VKEY", help="a log's verifier key (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7380)
    p.set_defaults(handler=cmd_witness_serve)
