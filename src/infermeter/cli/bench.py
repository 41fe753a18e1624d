"""``infermeter bench``: the figures in docs/benchmarks.md, measured in one run.

(a) metering overhead: tokens/s with metering on ÷ off, same engine, same workload,
    rounds interleaved (on, off, on, off, …) so machine noise hits both alike;
(b) durable ledger appends per second: group commit, hash-linking, synchronous=FULL;
(c) the gateway's added latency: server-side (the app in process, no HTTP client; with the
    ledger's fsync and without it, the fsync measured on its own), and as an HTTP client sees
    it (``infermeter serve`` in its own process); each a p50 minus the p50 of the same step run
    on the engine directly, calls interleaved.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from infermeter.config import load_settings

console = Console(highlight=False)


def _machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_batch(service: Any, prompts: list[list[int]], max_tokens: int, engine_id: str) -> tuple[int, float]:
    """Submit all requests at once to the worker; wait for all; return (tokens, seconds)."""
    from infermeter.core.ids import request_id
    from infermeter.core.types import ServiceTier
    from infermeter.runtime.sampling import SamplingParams
    from infermeter.runtime.worker import GenerationRequest

    done = threading.Semaphore(0)
    tokens = 0
    lock = threading.Lock()

    def finished(outcome: object) -> None:
        nonlocal tokens
        n = getattr(outcome, "completion_tokens", 0)
        with lock:
            tokens += n
        done.release()

    start = time.perf_counter()
    for ids in prompts:
        service.worker.submit(
            GenerationRequest(
                request_id=request_id(),
                tenant_id="bench",
                model="tiny-gpt",
                engine_id=engine_id,
                tier=ServiceTier.DEFAULT,
                prompt_ids=ids,
                max_tokens=max_tokens,
                sampling=SamplingParams(temperature=0.0),
                on_finish=finished,
            )
        )
    for _ in prompts:
        done.acquire()
    return tokens, time.perf_counter() - start


def bench_metering(home: Path, rounds: int, requests: int, max_tokens: int) -> dict[str, Any]:
    from infermeter.app.service import Service
    from infermeter.core.timing import NullTimer
    from infermeter.metering.timers import CpuStepTimer

    settings = load_settings({"home": home, "warmup_steps": 2}, env={})
    service = Service.from_settings(settings)
    service.start()
    try:
        info = service.engine_infos()[0]
        engine = service._engines[0].engine
        tok = service._engines[0].tokenizer
        prompts = [
            tok.encode(f"Request {i}: " + "tell me about the ledger. " * (1 + i % 4)) for i in range(requests)
        ]
        on: list[float] = []
        off: list[float] = []
        for _ in range(rounds):
            for metered in (True, False):
                engine.timer = CpuStepTimer() if metered else NullTimer()
                service.pipeline.enabled = metered
                n, secs = _run_batch(service, prompts, max_tokens, info.engine_id)
                (on if metered else off).append(n / secs)
        service.pipeline.enabled = True
    finally:
        service.stop()
    ratio = statistics.median(a / b for a, b in zip(on, off, strict=True))
    return {
        "tokens_per_s_on": statistics.median(on),
        "tokens_per_s_off": statistics.median(off),
        "ratio_on_off": ratio,
        "rounds": rounds,
        "requests": requests,
        "max_tokens": max_tokens,
        "engine": info.engine_id,
    }


def bench_ledger(home: Path, n: int) -> dict[str, Any]:
    from infermeter.billing.bench_ledger import bench_appends

    rate = bench_appends(home / "ledger-bench.db", n)
    return {"appends_per_s": rate, "n": n, "synchronous": "FULL", "journal": "WAL"}


def bench_gateway(home: Path, n: int) -> dict[str, Any]:
    """p50 of a 1-token completion through ``infermeter serve`` (its own process, as deployed)
    minus p50 of the same prompt's step on the same engine artifact called directly here.

    Both use one ONNX Runtime thread, so neither process's spinning pool skews the other.
    The HTTP path includes auth, validation, admission and budget reservation, the worker
    hand-off, metering, the durable ledger append (synchronous=FULL) and JSON.
    """
    import subprocess
    import sys

    import httpx

    from infermeter.app.engines import load_default_engines
    from infermeter.billing.sqlite_store import SqliteStore
    from infermeter.metering.timers import CpuStepTimer
    from infermeter.runtime.engine import SeqInput

    settings = load_settings({"home": home, "int8": False, "intra_op_threads": 1}, env={})
    home.mkdir(parents=True, exist_ok=True)
    with SqliteStore(settings.db_path) as store:
        tenant = store.create_tenant("bench-gw")
        _, secret = store.create_key(tenant.tenant_id)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infermeter.cli.main",
            "--home",
            str(home),
            "serve",
            "--port",
            str(port),
            "--no-int8",
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    prompt = "Hello there"
    body = {"model": "tiny-gpt", "prompt": prompt, "max_tokens": 1, "temperature": 0}
    direct: list[float] = []
    gateway: list[float] = []
    floor: list[float] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).json().get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                err = server.stderr.read().decode(errors="replace") if server.stderr else ""
                raise RuntimeError(f"infermeter serve did not start: {err}")
            time.sleep(0.2)
        loaded = load_default_engines(settings, CpuStepTimer)
        engine, tok = loaded[0].engine, loaded[0].tokenizer
        ids = tok.encode(prompt)
        headers = {"authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for i in range(10):  # warm both paths
                client.post("/v1/completions", json=body)
                engine.step([SeqInput(f"warm-{i}", ids)])
                engine.release(f"warm-{i}")
            for i in range(n):  # interleaved, so drift on the shared machine hits both alike
                t0 = time.perf_counter()
                engine.step([SeqInput(f"direct-{i}", ids)])
                engine.release(f"direct-{i}")
                direct.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                client.get("/healthz")  # the HTTP round trip alone, for scale
                floor.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                resp = client.post("/v1/completions", json=body)
                gateway.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    raise RuntimeError(f"gateway answered {resp.status_code}: {resp.text}")
        engine.close()
    finally:
        server.terminate()
        server.wait(30)
    p50_direct = statistics.median(direct) * 1000
    p50_gateway = statistics.median(gateway) * 1000
    return {
        "p50_direct_ms": p50_direct,
        "p50_gateway_ms": p50_gateway,
        "added_p50_ms": p50_gateway - p50_direct,
        "n": n,
        "p50_http_floor_ms": statistics.median(floor) * 1000,
        "p90_gateway_ms": statistics.quantiles(gateway, n=10)[-1] * 1000,
    }


def _fsync_p50_ms(directory: Path, n: int) -> float:
    """p50 of appending one 4 KiB page to a file and fsyncing it: a WAL commit's durable write."""
    import os

    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    page = b"\0" * 4096
    times: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, page)
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


PHASES = ("admit", "worker_engine", "price", "commit", "respond")


class _PhaseClock:
    """Timestamps one request at a time at the service's seams, by wrapping them on this
    instance only: auth+validation+admission end at ``worker.submit``; the worker hop and the
    engine step end at ``pipeline.on_finish``; pricing ends at ``store.submit``; the group
    commit ends at the append callback; the response ends when the client has it."""

    def __init__(self, service: Any) -> None:
        self.marks: dict[str, float] = {}
        self.rows: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self._stamp_before(service.worker, "submit", "submitted")
        self._stamp_before(service.pipeline, "on_finish", "engine_done")
        submit = service.store.submit

        def store_submit(record: Any, callback: Any) -> None:
            self.marks["priced"] = time.perf_counter()

            def committed(result: Any) -> None:
                self.marks["committed"] = time.perf_counter()
                callback(result)

            submit(record, committed)

        setattr(service.store, "submit", store_submit)  # noqa: B010 (an instance, not the class)

    def _stamp_before(self, obj: Any, name: str, mark: str) -> None:
        method = getattr(obj, name)

        def stamped(*args: Any, **kwargs: Any) -> Any:
            self.marks[mark] = time.perf_counter()
            return method(*args, **kwargs)

        setattr(obj, name, stamped)

    def record(self, start: float, end: float) -> None:
        m = self.marks
        points = [start, m["submitted"], m["engine_done"], m["priced"], m["committed"], end]
        for phase, (a, b) in zip(PHASES, itertools.pairwise(points), strict=True):
            self.rows[phase].append(b - a)
        m.clear()

    def p50_ms(self) -> dict[str, float]:
        return {phase: statistics.median(ts) * 1000 for phase, ts in self.rows.items()}


def bench_server_side(home: Path, n: int) -> dict[str, Any]:
    """The gateway's own time, without the HTTP client round trip: the ASGI app in this process,
    driven through httpx's ASGITransport (no sockets, no HTTP parsing), so a request's time is
    routing, auth, validation, admission and budget reservation, the worker hand-off, the
    engine step, metering, the ledger commit and the JSON response. Minus the p50 of the same
    step called on the engine directly, that is the server-side added time.

    Twice, calls interleaved: a ledger with synchronous=FULL (as served) and one with
    synchronous=OFF (the same commit without its fsync); the fsync is measured on its own.
    The split into phases (``_PhaseClock``) wraps the service's seams on these instances only:
    nothing is added to the request path of a served app.
    """

    import httpx

    from infermeter.api.app import create_app
    from infermeter.app.engines import load_default_engines
    from infermeter.app.service import Service
    from infermeter.billing.sqlite_store import SqliteStore
    from infermeter.metering.timers import CpuStepTimer
    from infermeter.runtime.engine import SeqInput

    settings = load_settings(
        {"home": home, "int8": False, "intra_op_threads": 1, "checkpoint_interval_s": 0}, env={}
    )
    home.mkdir(parents=True, exist_ok=True)
    services: dict[str, tuple[Any, str]] = {}
    for mode in ("FULL", "OFF"):
        store = SqliteStore(home / f"server-side-{mode.lower()}.db", synchronous=mode)
        service = Service(settings, load_default_engines(settings, CpuStepTimer), store=store)
        tenant = store.create_tenant("bench-server")
        _, secret = store.create_key(tenant.tenant_id)
        service.start()
        services[mode] = (service, secret)
    clocks = {mode: _PhaseClock(service) for mode, (service, _) in services.items()}
    loaded = load_default_engines(settings, CpuStepTimer)[0]
    engine, ids = loaded.engine, loaded.tokenizer.encode("Hello there")
    body = {"model": "tiny-gpt", "prompt": "Hello there", "max_tokens": 1, "temperature": 0}
    times: dict[str, list[float]] = {"direct": [], "FULL": [], "OFF": []}

    def step(name: str) -> None:
        engine.step([SeqInput(name, ids)])
        engine.release(name)

    async def measure() -> None:
        clients = {
            mode: httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(service, manage=False)),
                base_url="http://infermeter.bench",
                headers={"authorization": f"Bearer {secret}"},
            )
            for mode, (service, secret) in services.items()
        }
        try:
            for i in range(10):  # warm every path
                step(f"warm-{i}")
                for client in clients.values():
                    await client.post("/v1/completions", json=body)
            for i in range(n):  # interleaved, so drift on the shared machine hits all alike
                t0 = time.perf_counter()
                step(f"direct-{i}")
                times["direct"].append(time.perf_counter() - t0)
                for mode, client in clients.items():
                    t0 = time.perf_counter()
                    resp = await client.post("/v1/completions", json=body)
                    t1 = time.perf_counter()
                    times[mode].append(t1 - t0)
                    clocks[mode].record(t0, t1)
                    if resp.status_code != 200:
                        raise RuntimeError(f"the app answered {resp.status_code}: {resp.text}")
        finally:
            for client in clients.values():
                await client.aclose()

    try:
        _run_async(measure())
    finally:
        engine.close()
        for service, _ in services.values():
            service.stop()
    p50 = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    return {
        "p50_direct_ms": p50["direct"],
        "p50_in_process_ms": p50["FULL"],
        "p50_in_process_no_fsync_ms": p50["OFF"],
        "added_p50_ms": p50["FULL"] - p50["direct"],
        "added_p50_no_fsync_ms": p50["OFF"] - p50["direct"],
        "p90_added_no_fsync_ms": statistics.quantiles(times["OFF"], n=10)[-1] * 1000 - p50["direct"],
        "fsync_p50_ms": _fsync_p50_ms(home, n),
        "phases_p50_ms": clocks["FULL"].p50_ms(),
        "phases_no_fsync_p50_ms": clocks["OFF"].p50_ms(),
        "n": n,
        "event_loop": "uvloop" if _uvloop() is not None else "asyncio",
    }


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def _run_async(coro: Any) -> None:
    """Run on uvloop where installed, the loop ``serve`` uses; asyncio's own loop otherwise."""
    import asyncio

    uvloop = _uvloop()
    with asyncio.Runner(loop_factory=None if uvloop is None else uvloop.new_event_loop) as runner:
        runner.run(coro)


def bench_accuracy(home: Path, quick: bool) -> dict[str, Any]:
    """Metering accuracy (``bench --accuracy``): requests solo, then batched, on ORT (CPU).

    One intra-op thread and the thread-CPU-time step timer keep other processes' load out
    of the figures (see metering.accuracy). The same batched steps are split by the
    token-proportional default and by a cost model fitted from logged steps (calibration).
    """
    from infermeter.app.engines import load_default_engines
    from infermeter.cli.calibrate import EngineRunner
    from infermeter.metering import accuracy as acc
    from infermeter.metering.attribution import TOKEN_PROPORTIONAL
    from infermeter.metering.calibrate import cost_steps
    from infermeter.metering.costfit import fit_cost_model

    settings = load_settings({"home": home, "intra_op_threads": 1, "int8": False}, env={})
    loaded = load_default_engines(settings, acc.ThreadCpuTimer)
    engine = next(x.engine for x in loaded if x.engine.info.backend == "onnxruntime")
    for other in loaded:
        if other.engine is not engine:
            other.engine.close()
    runner = EngineRunner(engine)
    try:
        fitted, mape = fit_cost_model(cost_steps(runner, quick=quick), "fit-accuracy-bench")
        specs = acc.request_set(8 if quick else 16, runner.vocab_size)
        repeats = 3 if quick else 7
        solo = acc.solo_device_us(runner, specs, repeats=repeats)
        steps = acc.batched_steps(runner, specs, stagger=1, runs=repeats)
    finally:
        engine.close()
    reports = {
        "before": acc.evaluate(steps, solo, TOKEN_PROPORTIONAL),
        "after": acc.evaluate(steps, solo, fitted),
    }
    out: dict[str, Any] = {
        "engine": engine.info.engine_id,
        "requests": len(specs),
        "repeats": repeats,
        "fit_mape_percent": str(mape),
    }
    for name, rep in reports.items():
        out[name] = {
            "model": rep.model_version,
            "conservation_error_us": rep.conservation_error_us,
            "measured_us": rep.measured_us,
            "solo_us": rep.solo_us,
            "share_median": rep.share_median,
            "share_p95": rep.share_p95,
            "raw_median": rep.raw_median,
            "raw_p95": rep.raw_p95,
        }
    return out


def run_accuracy(args: argparse.Namespace) -> int:
    """``infermeter bench --accuracy [--quick] [--json FILE]``: print the accuracy table."""
    quick = bool(args.quick)
    with tempfile.TemporaryDirectory(prefix="infermeter-accuracy-") as tmp:
        result = bench_accuracy(Path(tmp), quick)
    result |= {"machine": _machine(), "date": time.strftime("%Y-%m-%d"), "quick": quick}
    table = Table(
        "cost model",
        "conservation error",
        "median error",
        "p95 error",
        "raw median (incl. batching discount)",
    )
    for name in ("before", "after"):
        r = result[name]
        table.add_row(
            f"{name}: {r['model']}",
            f"{r['conservation_error_us']} µs",
            f"{r['share_median']:.1%}",
            f"{r['share_p95']:.1%}",
            f"{r['raw_median']:.1%}",
        )
    console.print(table)
    console.print(
        f"{result['requests']} requests on {result['engine']}, medians of "
        f"{result['repeats']} runs; cost-model fit MAPE {result['fit_mape_percent']} %; "
        f"goal: conservation exact, median error ≤ 5 % after calibration"
    )
    console.print(f"machine: {result['machine']}; date {result['date']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


def run_benchmarks(args: argparse.Namespace) -> int:
    if getattr(args, "accuracy", False):
        return run_accuracy(args)
    quick = bool(args.quick)
    sizes = {
        "rounds": 2 if quick else 5,
        "requests": 4 if quick else 16,
        "max_tokens": 8 if quick else 32,
        "appends": 5_000 if quick else 200_000,
        "gateway": 20 if quick else 200,
    }
    results: dict[str, Any] = {"machine": _machine(), "date": time.strftime("%Y-%m-%d"), "quick": quick}
    with tempfile.TemporaryDirectory(prefix="infermeter-bench-") as tmp:
        base = Path(tmp)
        console.print("(a) metering on/off …")
        results["metering"] = bench_metering(
            base / "a", sizes["rounds"], sizes["requests"], sizes["max_tokens"]
        )
        console.print("(b) ledger appends …")
        results["ledger"] = bench_ledger(base, sizes["appends"])
        console.print("(c) gateway latency: server-side, in process …")
        results["server_side"] = bench_server_side(base / "c-in-process", sizes["gateway"])
        console.print("(c) gateway latency: through HTTP …")
        results["gateway"] = bench_gateway(base / "c", sizes["gateway"])
    table = Table("benchmark", "result", "goal")
    m, led, g, srv = results["metering"], results["ledger"], results["gateway"], results["server_side"]
    table.add_row(
        "(a) tokens/s metering on ÷ off",
        f"{m['ratio_on_off']:.4f} ({m['tokens_per_s_on']:.0f} / {m['tokens_per_s_off']:.0f} tok/s)",
        "≥ 0.99",
    )
    table.add_row("(b) durable ledger appends/s", f"{led['appends_per_s']:,.0f}", "≥ 100,000")
    table.add_row(
        "(c) gateway added p50, server-side (excl. fsync)",
        f"{srv['added_p50_no_fsync_ms']:.3f} ms ({srv['p50_in_process_no_fsync_ms']:.3f} - "
        f"{srv['p50_direct_ms']:.3f}); with the fsync {srv['added_p50_ms']:.3f} ms",
        "< 1 ms",
    )
    table.add_row("(c) ledger commit fsync p50 (4 KiB write + fsync)", f"{srv['fsync_p50_ms']:.3f} ms", "")
    table.add_row(
        "(c) gateway added p50 latency, HTTP client",
        f"{g['added_p50_ms']:.3f} ms ({g['p50_gateway_ms']:.3f} - {g['p50_direct_ms']:.3f}); "
        f"HTTP round trip alone {g['p50_http_floor_ms']:.3f} ms",
        "",
    )
    console.print(table)
    for label, key in (("with fsync", "phases_p50_ms"), ("without fsync", "phases_no_fsync_p50_ms")):
        split = ", ".join(f"{phase} {ms:.3f}" for phase, ms in srv[key].items())
        console.print(f"server-side p50 by phase, ms ({label}): {split}")
    console.print(f"machine: {results['machine']}; date {results['date']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0
