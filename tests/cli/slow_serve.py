"""``infermeter serve`` exactly as the CLI runs it, on a slow model-free engine (for signal tests).

    python -m tests.cli.slow_serve --home H --port P [--graceful-timeout N] [--allow-unverified]

Everything but the engine is the real thing: the start-up ledger check, uvicorn with the
graceful timeout, SIGTERM handling, the service's shutdown. Each step sleeps 10 ms, so a
long request is still running when the test sends the signal.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from infermeter.app.service import Service
from infermeter.cli import serving
from infermeter.cli.commands import out
from infermeter.config import Settings, load_settings
from infermeter.runtime.engine import LoadedEngine, SeqInput, StepOutput
from infermeter.runtime.fake_engine import FakeEngine, fake_engine_info
from infermeter.runtime.tokenizer import ByteTokenizer


class SlowFake(FakeEngine):
    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        time.sleep(0.01)
        return super().step(inputs)


def slow_service(settings: Settings) -> Service:
    engine = SlowFake(info=fake_engine_info(max_seq_len=8192))
    return Service(settings, [LoadedEngine(engine, ByteTokenizer())])


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--graceful-timeout", type=int, dest="graceful_timeout")
    parser.add_argument("--allow-unverified", action="store_true")
    args = parser.parse_args(argv)
    overrides = {
        "home": args.home,
        "port": args.port,
        "graceful_timeout": args.graceful_timeout,
        "allow_unverified": args.allow_unverified or None,
        "warmup_steps": 1,
        "log_level": "warning",
    }
    return serving.serve(load_settings(overrides, env={}), slow_service, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
