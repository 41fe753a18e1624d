"""Resource Units: device time normalized across hardware, from versioned factor tables.

1 RU = 1 ms of FP16 inference on an A100-SXM4-80GB. A device-ms of phase φ on device X is
worth factor(X, φ, precision) RU. Prefill scales with compute and decode with memory
bandwidth, hence per-phase factors. Tables are versioned, and every usage record names the
version it was priced with; ``calibrate`` writes new versions measured on the local device.

Units: micro-RU (integers). µs x factor RU/ms x 1000 = micro-RU; the sum over phases is
computed exactly and rounded once, half-even (an internal quantity, not money).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from infermeter.core.errors import ConfigError
from infermeter.core.types import Phase, Precision

CPU_CLASS = "cpu"

FactorKey = tuple[str, Phase, Precision]


def is_cpu(device_class: str) -> bool:
    """True for CPU device classes ("cpu", "cpu-…"), whose RU are kept apart from GPU RU."""
    lowered = device_class.lower()
    return lowered == CPU_CLASS or lowered.startswith(CPU_CLASS + "-")


def _div_half_even(num: int, den: int) -> int:
    """num / den rounded to the nearest integer, ties to even (den > 0)."""
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2 == 1):
        q += 1
    return q


@dataclass(frozen=True)
class RuTable:
    """A versioned table of RU-per-device-ms factors by (device class, phase, precision)."""

    version: str
    factors: Mapping[FactorKey, Decimal]
    _ratios: dict[FactorKey, tuple[int, int]] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.version:
            raise ConfigError("RU table version must be a non-empty string, e.g. 'seed-2026-11'")
        clean: dict[FactorKey, Decimal] = {}
        for key, factor in self.factors.items():
            device_class, phase, precision = key
            if not isinstance(factor, Decimal) or not factor.is_finite() or factor < 0:
                raise ConfigError(
                    f"RU table {self.version!r}: factor for {key} is {factor!r}; "
                    "use a finite, non-negative Decimal (e.g. Decimal('0.38'))"
                )
            clean[(device_class, Phase(phase), Precision(precision))] = factor
        object.__setattr__(self, "factors", clean)
        object.__setattr__(self, "_ratios", {k: v.as_integer_ratio() for k, v in clean.items()})

    @property
    def device_classes(self) -> list[str]:
        return sorted({k[0] for k in self.factors})

    def _ratio(self, device_class: str, phase: Phase, precision: Precision) -> tuple[int, int]:
        ratio = self._ratios.get((device_class, phase, precision))
        if ratio is not None:
            return ratio
        known = self.device_classes
        if device_class not in known:
            raise ConfigError(
                f"RU table {self.version!r} has no device class {device_class!r}; "
                f"known: {', '.join(known)}. Run `infermeter calibrate` on this device or "
                "configure a table that lists it"
            )
        precisions = sorted({k[2].value for k in self.factors if k[0] == device_class})
        raise ConfigError(
            f"RU table {self.version!r} has no {phase.value} factor for {device_class} at "
            f"{precision!s}; precisions known for {device_class}: {', '.join(precisions)}"
        )

    def factor(self, device_class: str, phase: Phase, precision: Precision) -> Decimal:
        """RU per device-ms for one (device class, phase, precision); ConfigError if absent."""
        num, den = self._ratio(device_class, Phase(phase), Precision(precision))
        return Decimal(num) / Decimal(den)  # exact: den is a power of 10 from a Decimal

    def ru_micros(self, device_class: str, precision: Precision, prefill_us: int, decode_us: int) -> int:
        """micro-RU = round_half_even((prefill_us·f_prefill + decode_us·f_decode)·1000)."""
        if prefill_us < 0 or decode_us < 0:
            raise ValueError(
                f"device time must be >= 0 µs, got prefill_us={prefill_us}, decode_us={decode_us}"
            )
        precision = Precision(precision)
        pn, pd = self._ratio(device_class, Phase.PREFILL, precision)
        dn, dd = self._ratio(device_class, Phase.DECODE, precision)
        return _div_half_even((prefill_us * pn * dd + decode_us * dn * pd) * 1000, pd * dd)

    def to_json(self) -> dict[str, Any]:
        """``{"version", "factors": [{"device_class", "phase", "precision", "factor"}]}``."""
        rows = [
            {"device_class": d, "phase": ph.value, "precision": pr.value, "factor": str(f)}
            for (d, ph, pr), f in sorted(self.factors.items())
        ]
        return {"version": self.version, "factors": rows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> RuTable:
        """Inverse of ``to_json``; accepts the dict or its JSON text. Factors must be strings."""
        obj = json.loads(data) if isinstance(data, str) else data
        factors: dict[FactorKey, Decimal] = {}
        for row in obj["factors"]:
            raw = row["factor"]
            if not isinstance(raw, str):
                raise ConfigError(
                    f"RU table {obj.get('version')!r}: factor {raw!r} for {row['device_class']} "
                    'must be a decimal string such as "0.38", never a float'
                )
            key = (row["device_class"], Phase(row["phase"]), Precision(row["precision"]))
            factors[key] = Decimal(raw)
        return cls(str(obj["version"]), factors)


# Seed per-phase factors (docs/metering.md, "Resource Units"): a time-weighted blend of datasheet
# ratios vs the A100-SXM4-80GB, RU/ms = f_c·r_compute + (1 - f_c)·r_bw, with f_c ≈ 0.85 for
# prefill and ≈ 0.15 for decode. Calibration replaces them.
_GPU_SEEDS: dict[str, tuple[str, str]] = {
    "A10": ("0.38", "0.31"),
    "A100-SXM4-80GB": ("1.00", "1.00"),
    "A100-40GB": ("0.96", "0.80"),
    "H100-SXM": ("2.94", "1.87"),
    "H200-SXM": ("3.05", "2.48"),
    "L4": ("0.35", "0.18"),
    "L40S": ("1.05", "0.53"),
}

# CPU seed ("cpu": a 2-core slice of a modern x86 server, FP32 or INT8 ONNX Runtime):
#   compute: 2 cores x 3.0 GHz x 32 FP32 FLOP/cycle (2 AVX2 FMA ports x 8 lanes x 2)
#            = 192 GFLOP/s; vs A100 FP16 tensor 312 TFLOP/s → r_compute = 192e9/312e12 ≈ 0.00062
#   memory:  ~20 GB/s of DRAM bandwidth for two cores; vs A100 2,039 GB/s → r_bw ≈ 0.0098
#   The CPU's ridge point is 192/20 ≈ 10 FLOP/B, so prefill (hundreds of FLOP/B) is wholly
#   compute-bound (f_c ≈ 1) and batch decode (≈ 1 FLOP/B) wholly bandwidth-bound (f_c ≈ 0):
#   prefill 0.0006 RU/ms, decode 0.0098 → 0.01 RU/ms.
_CPU_SEED = ("0.0006", "0.01")

# Precision: a factor prices device *occupancy*, not FLOPs. An INT8 engine finishes the same
# work in fewer device-ms, so it already costs fewer RU (that is what makes `flex` cheaper);
# FP32 takes longer and already costs more. Scaling the factor too would count the precision
# twice, so fp16, bf16, fp32 and int8 share each device's factors (multiplier 1.0).
_PRECISIONS = (Precision.FP16, Precision.BF16, Precision.FP32, Precision.INT8)


def _seed() -> dict[FactorKey, Decimal]:
    out: dict[FactorKey, Decimal] = {}
    for device_class, (prefill, decode) in [*_GPU_SEEDS.items(), (CPU_CLASS, _CPU_SEED)]:
        for precision in _PRECISIONS:
            out[(device_class, Phase.PREFILL, precision)] = Decimal(prefill)
            out[(device_class, Phase.DECODE, precision)] = Decimal(decode)
    return out


SEED_TABLE = RuTable("seed-2026-11", _seed())

# NVML device names -> table device classes. PCIe and NVL variants have lower clocks, power
# and bandwidth and need their own calibrated rows, so they map to nothing here.
_NVML_NAMES: dict[str, str] = {
    "NVIDIA A10": "A10",
    "NVIDIA A100-SXM4-80GB": "A100-SXM4-80GB",
    "NVIDIA A100-SXM4-40GB": "A100-40GB",
    "NVIDIA H100 80GB HBM3": "H100-SXM",
    "NVIDIA H100-SXM5-80GB": "H100-SXM",
    "NVIDIA H200": "H200-SXM",
    "NVIDIA L4": "L4",
    "NVIDIA L40S": "L40S",
}


def device_class_for(nvml_name: str) -> str | None:
    """The seed table's device class for an NVML device name, or None if it has no row."""
    return _NVML_NAMES.get(nvml_name.strip())


__all__ = ["CPU_CLASS", "SEED_TABLE", "RuTable", "device_class_for", "is_cpu"]
