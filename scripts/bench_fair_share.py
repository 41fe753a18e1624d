"""FIFO vs fair share (VTC with measured cost) on the worker: throughput and the service gap.

Runs the real Worker and Scheduler on the FakeEngine (scripted device time, so the engine's
cost model is identical between runs) with every step attributed as the metering pipeline
does. For each scenario and mode it prints wall-clock tokens/s, tokens per scripted
device-second, and (two tenants) the service gap when the smaller tenant's last request ends.

    PYTHONPATH=src python scripts/bench_fair_share.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import defaultdict

from infermeter.core.records import StepRecord, StepShares
from infermeter.core.types import ServiceTier
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, attribute
from infermeter.runtime.fake_engine import FakeEngine
from infermeter.runtime.scheduler import SchedulerConfig
from infermeter.runtime.tokenizer import ByteTokenizer
from infermeter.runtime.worker import FinishedRequest, GenerationRequest, Worker


class Sink:
    def __init__(self) -> None:
        self.device_us = 0
        self.service: dict[str, int] = defaultdict(int)
        self.gap_at_b_done: int | None = None
        self.b_left = 0

    def on_step(self, step: StepRecord, kv_bytes: dict[str, int]) -> StepShares:
        shares = attribute(step, TOKEN_PROPORTIONAL)
        self.device_us += step.device_us
        for rid, us in shares.shares.items():
            self.service[rid[0]] += us
        return shares

    def on_finish(self, finished: FinishedRequest) -> None:
        if finished.request.tenant_id == "b":
            self.b_left -= 1
            if self.b_left == 0:
                self.gap_at_b_done = abs(self.service["a"] - self.service["b"])
        if finished.request.on_finish is not None:
            finished.request.on_finish(finished)


def run(fair: bool, counts: dict[str, int], max_tokens: int = 16) -> tuple[float, float, int | None]:
    sink = Sink()
    sink.b_left = counts.get("b", 0)
    w = Worker(sink, fair=fair)  # type: ignore[arg-type]
    w.add_engine(FakeEngine(), ByteTokenizer(), SchedulerConfig(max_batch=8, max_seq_len=128))
    ids = [f"{t}{i}" for t, n in counts.items() for i in range(n)]
    done = threading.Event()
    left = [len(ids)]

    def finish(_o: object) -> None:
        left[0] -= 1
        if left[0] == 0:
            done.set()

    for rid in ids:
        w.submit(
            GenerationRequest(
                request_id=rid, tenant_id=rid[0], model="tiny-gpt", engine_id="fake-engine",
                tier=ServiceTier.DEFAULT, prompt_ids=[97] * 24, max_tokens=max_tokens, on_finish=finish,
            )
        )  # fmt: skip
    t0 = time.perf_counter()
    w.start()
    done.wait(300)
    wall = time.perf_counter() - t0
    w.stop()
    tokens = len(ids) * max_tokens
    return tokens / wall, tokens / (sink.device_us / 1e6), sink.gap_at_b_done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for name, counts in (("lone tenant, 400 requests", {"a": 400}), ("a 400 + b 40", {"a": 400, "b": 40})):
        ratios, dev_ratios, rows = [], [], []
        for _ in range(args.rounds):  # interleaved: FIFO then VTC each round
            fifo, vtc = run(False, counts), run(True, counts)
            ratios.append(vtc[0] / fifo[0])
            dev_ratios.append(vtc[1] / fifo[1])
            rows.append((fifo, vtc))
        print(f"{name}:")
        print(f"  wall tokens/s VTC/FIFO, median of {args.rounds}: {statistics.median(ratios):.3f}")
        print(f"  tokens per device-second VTC/FIFO, median: {statistics.median(dev_ratios):.3f}")
        fifo, vtc = rows[-1]
        print(f"  last round: FIFO {fifo[0]:.0f} tok/s, VTC {vtc[0]:.0f} tok/s")
        if "b" in counts:
            print(f"  service gap |S_a - S_b| (µs) when b's last request ends: FIFO {fifo[2]}, VTC {vtc[2]}")


if __name__ == "__main__":
    main()
