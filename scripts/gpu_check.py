#!/usr/bin/env python3
"""GPU check of infermeter's metering and engines: one NVIDIA GPU, PyTorch, no network.

    python scripts/gpu_check.py [--out report.json] [--home DIR] [--device cuda|cpu] [--quick]
                                [--model llama|builtin|both] [--llama-size 1b|tiny] [--dry-run]

Two models, each served inside a real ``Service`` with metering on (CUDA-event step timer,
NVML/GPM window sampler), each run through the same metering stages:

- ``llama`` (issue 9, first): a 1B-class Llama-shaped model with random weights built from a
  ``transformers`` config on the device (``scripts/gpu_llama.py``: no download), on the
  transformers backend at FP16, plus its GPU economy candidates (weight-only int8, FP8 e4m3)
  measured for drift and speed against FP16, and its tokens/s against transformers' own
  batched ``generate`` on the same prompts;
- ``builtin`` (issue 4): the built-in model on the PyTorch CUDA backend.

For each it reports conservation error · attribution error vs solo (before/after
calibration) · tokens/s with metering on ÷ off (goal >= 0.99) · sampler windows
valid/rejected · energy per 1,000 tokens · RU for four fixed prompts · step-timer CPU cost ·
synchronize calls added (0), and prints a summary table last, the Llama's rows at the end.

It writes the same as JSON (``--out``; default ``$OUT/gpu_check.json`` when OUT is set, else
./gpu_check.json). Every section runs in its own try/except: a failure is reported in the
table, never an abort. ``--device cpu`` is a dry run of the same code on the CPU (torch CPU
engines, scripted sampler) for machines without a GPU; ``--dry-run`` is ``--device cpu
--quick --llama-size tiny``: every stage end to end on a tiny config, in about a minute.

Needs, besides PyTorch with CUDA and transformers (the Llama stages), these of infermeter's
dependencies: numpy, onnx,
onnxruntime (the built-in model is written as ONNX, its weights loaded into torch),
prometheus-client, rich, tokenizers, and cryptography (the usage ledger signs its
checkpoints; a binary wheel, with cffi and pycparser); plus nvidia-ml-py for the NVML
sampler (without it the sampler falls back to the scripted source, and the table says so).
fastapi, uvicorn, pydantic and httpx are not needed: no HTTP server is started. On an
offline machine, bring missing ones as wheels, e.g. ``pip download --only-binary=:all:
--python-version 3.12 --platform manylinux2014_x86_64 -d wheels cryptography cffi
pycparser`` elsewhere, then ``pip install --no-index wheels/*.whl``. Run it from a
checkout (it puts ``src/`` on sys.path) or with infermeter installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "src" / "infermeter").is_dir():
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_llama, beside this file

DEPENDENCIES = (
    "numpy",
    "onnx",
    "onnxruntime",
    "prometheus_client",
    "rich",
    "tokenizers",
    "cryptography",
    "torch",
)
DEADLINE_S = 480.0  # stop starting optional work after this; the whole run stays under 9 min


class Report:
    """Sections by name: ok, seconds, data or the error, collected for the table and JSON."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()

    @contextmanager
    def section(self, name: str) -> Iterator[dict[str, Any]]:
        data: dict[str, Any] = {}
        entry: dict[str, Any] = {"ok": False, "data": data}
        self.sections[name] = entry
        t0 = time.monotonic()
        try:
            yield data
            entry["ok"] = True
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=6)
            print(f"[{name}] FAILED: {entry['error']}", flush=True)
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 2)
            print(f"[{name}] done in {entry['seconds']} s", flush=True)

    def left(self) -> float:
        return DEADLINE_S - (time.monotonic() - self.started)

    def data(self, name: str) -> dict[str, Any]:
        entry = self.sections.get(name)
        return entry["data"] if entry and entry["ok"] else {}


# -- the workload -----------------------------------------------------------------------------
def prompts(count: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """Mixed requests: prompts of 16..256 tokens, 8..48 new tokens, deterministic."""
    out = []
    for i in range(count):
        length = 16 + (i * 53 + seed * 7) % 241
        new = 8 + (i * 11 + seed) % 41
        out.append(([(seed + i * 13 + k * 7) % (vocab - 4) for k in range(length)], new))
    return out


def run_batch(
    service: Any, engine_id: str, work: list[tuple[list[int], int]], tag: str
) -> tuple[int, float, list[Any]]:
    """Submit every request at once to the worker; wait; (tokens, seconds, outcomes)."""
    from infermeter.core.types import ServiceTier
    from infermeter.runtime.sampling import SamplingParams
    from infermeter.runtime.worker import GenerationRequest

    model = next(i.model for i in service.engine_infos() if i.engine_id == engine_id)
    done = threading.Semaphore(0)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def finished(outcome: object) -> None:
        with lock:
            outcomes.append(outcome)
        done.release()

    t0 = time.perf_counter()
    for i, (ids, new) in enumerate(work):
        service.worker.submit(
            GenerationRequest(
                request_id=f"{tag}-{i}",
                tenant_id="gpu-check",
                model=model,
                engine_id=engine_id,
                tier=ServiceTier.DEFAULT,
                prompt_ids=ids,
                max_tokens=new,
                sampling=SamplingParams(temperature=0.0),
                on_finish=finished,
            )
        )
    for _ in work:
        if not done.acquire(timeout=120):
            raise TimeoutError(f"round {tag}: a request did not finish within 120 s")
    seconds = time.perf_counter() - t0
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise RuntimeError(f"round {tag}: {len(failed)} requests failed: {failed[0]!r}")
    return sum(int(getattr(o, "completion_tokens", 0)) for o in outcomes), seconds, outcomes


class StepTally:
    """Σ device µs of the steps the pipeline metered (to check conservation against)."""

    def __init__(self, pipeline: Any) -> None:
        self.measured_us = 0
        self.steps = 0
        original = pipeline.on_step

        def on_step(step: Any, kv: Any) -> None:
            if pipeline.enabled:
                self.measured_us += step.device_us
                self.steps += 1
            original(step, kv)

        pipeline.on_step = on_step


@contextmanager
def count_synchronize(torch: Any) -> Iterator[dict[str, int]]:
    """Count synchronize calls made while metering runs (the goal is none added)."""
    counts = {"calls": 0}
    targets = [
        (torch.cuda, "synchronize"),
        (torch.cuda.Event, "synchronize"),
        (torch.cuda.Stream, "synchronize"),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name in targets]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts["calls"] += 1
            return fn(*args, **kwargs)

        return counted

    for obj, name, fn in saved:
        setattr(obj, name, wrap(fn))
    try:
        yield counts
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


# -- sections ---------------------------------------------------------------------------------
def environment(data: dict[str, Any], device: str) -> None:
    missing = []
    for name in DEPENDENCIES:
        try:
            module = importlib.import_module(name)
            data[name] = str(getattr(module, "__version__", "present"))
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: pip install them (wheels) first")
    import torch

    data["python"] = sys.version.split()[0]
    data["cuda_available"] = bool(torch.cuda.is_available())
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device; run with --device cpu for a dry run")
        data["gpu"] = torch.cuda.get_device_name(0)
        data["torch_cuda"] = str(torch.version.cuda)


def nvml_probe(data: dict[str, Any]) -> None:
    """NVML: device, energy-counter read cost, GPM support (reference §1 numbers to compare)."""
    import pynvml

    from infermeter.metering.sources import NvmlSource

    src = NvmlSource(0)
    try:
        data["device"] = src.device
        data["gpm_supported"] = src.gpm
        handle = src._handle  # the same handle the sampler reads
        t0 = time.perf_counter()
        for _ in range(20):
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        data["energy_read_ms"] = round((time.perf_counter() - t0) / 20 * 1000, 3)
        data["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
    finally:
        src.close()


def timer_cost(data: dict[str, Any], device: str) -> None:
    """CPU µs per step spent in the step timer: begin + end + elapsed at the step's sync."""
    import torch

    from infermeter.metering.timers import CpuStepTimer

    n = 2000
    if device == "cuda":
        from infermeter.metering.cuda_timer import CudaEventTimer

        stream = torch.cuda.Stream()
        timer: Any = CudaEventTimer(stream)
        x = torch.ones(1024, device="cuda")
        ctx: Any = torch.cuda.stream(stream)
    else:
        timer, x, ctx = CpuStepTimer(), torch.ones(1024), None
    costs = []
    with ctx if ctx is not None else _null():
        for _ in range(n):
            a = time.perf_counter_ns()
            timer.begin()
            b = time.perf_counter_ns()
            y = x + 1
            c = time.perf_counter_ns()
            timer.end()
            d = time.perf_counter_ns()
            y[0].cpu()  # the step's own sync
            e = time.perf_counter_ns()
            timer.elapsed_us()
            f = time.perf_counter_ns()
            costs.append((b - a) + (d - c) + (f - e))
    data["timer"] = type(timer).__name__
    data["cpu_us_per_step_median"] = round(statistics.median(costs) / 1000, 2)
    data["cpu_us_per_step_p95"] = round(sorted(costs)[int(0.95 * n)] / 1000, 2)


@contextmanager
def _null() -> Iterator[None]:
    yield


def make_sampler(kind: str, ledger: Any, idle_power_mw: int | None = None) -> Any:
    from infermeter.metering.sampler import WindowSampler
    from infermeter.metering.sources import make_source

    source = make_source(kind)
    assert source is not None
    return WindowSampler(
        source,
        None if ledger is None else ledger.write,
        window_ms=100,
        min_activity_ms=100,
        idle_power_mw=idle_power_mw,
    )


def idle_power(kind: str, seconds: float = 0.8) -> int:
    """The device's idle power (mW), learned by a sampler over windows with no step."""
    sampler = make_sampler(kind, None)
    sampler.start()
    time.sleep(seconds)
    sampler.stop(flush=False)
    return int(sampler.idle_power_mw)


MODES = ("off", "timer", "metered", "full")


def throughput_and_windows(
    report: Report, ctx: dict[str, Any], data: dict[str, Any], rounds: int, count: int
) -> None:
    """Rounds of the same mixed workload, modes interleaved in each round:

    off      NullTimer, pipeline disabled, no sampler (nothing metered)
    timer    CUDA-event step timer only
    metered  timer + attribution, meters, durable usage record per request
    full     metered + window sampler thread (NVML/GPM) + window ledger: metering on

    The goal ratio is full ÷ off (median over rounds); the others show where cost goes.
    """
    from infermeter.core.timing import NullTimer

    service, engine, kind, ledger = ctx["service"], ctx["engine"], ctx["sampler"], ctx["ledger"]
    engine_id = engine.info.engine_id
    metered_timer = engine.timer
    tally = StepTally(service.pipeline)
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    tokens_on = 0
    stats = []
    sync_calls = 0
    torch = importlib.import_module("torch")
    done_rounds = 0
    idle_mw = ctx["idle_power_mw"] = idle_power(kind)
    data["idle_power_mw"] = idle_mw
    engine.timer, service.pipeline.enabled = NullTimer(), False
    run_batch(service, engine_id, prompts(count, engine.info.vocab_size, seed=99), "warm-up")
    for r in range(rounds):
        if report.left() < 90 and done_rounds:
            break
        work = prompts(count, engine.info.vocab_size, seed=r)
        order = MODES if r % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            engine.timer = NullTimer() if mode == "off" else metered_timer
            service.pipeline.enabled = mode in ("metered", "full")
            sampler = make_sampler(kind, ledger, idle_mw) if mode == "full" else None
            service.pipeline.step_sink = sampler.record_step if sampler else None
            if sampler:
                sampler.start()
            counter = count_synchronize(torch) if mode != "off" and ctx["device"] == "cuda" else None
            with counter if counter is not None else _null() as counts:
                n, secs, _ = run_batch(service, engine_id, work, f"r{r}-{mode}")
            if counts is not None:
                sync_calls += counts["calls"]
            if sampler:
                sampler.stop(flush=True)
                stats.append(sampler.stats)
                tokens_on += n
            rates[mode].append(n / secs)
        done_rounds += 1
    engine.timer = metered_timer
    service.pipeline.enabled = True
    service.pipeline.step_sink = None
    book = service.pipeline.book
    accounted = book.attributed_us + book.unattributed_us + book.warmup_us
    off = rates["off"]
    for mode in MODES:
        data[f"tokens_per_s_{mode}"] = round(statistics.median(rates[mode]), 1)
        if mode != "off":
            data[f"ratio_{mode}_off"] = round(
                statistics.median(a / b for a, b in zip(rates[mode], off, strict=True)), 4
            )
    data["ratio_on_off"] = data["ratio_full_off"]
    data["tokens_per_s_on"] = data["tokens_per_s_full"]
    data["rounds"] = done_rounds
    data["requests_per_round"] = count
    data["metered_steps"] = tally.steps
    data["measured_device_us"] = tally.measured_us
    data["attributed_us"] = book.attributed_us
    data["unattributed_us"] = book.unattributed_us
    data["conservation_error_us"] = accounted - tally.measured_us - ctx["warmup_us"]
    data["synchronize_calls_while_metering"] = sync_calls
    data["sampler_source"] = kind
    data["windows"] = sum(s.windows for s in stats)
    data["windows_valid"] = sum(s.valid for s in stats)
    data["windows_rejected"] = sum(s.rejected for s in stats)
    reasons: dict[str, int] = {}
    for s in stats:
        for k, v in s.rejected_by_reason.items():
            reasons[k] = reasons.get(k, 0) + v
    data["rejected_by_reason"] = reasons
    data["windows_no_activity"] = sum(s.no_activity for s in stats)
    energy = sum(s.energy_mj for s in stats)
    attributed = sum(s.attributed_energy_mj for s in stats)
    unattributed = sum(s.unattributed_energy_mj for s in stats)
    data["energy_mj"] = energy
    data["energy_closure_error_mj"] = attributed + unattributed - energy
    data["tokens_metered"] = tokens_on
    data["energy_j_per_1k_tokens"] = round(energy / tokens_on, 3) if tokens_on else None
    data["attributed_energy_j_per_1k_tokens"] = round(attributed / tokens_on, 3) if tokens_on else None
    pool = ledger.pool()
    data["ledger_pool"] = {
        "windows": pool.windows,
        "valid": pool.valid,
        "rejected": pool.rejected,
        "energy_mj": pool.energy_mj,
        "idle_mj": pool.idle_mj,
        "unattributed_energy_mj": pool.unattributed_energy_mj,
    }


def fixed_prompt_ru(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    """RU of four fixed prompts (greedy, 32 new tokens) under the service's RU table."""
    service, engine = ctx["service"], ctx["engine"]
    texts = [
        "The ledger records every request.",
        "Explain device time in one sentence.",
        "Once upon a time, on a GPU far away,",
        "def add(a, b):\n    return a + b\n",
    ]
    tok = ctx["tokenizer"]
    work = [(tok.encode(t), 32) for t in texts]
    sampler = make_sampler(ctx["sampler"], ctx["ledger"], ctx.get("idle_power_mw"))
    service.pipeline.step_sink = sampler.record_step
    sampler.start()
    try:
        _, _, outcomes = run_batch(service, engine.info.engine_id, work, "ru")
    finally:
        sampler.stop(flush=True)
        service.pipeline.step_sink = None
    rows = []
    for o in sorted(outcomes, key=lambda o: o.request_id):
        meters = ctx["ledger"].meters(o.request_id)
        rows.append(
            {
                "request_id": o.request_id,
                "tokens": o.completion_tokens,
                "device_ms": str(o.device_ms),
                "ru": str(o.ru),
                "energy_mj": None if meters is None else meters.energy_mj,
            }
        )
    data["prompts"] = rows
    data["total_ru"] = str(sum((o.ru for o in outcomes), start=Decimal(0)))
    data["ru_table_version"] = outcomes[0].ru_table_version
    data["device_class"] = engine.info.device_class


def calibration(ctx: dict[str, Any], data: dict[str, Any], quick: bool) -> Any:
    from infermeter.cli.calibrate import EngineRunner, model_shape
    from infermeter.metering import calibrate as cal
    from infermeter.metering.ru import SEED_TABLE

    engine = ctx["engine"]
    rates = (
        cal.measure_cuda_reference(quick=quick)
        if ctx["device"] == "cuda"
        else cal.measure_cpu_reference(quick=quick)
    )
    runner = EngineRunner(engine)
    result = cal.calibrate(
        engine.info.device_class,
        rates,
        SEED_TABLE,
        {engine.info.engine_id: (runner, model_shape(engine))},
        quick=quick,
    )
    path = cal.save(result, ctx["home"])
    fitted = result.cost_models[engine.info.engine_id]
    data["device_class"] = result.device_class
    data["gemm_tflops"] = round(rates.gemm_tflops, 3)
    data["copy_gbps"] = round(rates.copy_gbps, 1)
    data["r_compute"] = round(rates.r_compute, 4)
    data["r_bw"] = round(rates.r_bw, 4)
    data["factors"] = {
        p.phase: str(result.ru_table.factor(result.device_class, p.phase, engine.info.precision))
        for p in result.probes
    }
    data["seed_factors"] = {}
    for p in result.probes:
        try:
            data["seed_factors"][p.phase] = str(
                SEED_TABLE.factor(result.device_class, p.phase, engine.info.precision)
            )
        except Exception:
            data["seed_factors"][p.phase] = None
    data["probes_us_per_token"] = {p.phase: round(p.us_per_token, 3) for p in result.probes}
    data["cost_model"] = fitted.model.to_json()
    data["fit_mape_percent"] = str(fitted.mape_percent)
    data["fit_steps"] = fitted.steps
    data["path"] = str(path)
    return fitted.model


def accuracy(ctx: dict[str, Any], data: dict[str, Any], fitted: Any, quick: bool) -> None:
    from infermeter.cli.calibrate import EngineRunner
    from infermeter.metering import accuracy as acc
    from infermeter.metering.attribution import TOKEN_PROPORTIONAL

    runner = EngineRunner(ctx["engine"])
    specs = acc.request_set(8 if quick else 16, runner.vocab_size)
    repeats = 3 if quick else 5
    solo = acc.solo_device_us(runner, specs, repeats=repeats)
    steps = acc.batched_steps(runner, specs, stagger=1, runs=repeats)
    models = [TOKEN_PROPORTIONAL] + ([fitted] if fitted is not None else [])
    for name, model in zip(("before", "after"), models, strict=False):
        rep = acc.evaluate(steps, solo, model)
        data[name] = {
            "model": rep.model_version,
            "conservation_error_us": rep.conservation_error_us,
            "share_median": round(rep.share_median, 4),
            "share_p95": round(rep.share_p95, 4),
            "raw_median": round(rep.raw_median, 4),
            "raw_p95": round(rep.raw_p95, 4),
            "measured_us": rep.measured_us,
            "solo_us": rep.solo_us,
        }


# -- main ---------------------------------------------------------------------------------------
def build_service(home: Path, device: str, sampler: str) -> dict[str, Any]:
    from infermeter.cli.calibrate import torch_engine
    from infermeter.config import load_settings
    from infermeter.core.types import Precision
    from infermeter.metering.timers import CpuStepTimer
    from infermeter.runtime.tokenizer import ByteTokenizer

    settings = load_settings({"home": home, "warmup_steps": 4, "max_batch": 16}, env={})
    precision = Precision.FP16 if device == "cuda" else Precision.FP32
    engine = torch_engine(settings, precision=precision, device=device, timer_factory=CpuStepTimer)
    return start_service(settings, engine, ByteTokenizer(), device, sampler)


def build_llama_service(
    home: Path, device: str, sampler: str, size: str, data: dict[str, Any]
) -> dict[str, Any]:
    """The random-weight Llama on the transformers engine, in a Service of its own."""
    import gpu_llama

    from infermeter.config import load_settings
    from infermeter.runtime.tokenizer import ByteTokenizer

    home.mkdir(parents=True, exist_ok=True)
    settings = load_settings({"home": home, "warmup_steps": 4, "max_batch": 16}, env={})
    t0 = time.perf_counter()
    model = gpu_llama.build_llama(size, "cuda" if device == "cuda" else "cpu")
    data["config"] = size
    data["parameters"] = gpu_llama.parameters(model)
    data["build_seconds"] = round(time.perf_counter() - t0, 2)
    engine = gpu_llama.performance_engine(model, device)
    ctx = start_service(settings, engine, ByteTokenizer(), device, sampler)
    ctx["model"] = model
    return ctx


def start_service(settings: Any, engine: Any, tokenizer: Any, device: str, sampler: str) -> dict[str, Any]:
    from infermeter.app.service import Service
    from infermeter.metering.window_ledger import WindowLedger
    from infermeter.runtime.engine import LoadedEngine

    service = Service(settings, [LoadedEngine(engine, tokenizer)])
    tally_warmup: list[int] = []
    original = service.pipeline.on_step

    def warm(step: Any, kv: Any) -> None:
        if step.warmup:
            tally_warmup.append(step.device_us)
        original(step, kv)

    service.pipeline.on_step = warm
    service.start()
    service.pipeline.on_step = original
    return {
        "service": service,
        "engine": engine,
        "tokenizer": tokenizer,
        "home": settings.home,
        "device": device,
        "sampler": sampler,
        "warmup_us": sum(tally_warmup),
        "ledger": WindowLedger(settings.home / "windows.db"),
    }


def metering_stages(
    report: Report, ctx: dict[str, Any], prefix: str, quick: bool, rounds: int, count: int
) -> None:
    """throughput, fixed-prompt RU, calibration and accuracy sections for one service."""
    with report.section(prefix + "throughput") as data:
        throughput_and_windows(report, ctx, data, rounds=2 if quick else rounds, count=12 if quick else count)
    with report.section(prefix + "fixed_prompt_ru") as data:
        fixed_prompt_ru(ctx, data)
    fitted = None
    with report.section(prefix + "calibration") as data:
        fitted = calibration(ctx, data, quick)
    with report.section(prefix + "accuracy") as data:
        accuracy(ctx, data, fitted, quick)


def table(report: Report, prefix: str = "", extra: list[tuple[str, str, str]] | None = None) -> str:
    s = report.sections

    def get(name: str, *keys: str) -> Any:
        value: Any = report.data(name)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def fail(name: str) -> str:
        entry = s.get(name)
        if entry is None:
            return "not run"
        return "FAILED: " + entry.get("error", "?")[:70]

    rows: list[tuple[str, str, str]] = []
    t = report.data(prefix + "throughput")
    if t:
        rows += [
            (
                "conservation error (steps)",
                f"{t['conservation_error_us']} µs of {t['measured_device_us']:,} µs",
                "exactly 0",
            ),
            (
                "energy closure error (windows)",
                f"{t['energy_closure_error_mj']} mJ of {t['energy_mj']:,} mJ",
                "exactly 0",
            ),
            (
                "tokens/s metering on ÷ off",
                f"{t['ratio_on_off']:.4f} ({t['tokens_per_s_on']:.0f} / "
                f"{t['tokens_per_s_off']:.0f}, {t['rounds']} rounds)",
                ">= 0.99",
            ),
            (
                "  of which timer / +records / +sampler",
                f"{t['ratio_timer_off']:.4f} / {t['ratio_metered_off']:.4f} / {t['ratio_full_off']:.4f}",
                "",
            ),
            ("synchronize calls added by metering", str(t["synchronize_calls_while_metering"]), "0"),
            (
                "sampler windows valid / rejected",
                f"{t['windows_valid']} / {t['windows_rejected']} "
                f"of {t['windows']} ({t['sampler_source']}; {t['rejected_by_reason'] or 'none'})",
                "",
            ),
            (
                "energy per 1,000 tokens",
                f"{t['energy_j_per_1k_tokens']} J (attributed above "
                f"idle {t['attributed_energy_j_per_1k_tokens']} J; idle {t['idle_power_mw'] / 1000:.1f} W)",
                "",
            ),
        ]
    else:
        rows.append(("throughput / conservation / windows", fail(prefix + "throughput"), ""))
    a = report.data(prefix + "accuracy")
    if a:
        for name in ("before", "after"):
            if name in a:
                r = a[name]
                rows.append(
                    (
                        f"attribution error vs solo, {name} calibration",
                        f"median {r['share_median']:.1%}, p95 {r['share_p95']:.1%} "
                        f"(conservation {r['conservation_error_us']} µs)",
                        "median <= 5 % after" if name == "after" else "",
                    )
                )
    else:
        rows.append(("attribution error vs solo", fail(prefix + "accuracy"), ""))
    ru = report.data(prefix + "fixed_prompt_ru")
    rows.append(
        (
            "RU, 4 fixed prompts x 32 tokens",
            f"{ru['total_ru']} RU ({ru['device_class']}, {ru['ru_table_version']})"
            if ru
            else fail(prefix + "fixed_prompt_ru"),
            "",
        )
    )
    c = report.data(prefix + "calibration")
    rows.append(
        (
            "calibration: GEMM, copy, factors, fit MAPE",
            f"{c['gemm_tflops']} TFLOP/s, {c['copy_gbps']} GB/s, prefill {c['factors'].get('prefill')}"
            f" / decode {c['factors'].get('decode')} RU/ms (seed {c['seed_factors']}), "
            f"MAPE {c['fit_mape_percent']} %"
            if c
            else fail(prefix + "calibration"),
            "",
        )
    )
    tc = report.data("timer_cost")
    rows.append(
        (
            "step-timer CPU cost per step",
            f"{tc['cpu_us_per_step_median']} µs median, {tc['cpu_us_per_step_p95']} µs p95 ({tc['timer']})"
            if tc
            else fail("timer_cost"),
            "",
        )
    )
    nv = report.data("nvml")
    rows.append(
        (
            "NVML energy read / GPM",
            f"{nv['energy_read_ms']} ms per read, GPM "
            f"{'yes' if nv['gpm_supported'] else 'no'} ({nv['device']}, driver {nv['driver']})"
            if nv
            else fail("nvml"),
            "~4 ms; never per request",
        )
    )
    rows += extra or []
    width = max(len(r[0]) for r in rows)
    lines = [f"{'check':<{width}}  result  [goal]"]
    for name, result, goal in rows:
        lines.append(f"{name:<{width}}  {result}" + (f"  [{goal}]" if goal else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", help="JSON report path (default $OUT/gpu_check.json)")
    parser.add_argument("--home", help="data directory (default: a temporary one)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller workload (dry runs)")
    parser.add_argument("--model", choices=("llama", "builtin", "both"), default="both")
    parser.add_argument(
        "--llama-size", choices=("1b", "tiny"), dest="llama_size", help="default: 1b on cuda, tiny on cpu"
    )
    parser.add_argument(
        "--dry-run", action="store_true", dest="dry_run", help="--device cpu --quick --llama-size tiny"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.quick, args.llama_size = "cpu", True, "tiny"
    size = args.llama_size or ("1b" if args.device == "cuda" else "tiny")
    out = (
        Path(args.out)
        if args.out
        else (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json"))
    )
    report = Report()
    tmp = tempfile.TemporaryDirectory(prefix="infermeter-gpu-check-")
    home = Path(args.home) if args.home else Path(tmp.name)
    with report.section("environment") as data:
        environment(data, args.device)
    with report.section("nvml") as data:
        nvml_probe(data)
    sampler = "nvml" if report.sections["nvml"]["ok"] else "scripted"
    with report.section("timer_cost") as data:
        timer_cost(data, args.device)
    if args.model in ("llama", "both"):
        llama: dict[str, Any] = {}
        with report.section("llama_build") as data:
            llama = build_llama_service(home / "llama", args.device, sampler, size, data)
            data["engine_id"] = llama["engine"].info.engine_id
            data["device_class"] = llama["engine"].info.device_class
            data["timer"] = type(llama["engine"].timer).__name__
        if llama:
            import gpu_llama

            # first: conservation counts from here
            metering_stages(report, llama, "llama_", args.quick, rounds=3, count=48)
            with report.section("llama_vs_generate") as data:
                gpu_llama.versus_generate(llama, data, run_batch, 8 if args.quick else 16, 32)
            with report.section("llama_economy") as data:
                gpu_llama.economy(llama, data)
            with report.section("llama_shutdown"):
                llama["service"].stop()
                llama["ledger"].close()
                del llama["model"], llama["engine"]
    if args.model in ("builtin", "both") and (args.model == "builtin" or report.left() > 120):
        ctx: dict[str, Any] = {}
        with report.section("service") as data:
            ctx = build_service(home / "builtin", args.device, sampler)
            data["engine_id"] = ctx["engine"].info.engine_id
            data["device_class"] = ctx["engine"].info.device_class
            data["timer"] = type(ctx["engine"].timer).__name__
        if "service" in ctx:
            metering_stages(report, ctx, "", args.quick, rounds=5, count=64)
            with report.section("shutdown"):
                ctx["service"].stop()
                ctx["ledger"].close()
    parts = []
    if "service" in report.sections:
        parts.append("built-in model (torch backend)\n" + table(report))
    if "llama_build" in report.sections:
        import gpu_llama

        extra = gpu_llama.table_rows(report, "llama_")
        parts.append(f"Llama {size} (transformers backend)\n" + table(report, "llama_", extra))
    summary = "\n\n".join(parts)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": args.device,
        "seconds": round(time.monotonic() - report.started, 1),
        "sections": report.sections,
        "table": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nJSON report: {out} ({result['seconds']} s)")
    print(summary, flush=True)
    tmp.cleanup()
    return 0 if all(e["ok"] for n, e in report.sections.items() if n != "nvml") else 1


if __name__ == "__main__":
    sys.exit(main())
