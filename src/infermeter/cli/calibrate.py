# ruff: noqa: RUF001  (Greek letters are the cost model's published coefficient names)
"""``infermeter calibrate``: measure this device and write a new RU table and cost models.

    infermeter calibrate [--device cpu|cuda] [--engine ID] [--quick] [--activate] [--json]
    infermeter calibrate list | calibrate activate VERSION | calibrate rollback

A calibration changes prices, so a run is saved as a candidate and becomes active only when
its fit passes the MAPE gate (``metering.calibrations.MAPE_GATE_PERCENT``) or by name
(``--activate``, ``activate VERSION``); before any change the price of a reference request
(100 prompt + 100 completion tokens) is shown old → new for every precision and tier. The
service loads the active calibration at its next start (records then name its RU-table and
cost-model versions). ``EngineRunner`` adapts any Engine to the metering
side's ``StepRunner`` (metering imports no runtime code).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from infermeter.billing.pricing import DEFAULT_PLAN
from infermeter.config import Settings, load_settings
from infermeter.core.errors import InfermeterError, InvalidRequest, NotFound, StaleEngine
from infermeter.core.money import format_decimal
from infermeter.core.timing import StepTimer
from infermeter.core.types import Phase, Precision, ServiceTier
from infermeter.metering.ru import SEED_TABLE, RuTable, device_class_for

if TYPE_CHECKING:  # numpy-backed: imported where used, so the CLI starts without them
    from infermeter.metering import calibrate as cal
    from infermeter.runtime.engine import Engine

out = Console(highlight=False)

_WEIGHT_BYTES = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2, Precision.INT8: 1}


class EngineRunner:
    """An Engine as a ``StepRunner``: run (seq_id, tokens) batches, return device µs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.vocab_size = engine.info.vocab_size

    def run(self, batch: Sequence[tuple[str, Sequence[int]]]) -> int:
        from infermeter.runtime.engine import SeqInput

        return int(self.engine.step([SeqInput(s, list(t)) for s, t in batch]).device_us)

    def release(self, seq_id: str) -> None:
        self.engine.release(seq_id)


def model_shape(engine: Engine) -> cal.ModelShape:
    from infermeter.metering import calibrate as cal

    info = engine.info
    return cal.ModelShape.decoder(
        info.num_layers,
        info.num_kv_heads * info.head_dim,
        info.vocab_size,
        _WEIGHT_BYTES.get(info.precision, 4),
        info.kv_bytes_per_token,
    )


def base_table(home: Path) -> RuTable:
    """The table a new calibration starts from (and prices use now): the active one, else the seed."""
    from infermeter.metering import calibrations

    active = calibrations.load_active(home)
    return active.ru_table if active is not None else SEED_TABLE


REFERENCE_TOKENS = (100, 100)  # prompt, completion: the reference request prices are shown for


def price_change(old: RuTable, new: cal.Calibration) -> Table:
    """The reference request priced by ``old`` and by ``new``'s table, per precision and tier.

    Device time is the same in both columns (the candidate's measured µs per token for each
    phase, times the reference tokens), so the change shown is the change in price alone.
    """
    prompt, completion = REFERENCE_TOKENS
    us = {p.phase: p.us_per_token for p in new.probes}
    prefill_us = round(us.get("prefill", 0.0) * prompt)
    decode_us = round(us.get("decode", 0.0) * completion)
    table = Table("precision", "tier", f"old ({old.version})", f"new ({new.ru_table.version})", "change")
    for precision in sorted({k[2] for k in new.ru_table.factors if k[0] == new.device_class}, key=str):
        for tier in ServiceTier:
            after = DEFAULT_PLAN.cost(
                new.ru_table.ru_micros(new.device_class, precision, prefill_us, decode_us), tier
            )
            try:
                before: Decimal | None = DEFAULT_PLAN.cost(
                    old.ru_micros(new.device_class, precision, prefill_us, decode_us), tier
                )
            except InfermeterError:
                before = None  # the old table has no row for this device class or precision
            change = (
                "new" if before is None else "±0" if before == after else
                f"×{(after / before).quantize(Decimal('0.01'))}" if before else "from 0"
            )  # fmt: skip
            table.add_row(
                str(precision),
                tier.value,
                "—" if before is None else format_decimal(before),
                format_decimal(after),
                change,
            )
    return table


def cpu_engines(settings: Settings) -> list[Engine]:
    from infermeter.app.engines import load_default_engines
    from infermeter.metering.timers import CpuStepTimer

    loaded = load_default_engines(settings, CpuStepTimer)
    return [x.engine for x in loaded if x.engine.info.device == "cpu"]


def torch_engine(
    settings: Settings,
    *,
    precision: Precision = Precision.FP16,
    device: str = "cuda",
    timer_factory: Callable[[], StepTimer] | None = None,
) -> Engine:
    """The built-in model on the PyTorch backend (``runtime.torch_backend``), from the engine
    index: the newest intact torch engine of that precision and device, else one built now.

    On a GPU the step timer is CUDA events on the engine's own stream (``app.engines``), or
    none when ``settings.metering`` is off; ``timer_factory`` times CPU engines.
    """
    from infermeter.app.engines import load_engine, runtime_env_for
    from infermeter.metering.timers import CpuStepTimer
    from infermeter.runtime.builtin_model import BUILTIN_MODEL_NAME
    from infermeter.runtime.compile.builder import build_engine, model_context, resolve_source
    from infermeter.runtime.compile.metadata import BuildArgs
    from infermeter.runtime.engine_store import EngineStore

    store = EngineStore(settings.home)
    try:
        kind = "cuda" if device.startswith("cuda") else "cpu"
        record = None
        for candidate in store.list(BUILTIN_MODEL_NAME):
            env = runtime_env_for(candidate)
            if (candidate.backend, candidate.precision, candidate.device) != (
                "torch",
                precision,
                kind,
            ) or env is None:
                continue
            try:
                store.check(candidate, env)
            except StaleEngine:
                continue
            record = candidate
            break
        if record is None:
            source = resolve_source(BUILTIN_MODEL_NAME, settings.models_dir, None)
            args = BuildArgs(
                BUILTIN_MODEL_NAME, "torch", precision, settings.max_batch, model_context(source)
            )
            record = build_engine(args, store, models_dir=settings.models_dir, device=device)
        return load_engine(store, record, settings, timer_factory or CpuStepTimer)
    finally:
        store.close()


def cuda_engines(settings: Settings) -> list[Engine]:
    """The built-in model on the PyTorch CUDA backend, FP16 (needs infermeter[torch])."""
    return [torch_engine(settings)]


def run_calibration(
    settings: Settings, device: str, engine_id: str | None, quick: bool
) -> tuple[cal.Calibration, Path]:
    from infermeter.metering import calibrate as cal

    engines = cpu_engines(settings) if device == "cpu" else cuda_engines(settings)
    if engine_id is not None:
        engines = [e for e in engines if e.info.engine_id == engine_id]
        if not engines:
            raise NotFound(f"no engine {engine_id!r} on {device}; see `infermeter engines list`")
    try:
        if device == "cpu":
            rates = cal.measure_cpu_reference(quick=quick)
            device_class = "cpu"
        else:
            rates = cal.measure_cuda_reference(quick=quick)
            device_class = device_class_for(rates.device) or rates.device
        runners = {e.info.engine_id: (EngineRunner(e), model_shape(e)) for e in engines}
        result = cal.calibrate(device_class, rates, base_table(settings.home), dict(runners), quick=quick)
    finally:
        for engine in engines:
            engine.close()
    return result, cal.save(result, settings.home)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from infermeter.metering import calibrations

    settings = load_settings({"home": args.home}, env=None)
    if args.action == "list":
        return _list(settings.home, args.json)
    if args.action == "activate":
        if not args.version:
            raise InvalidRequest("calibrate activate needs a VERSION; see `infermeter calibrate list`")
        return _activate(settings.home, args.version)
    if args.action == "rollback":
        return _rollback(settings.home)
    if args.version:
        raise InvalidRequest(f"unexpected {args.version!r}; VERSION goes with `calibrate activate`")
    before = base_table(settings.home)
    result, path = run_calibration(settings, args.device, args.engine, args.quick)
    problem = calibrations.gate_problem(result)
    activated = problem is None or args.activate
    if activated:
        calibrations.activate(settings.home, result.version)
    if args.json:
        extra = {"path": str(path), "active": activated, "gate_problem": problem}
        sys.stdout.write(json.dumps(result.to_json() | extra, indent=2) + "\n")
        return 0
    r = result.rates
    out.print(
        f"calibration [bold]{result.version}[/] on {result.device} (device class {result.device_class})"
    )
    out.print(
        f"  GEMM {r.gemm_tflops * 1000:,.1f} GFLOP/s ({r.dtype}), copy {r.copy_gbps:,.1f} GB/s"
        f" → r_compute {r.r_compute:.4g}, r_bw {r.r_bw:.4g} vs A100-SXM4-80GB"
    )
    table = Table("phase", "µs/token", "compute fraction", "RU per device-ms")
    for probe in result.probes:
        factor = result.ru_table.factor(result.device_class, Phase(probe.phase), Precision.FP32)
        table.add_row(probe.phase, f"{probe.us_per_token:.2f}", f"{probe.compute_fraction:.3f}", str(factor))
    out.print(table)
    models = Table("engine", "α", "β", "γ", "δ", "φ", "steps", "MAPE")
    for engine_id, fitted in result.cost_models.items():
        m = fitted.model
        models.add_row(
            engine_id,
            *(str(v) for v in (m.alpha, m.beta, m.gamma, m.delta, m.phi)),
            str(fitted.steps),
            f"{fitted.mape_percent} %",
        )
    out.print(models)
    out.print(
        "coefficients in femtoseconds per feature unit; "
        f"RU table {result.ru_table.version}; written to {path}"
    )
    prompt, completion = REFERENCE_TOKENS
    out.print(f"price of a reference request ({prompt} prompt + {completion} completion tokens):")
    out.print(price_change(before, result))
    if problem is None:
        out.print(
            f"[green]active[/]: its fit passes the {calibrations.MAPE_GATE_PERCENT} % MAPE gate; "
            "the service prices with it from its next start"
        )
    elif args.activate:
        out.print(
            f"[bold yellow]active (--activate)[/] although {problem}; "
            "the service prices with it from its next start; undo: `infermeter calibrate rollback`"
        )
    else:
        out.print(
            f"[bold yellow]candidate only[/]: {problem}. Prices are unchanged. Activate it "
            f"anyway with `infermeter calibrate activate {result.version}`"
        )
    return 0


def _list(home: Path, as_json: bool) -> int:
    from infermeter.metering import calibrations

    active = calibrations.active_version(home)
    was = set(calibrations.history(home))
    rows: list[dict[str, Any]] = []
    for c in calibrations.candidates(home):
        status = "active" if c.version == active else "was active" if c.version in was else "candidate"
        worst = calibrations.worst_mape(c.calibration)
        rows.append({
            "version": c.version, "created_at": c.calibration.created_at,
            "device_class": c.calibration.device_class, "status": status,
            "worst_mape_percent": None if worst is None else str(worst),
            "passes_gate": calibrations.gate_problem(c.calibration) is None,
        })  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps({"active": active, "calibrations": rows}, indent=2) + "\n")
        return 0
    table = Table("version", "created", "device", "worst MAPE", "gate", "status")
    for r in rows:
        mape = "—" if r["worst_mape_percent"] is None else f"{r['worst_mape_percent']} %"
        table.add_row(r["version"], r["created_at"], r["device_class"], mape,
                      "pass" if r["passes_gate"] else "fail", r["status"])  # fmt: skip
    out.print(table)
    out.print(f"active: {active or 'none (the seed RU table)'}; gate: fit MAPE under "
              f"{calibrations.MAPE_GATE_PERCENT} %")  # fmt: skip
    return 0


def _activate(home: Path, version: str) -> int:
    from infermeter.metering import calibrations

    before = base_table(home)
    candidate = calibrations.find(home, version)
    out.print(price_change(before, candidate.calibration))
    problem = calibrations.gate_problem(candidate.calibration)
    calibrations.activate(home, version)
    note = "" if problem is None else f" (although {problem})"
    out.print(f"[green]active[/]: {version}{note}; the service prices with it from its next start")
    return 0


def _rollback(home: Path) -> int:
    from infermeter.metering import calibrations

    current = calibrations.active_version(home)
    now = calibrations.rollback(home)
    if now is not None and current is not None:
        out.print(
            price_change(
                calibrations.find(home, current).calibration.ru_table,
                calibrations.find(home, now).calibration,
            )
        )
    out.print(
        f"rolled back {current}; active now: {now or 'none (the seed RU table)'}, "
        "from the service's next start"
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure this device (RU factors, cost models); list, activate or roll back calibrations",
    )
    p.add_argument("action", nargs="?", choices=("list", "activate", "rollback"),
                   help="without one: run a calibration and save it as a candidate")  # fmt: skip
    p.add_argument("version", nargs="?", help="the calibration to activate (calibrate activate VERSION)")
    p.add_argument("--activate", action="store_true",
                   help="activate the new calibration even if its fit fails the MAPE gate")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--engine", help="calibrate only this engine id (default: every engine)")
    p.add_argument("--quick", action="store_true", help="small workloads (seconds)")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    p.set_defaults(handler=cmd_calibrate)
