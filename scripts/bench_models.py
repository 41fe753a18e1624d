"""Decode speed of an added model's engines: ms per decode step and tokens/s at concurrency 1 and 8.

    PYTHONPATH=src python scripts/bench_models.py smollm2 --home .infermeter --threads 2

Each engine of the model (as ``serve`` loads it) prefills ``c`` different prompts, then runs
``--steps`` greedy decode steps of all ``c`` sequences together; reported are the median
decode step's device time (the step timer metering bills) and decode tokens/s over the
steps' wall time. Prints one JSON line per (engine, concurrency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from infermeter.app.engines import load_engine, servable
from infermeter.config import load_settings
from infermeter.metering.timers import CpuStepTimer
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.engine_store import EngineStore

PROMPTS = [f"Item {i}: the quick brown fox jumps over the lazy dog, and then" for i in range(8)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--home", default=".infermeter")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    settings = load_settings({"home": args.home, "intra_op_threads": args.threads or None})
    store = EngineStore(settings.home)
    records = [r for r in servable(store) if r.model == args.model]
    for record in records:
        engine = load_engine(store, record, settings, CpuStepTimer)
        from infermeter.app.engines import _tokenizer

        tok = _tokenizer(store, record, engine, True)
        for conc in (1, 8):
            seqs = [f"s{i}" for i in range(conc)]
            last = {}
            for s, p in zip(seqs, PROMPTS, strict=False):
                last[s] = int(np.argmax(engine.step([SeqInput(s, tok.encode(p))]).logits[s]))
            times = []
            start = time.perf_counter()
            for _ in range(args.steps):
                out = engine.step([SeqInput(s, [last[s]]) for s in seqs])
                times.append(out.device_us / 1000)
                last = {s: int(np.argmax(out.logits[s])) for s in seqs}
            wall = time.perf_counter() - start
            for s in seqs:
                engine.release(s)
            print(json.dumps({
                "engine": record.engine_id, "concurrency": conc,
                "ms_per_decode_step": round(statistics.median(times), 2),
                "decode_tokens_per_s": round(conc * args.steps / wall, 1),
            }), flush=True)  # fmt: skip
        engine.close()
    store.close()


if __name__ == "__main__":
    main()
