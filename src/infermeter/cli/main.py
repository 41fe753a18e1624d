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

from . import calibrate, commands, engines, ledger, models

# Each module adds its subcommands with ``register(subparsers)``; add new areas here.
COMMAND_MODULES = [commands, ledger, calibrate, engines, models]

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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


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
