# ruff: noqa: RUF002  (Greek letters are the cost model's published coefficient names)
"""``infermeter calibrate``: measure this device, write a new RU table and fitted cost models.

Three measurements (docs/metering.md, "Calibration"):

1. Reference rates: GEMM throughput and copy bandwidth (numpy on CPU, PyTorch on CUDA),
   against the A100-SXM4-80GB's (RU's reference). r_compute and r_bw are their ratios.
2. The engine's prefill-only and decode-only per-token times (phase probes). With the
   model's FLOPs and bytes per token they give each phase's compute-bound time fraction f_c
   (roofline), and the phase factor RU/ms = f_c·r_compute + (1 - f_c)·r_bw (§6.2).
3. Logged steps with varied batch composition, fitted to (α, β, γ, δ, φ) per engine by
   ``costfit.fit_cost_model``, with its MAPE.

Results go to ``<home>/calibration/calibration-<version>.json`` as candidates; one prices
requests only once it is active (``metering.calibrations``: the MAPE gate, activation,
rollback), and the service loads the active one at start. Engines are reached through
``StepRunner`` so that this module needs no runtime import (the CLI adapts an Engine to it).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from infermeter.core.errors import ConfigError
from infermeter.core.records import Participant
from infermeter.core.types import Phase, Precision
from infermeter.metering.attribution import CostModel
from infermeter.metering.costfit import fit_cost_model
from infermeter.metering.ru import RuTable

# RU's reference device, as *achieved* rates: A100-SXM4-80GB datasheet (312 TFLOP/s FP16
# dense, 2,039 GB/s) times the fractions measured on H100/H200 here (GEMM 81 %, copy 90 %,
# reference §1, §6.2). [unverified on an A100]: replace with a measured A100 run when one exists.
A100_GEMM_TFLOPS = 312.0 * 0.80
A100_COPY_GBPS = 2039.0 * 0.90  # bytes read + written per second
CALIBRATION_DIR = "calibration"
_PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP32, Precision.INT8)


class StepRunner(Protocol):
    """One engine, seen as: run a batch of (seq_id, new tokens); get its device µs."""

    vocab_size: int

    def run(self, batch: Sequence[tuple[str, Sequence[int]]]) -> int: ...

    def release(self, seq_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ReferenceRates:
    """Achieved GEMM throughput (TFLOP/s) and copy bandwidth (GB/s, read + written)."""

    device: str
    backend: str  # numpy | torch
    dtype: str
    gemm_tflops: float
    copy_gbps: float

    @property
    def r_compute(self) -> float:
        return self.gemm_tflops / A100_GEMM_TFLOPS

    @property
    def r_bw(self) -> float:
        return self.copy_gbps / A100_COPY_GBPS


def measure_cpu_reference(*, quick: bool = False) -> ReferenceRates:
    """numpy float32 GEMM and a large array copy, best of a few repetitions."""
    n = 256 if quick else 768
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    best_gemm = float("inf")
    for _ in range(3 if quick else 6):
        t0 = time.perf_counter()
        a @ b
        best_gemm = min(best_gemm, time.perf_counter() - t0)
    size = (8 if quick else 64) << 20
    src = np.ones(size // 4, np.float32)
    dst = np.empty_like(src)
    best_copy = float("inf")
    for _ in range(3 if quick else 6):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_copy = min(best_copy, time.perf_counter() - t0)
    return ReferenceRates("cpu", "numpy", "float32", 2 * n**3 / best_gemm / 1e12, 2 * size / best_copy / 1e9)


def measure_cuda_reference(*, quick: bool = False, dtype: str = "bfloat16") -> ReferenceRates:
    """PyTorch GEMM (8192³) and a device-to-device copy, timed with CUDA events."""
    from infermeter.metering.cuda_timer import import_torch

    torch = import_torch()
    dev = torch.device("cuda")
    n = 4096 if quick else 8192
    tdtype = getattr(torch, dtype)
    a = torch.randn(n, n, device=dev, dtype=tdtype)
    b = torch.randn(n, n, device=dev, dtype=tdtype)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn: Callable[[], Any], reps: int) -> float:
        for _ in range(3):
            fn()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()  # calibration, not the request path: a sync is fine here
        return float(start.elapsed_time(end)) / 1000 / reps

    gemm_s = timed(lambda: a @ b, 5 if quick else 10)
    size = (256 if quick else 1024) << 20
    src = torch.empty(size, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), 5 if quick else 10)
    return ReferenceRates(
        torch.cuda.get_device_name(), "torch", dtype, 2 * n**3 / gemm_s / 1e12, 2 * size / copy_s / 1e9
    )


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What a phase moves and computes per token: parameters, bytes per weight, KV bytes."""

    params: int
    weight_bytes: int  # bytes per parameter (4 fp32, 2 fp16, 1 int8)
    kv_bytes_per_token: int

    @classmethod
    def decoder(
        cls, layers: int, d_model: int, vocab: int, weight_bytes: int, kv_bytes_per_token: int
    ) -> ModelShape:
        """GPT-style estimate: 12·L·d² block weights plus the tied embedding V·d."""
        return cls(12 * layers * d_model**2 + vocab * d_model, weight_bytes, kv_bytes_per_token)


@dataclass(frozen=True, slots=True)
class PhaseProbe:
    """Measured per-token device time of one phase at a fixed shape, and its roofline."""

    phase: str
    batch: int
    tokens: int  # new tokens per sequence (prefill) or 1 (decode)
    context: int
    us_per_token: float
    compute_fraction: float  # f_c: compute-bound share of roofline time


def _roofline_fc(shape: ModelShape, rates: ReferenceRates, batch: int, tokens: int, context: int) -> float:
    layer_width = shape.kv_bytes_per_token / (2 * shape.weight_bytes)  # Σ layers of d_model
    flops = 2.0 * shape.params + 4.0 * context * layer_width  # weights + attention over context
    bytes_ = shape.params * shape.weight_bytes / (batch * tokens) + context * shape.kv_bytes_per_token
    t_c = flops / (rates.gemm_tflops * 1e12)
    t_bw = bytes_ / (rates.copy_gbps * 1e9 / 2)  # copy_gbps counts each byte twice
    return t_c / (t_c + t_bw)


def _tokens(vocab: int, n: int, salt: int) -> list[int]:
    return [(salt * 31 + i * 7) % vocab for i in range(n)]


def probe_phases(
    runner: StepRunner, shape: ModelShape, rates: ReferenceRates, *, quick: bool = False
) -> tuple[PhaseProbe, PhaseProbe]:
    """Prefill-only (4 x 64 new tokens) and decode-only (8 x 1 at context 64) runs."""
    reps = 3 if quick else 7
    v = runner.vocab_size
    prefill: list[float] = []
    decode: list[float] = []
    for r in range(reps):
        ids = [f"probe-p{r}-{i}" for i in range(4)]
        prefill.append(runner.run([(s, _tokens(v, 64, i)) for i, s in enumerate(ids)]) / 256)
        for s in ids:
            runner.release(s)
        ids = [f"probe-d{r}-{i}" for i in range(8)]
        runner.run([(s, _tokens(v, 64, i)) for i, s in enumerate(ids)])
        decode.append(runner.run([(s, [i % v]) for i, s in enumerate(ids)]) / 8)
        for s in ids:
            runner.release(s)
    return (
        PhaseProbe("prefill", 4, 64, 0, statistics.median(prefill), _roofline_fc(shape, rates, 4, 64, 0)),
        PhaseProbe("decode", 8, 1, 64, statistics.median(decode), _roofline_fc(shape, rates, 8, 1, 64)),
    )


def _factor(value: float) -> Decimal:
    return Decimal(f"{value:.4g}")


def device_table(
    base: RuTable, device_class: str, rates: ReferenceRates, probes: Sequence[PhaseProbe], version: str
) -> RuTable:
    """``base`` with ``device_class``'s rows replaced by measured blends, as ``version``."""
    factors = {k: v for k, v in base.factors.items() if k[0] != device_class}
    for probe in probes:
        fc = probe.compute_fraction
        value = _factor(fc * rates.r_compute + (1 - fc) * rates.r_bw)
        for precision in _PRECISIONS:
            factors[(device_class, Phase(probe.phase), precision)] = value
    return RuTable(version, factors)


def cost_steps(runner: StepRunner, *, quick: bool = False) -> list[tuple[list[Participant], int]]:
    """Logged steps with varied composition: prefill (fresh and chunked), decode, mixed.

    Each composition runs ``repeats`` times on fresh sequences and is logged once with its
    median time, so machine noise (other processes on a shared CPU) does not drive the fit.
    """
    v = runner.vocab_size
    out: list[tuple[list[Participant], int]] = []
    batches, lengths, contexts = (
        ((1, 3), (16, 64), (0, 96)) if quick else ((1, 2, 4), (8, 32, 96), (0, 64, 192))
    )
    repeats = 3 if quick else 5
    serial = 0
    for b in batches:
        for n in lengths:
            for c in contexts:
                with_decode = n == lengths[0]
                times: list[list[int]] = [[], [], []]  # prefill, decode, mixed
                for _ in range(repeats):
                    serial += 1
                    ids = [f"cal{serial}-{i}" for i in range(b)]
                    if c:
                        runner.run([(s, _tokens(v, c, i)) for i, s in enumerate(ids)])
                    times[0].append(runner.run([(s, _tokens(v, n, i + 1)) for i, s in enumerate(ids)]))
                    if with_decode:
                        times[1].append(runner.run([(s, [1]) for s in ids]))
                        new = f"cal{serial}-mix"
                        times[2].append(runner.run([(s, [2]) for s in ids] + [(new, _tokens(v, 2 * n, 5))]))
                        runner.release(new)
                    for s in ids:
                        runner.release(s)
                ids = [f"c{i}" for i in range(b)]
                out.append(([Participant(s, n, c, 0) for s in ids], int(statistics.median(times[0]))))
                if with_decode:
                    ctx = c + n
                    out.append(([Participant(s, 0, ctx, 1) for s in ids], int(statistics.median(times[1]))))
                    out.append(
                        (
                            [Participant(s, 0, ctx + 1, 1) for s in ids] + [Participant("mix", 2 * n, 0, 0)],
                            int(statistics.median(times[2])),
                        )
                    )
    return out


@dataclass(frozen=True)
class FittedModel:
    model: CostModel
    mape_percent: Decimal
    steps: int


@dataclass(frozen=True)
class Calibration:
    """One calibration run: what was measured, the RU table and cost models it produced."""

    version: str
    created_at: str
    device: str
    device_class: str
    rates: ReferenceRates
    probes: tuple[PhaseProbe, ...]
    ru_table: RuTable
    cost_models: dict[str, FittedModel] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "device": self.device,
            "device_class": self.device_class,
            "rates": asdict(self.rates) | {"r_compute": self.rates.r_compute, "r_bw": self.rates.r_bw},
            "probes": [asdict(p) for p in self.probes],
            "ru_table": self.ru_table.to_json(),
            "cost_models": {
                eid: {"model": f.model.to_json(), "mape_percent": str(f.mape_percent), "steps": f.steps}
                for eid, f in self.cost_models.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        rates = {k: v for k, v in data["rates"].items() if k not in ("r_compute", "r_bw")}
        return cls(
            data["version"],
            data["created_at"],
            data["device"],
            data["device_class"],
            ReferenceRates(**rates),
            tuple(PhaseProbe(**p) for p in data["probes"]),
            RuTable.from_json(data["ru_table"]),
            {
                eid: FittedModel(CostModel.from_json(m["model"]), Decimal(m["mape_percent"]), int(m["steps"]))
                for eid, m in data["cost_models"].items()
            },
        )


def new_version(device_class: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"calib-{device_class}-{stamp}"


def calibrate(
    device_class: str,
    rates: ReferenceRates,
    base: RuTable,
    engines: dict[str, tuple[StepRunner, ModelShape]],
    *,
    quick: bool = False,
    probe_engine: str | None = None,
    version: str | None = None,
) -> Calibration:
    """Probe phases on ``probe_engine`` (default: the first), fit every engine's cost model."""
    if not engines:
        raise ConfigError(f"no engine to calibrate on {device_class}; load one first")
    version = version or new_version(device_class)
    first = probe_engine or next(iter(engines))
    runner, shape = engines[first]
    probes = probe_phases(runner, shape, rates, quick=quick)
    table = device_table(base, device_class, rates, probes, version)
    models: dict[str, FittedModel] = {}
    for engine_id, (run, _) in engines.items():
        steps = cost_steps(run, quick=quick)
        model, mape = fit_cost_model(steps, f"fit-{engine_id}-{version}")
        models[engine_id] = FittedModel(model, mape, len(steps))
    return Calibration(
        version,
        datetime.now(UTC).isoformat(timespec="seconds"),
        rates.device,
        device_class,
        rates,
        probes,
        table,
        models,
    )


def save(calibration: Calibration, home: Path) -> Path:
    """Write ``<home>/calibration/calibration-<version>.json`` (never overwrites)."""
    folder = Path(home) / CALIBRATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"calibration-{calibration.version}.json"
    with path.open("x", encoding="utf-8") as fh:
        json.dump(calibration.to_json(), fh, indent=2)
    return path


@dataclass(frozen=True)
class LoadedCalibration:
    """What the service applies at start: the newest RU table, and per-engine cost models."""

    ru_table: RuTable
    cost_models: dict[str, CostModel]
    files: tuple[Path, ...]


def load_latest(home: Path) -> LoadedCalibration | None:
    """Newest calibration's RU table; each engine's newest cost model. None if none saved.

    A table written by ``calibrate`` already holds every device class of its base (the
    previous newest table), so the newest table is the only one needed.
    """
    folder = Path(home) / CALIBRATION_DIR
    found = (
        [(json.loads(p.read_text(encoding="utf-8")), p) for p in folder.glob("calibration-*.json")]
        if folder.is_dir()
        else []
    )
    if not found:
        return None
    found.sort(key=lambda item: (item[0]["created_at"], item[1].name))
    models: dict[str, CostModel] = {}
    for data, _ in found:
        for engine_id, entry in data["cost_models"].items():
            models[engine_id] = CostModel.from_json(entry["model"])
    return LoadedCalibration(RuTable.from_json(found[-1][0]["ru_table"]), models, tuple(p for _, p in found))


__all__ = [
    "A100_COPY_GBPS",
    "A100_GEMM_TFLOPS",
    "Calibration",
    "FittedModel",
    "LoadedCalibration",
    "ModelShape",
    "PhaseProbe",
    "ReferenceRates",
    "StepRunner",
    "calibrate",
    "cost_steps",
    "device_table",
    "load_latest",
    "measure_cpu_reference",
    "measure_cuda_reference",
    "new_version",
    "probe_phases",
    "save",
]
