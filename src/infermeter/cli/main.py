"""``infermeter``: serve, tenants, keys, usage, invoice, ledger, bench.

Exit codes: 0 success; 1 the ledger failed verification; 2 bad arguments or settings;
3 something named does not exist; 4 any other infermeter error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

from infermeter.core import errors as e

from . import (
    calibrate,
    commands,
    commitments,
    engines,
    exports,
    ledger,
    limits,
    models,
    plans,
    scaleout,
    tlog,
)

# Each module adds its subcommands with ``register(subparsers)``; add new areas here.
COMMAND_MODULES = [
    commands,
    ledger,
    calibrate,
    engines,
    models,
    scaleout,
    tlog,
    plans,
    exports,
    limits,
    commitments,
]

EXIT_CODES: list[tuple[type[e.InfermeterError], int]] = [
    (e.LedgerIntegrityError, 1),
    (e.ConfigError, 2),
    (e.InvalidRequest, 2),
    (e.NotFound, 3),
    (e.InfermeterError, 4),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infermeter",
        description="Serve LLMs and bill every request by the device resources it really used.",
    )
    parser.add_argument("--home", help="data directory (env INFERMETER_HOME; default ./.infermeter)")
    parser.add_argument(
        "--db",
        help="billing database URL, postgresql://… (env INFERMETER_DB; default the SQLite file in home)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    _accept_anywhere(parser, "--home")
    _accept_anywhere(parser, "--db")
    return parser


def _accept_anywhere(parser: argparse.ArgumentParser, option: str) -> None:
    """A top-level option after the subcommand too (``infermeter ledger verify --home X``).

    SUPPRESS as the default: a subcommand that was not given the option keeps the value given
    before it, rather than resetting it to None.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any(option in a.option_strings for a in child._actions):
                    child.add_argument(option, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _accept_anywhere(child, option)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        result: int = args.handler(args)
        return result
    except e.InfermeterError as exc:
        for cls, code in EXIT_CODES:
            if isinstance(exc, cls):
                err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
                return code
        return 4
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
