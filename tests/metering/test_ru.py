"""RU tables: exact micro-RU, one half-even rounding, seed factors, JSON round trip."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.errors import ConfigError
from infermeter.core.types import Phase, Precision
from infermeter.metering.ru import SEED_TABLE, RuTable, device_class_for, is_cpu


def test_reference_device_one_ms_is_one_ru() -> None:
    """1 ms of FP16 on the A100-SXM4-80GB is exactly 1 RU (10^6 micro-RU)."""
    assert SEED_TABLE.ru_micros("A100-SXM4-80GB", Precision.FP16, 1000, 0) == 1_000_000
    assert SEED_TABLE.ru_micros("A100-SXM4-80GB", Precision.FP16, 0, 1000) == 1_000_000


def test_reference_examples_from_the_table() -> None:
    """10 ms of L4 decode is 1.8 RU and 10 ms of H200 prefill is 30.5 RU."""
    assert SEED_TABLE.ru_micros("L4", Precision.FP16, 0, 10_000) == 1_800_000
    assert SEED_TABLE.ru_micros("H200-SXM", Precision.FP16, 10_000, 0) == 30_500_000


def test_phases_use_their_own_factors() -> None:
    """Prefill and decode µs are weighted by their own factors and summed before rounding."""
    got = SEED_TABLE.ru_micros("H100-SXM", Precision.BF16, 1234, 5678)
    assert got == 1234 * 2940 + 5678 * 1870


def test_rounding_is_once_and_half_even() -> None:
    """Sub-micro-RU parts of both phases add before one half-even rounding."""
    table = RuTable(
        "t",
        {
            ("x", Phase.PREFILL, Precision.FP16): Decimal("0.0005"),
            ("x", Phase.DECODE, Precision.FP16): Decimal("0.0005"),
        },
    )
    # 1 µs x 0.0005 x 1000 = 0.5 micro-RU per phase
    assert table.ru_micros("x", Precision.FP16, 1, 0) == 0  # 0.5 -> 0 (even)
    assert table.ru_micros("x", Precision.FP16, 3, 0) == 2  # 1.5 -> 2 (even)
    assert table.ru_micros("x", Precision.FP16, 1, 1) == 1  # 0.5 + 0.5, rounded once


@given(
    st.sampled_from(SEED_TABLE.device_classes),
    st.sampled_from(list(Precision)),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
)
def test_matches_exact_decimal_rounding(dev: str, prec: Precision, p: int, d: int) -> None:
    """ru_micros equals the exact Decimal value rounded half-even, for any device and time."""
    fp = SEED_TABLE.factor(dev, Phase.PREFILL, prec)
    fd = SEED_TABLE.factor(dev, Phase.DECODE, prec)
    exact = (Decimal(p) * fp + Decimal(d) * fd) * 1000
    expected = int(exact.quantize(Decimal(1), rounding="ROUND_HALF_EVEN"))
    assert SEED_TABLE.ru_micros(dev, prec, p, d) == expected


def test_precision_does_not_scale_the_factor() -> None:
    """Occupancy is priced alike at every precision: INT8 is cheaper by taking less time."""
    for dev in SEED_TABLE.device_classes:
        values = {SEED_TABLE.ru_micros(dev, pr, 1000, 1000) for pr in Precision}
        assert len(values) == 1


def test_seed_covers_every_listed_device() -> None:
    """The seed table lists the seven GPU classes plus a separate CPU class."""
    assert set(SEED_TABLE.device_classes) == {
        "A10",
        "A100-SXM4-80GB",
        "A100-40GB",
        "H100-SXM",
        "H200-SXM",
        "L4",
        "L40S",
        "cpu",
    }
    assert SEED_TABLE.version == "seed-2026-11"
    assert SEED_TABLE.factor("cpu", Phase.PREFILL, Precision.FP32) < Decimal("0.01")
    assert is_cpu("cpu") and is_cpu("CPU-avx512") and not is_cpu("H100-SXM")
    assert not any(is_cpu(d) for d in SEED_TABLE.device_classes if d != "cpu")


def test_unknown_device_names_the_known_ones() -> None:
    """An unknown device class raises ConfigError listing the known classes and the fix."""
    with pytest.raises(ConfigError) as err:
        SEED_TABLE.ru_micros("B200", Precision.FP16, 1, 1)
    assert "B200" in err.value.message and "H100-SXM" in err.value.message
    assert "calibrate" in err.value.message


def test_unknown_precision_names_the_known_ones() -> None:
    """A known device without the precision raises ConfigError naming its precisions."""
    table = RuTable(
        "t",
        {
            ("x", Phase.PREFILL, Precision.FP16): Decimal(1),
            ("x", Phase.DECODE, Precision.FP16): Decimal(1),
        },
    )
    with pytest.raises(ConfigError, match=r"int8.*fp16"):
        table.ru_micros("x", Precision.INT8, 1, 1)


def test_bad_factors_and_times_are_refused() -> None:
    """Float or negative factors and negative times are rejected."""
    with pytest.raises(ConfigError, match="Decimal"):
        RuTable("t", {("x", Phase.PREFILL, Precision.FP16): 0.5})  # type: ignore[dict-item]
    with pytest.raises(ConfigError):
        RuTable("t", {("x", Phase.PREFILL, Precision.FP16): Decimal(-1)})
    with pytest.raises(ValueError, match="prefill_us=-1"):
        SEED_TABLE.ru_micros("L4", Precision.FP16, -1, 0)


def test_json_round_trip_keeps_exact_factors() -> None:
    """to_json/from_json (dict or text) gives back an equal table; floats are refused."""
    data = SEED_TABLE.to_json()
    assert RuTable.from_json(data) == SEED_TABLE
    assert RuTable.from_json(json.dumps(data)) == SEED_TABLE
    assert {"device_class": "L4", "phase": "decode", "precision": "fp16", "factor": "0.18"} in data["factors"]
    data["factors"][0]["factor"] = 0.38
    with pytest.raises(ConfigError, match="never a float"):
        RuTable.from_json(data)


def test_nvml_names_map_to_classes() -> None:
    """Known NVML SXM names map to table classes; PCIe variants have no seed row."""
    assert device_class_for("NVIDIA H100 80GB HBM3") == "H100-SXM"
    assert device_class_for("NVIDIA H200") == "H200-SXM"
    assert device_class_for("NVIDIA H100 PCIe") is None
