"""Usage records for the ledger and store tests: a plain factory and a Hypothesis strategy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from infermeter.core.records import UsageRecord
from infermeter.core.types import Precision, ServiceTier, Status

T0 = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)


def make_record(i: int = 0, **overrides: Any) -> UsageRecord:
    """A valid record whose ids, tokens and cost depend on ``i``; override any field."""
    ended = T0 + timedelta(minutes=i)
    fields: dict[str, Any] = {
        "record_id": f"rec_t{i:06d}",
        "request_id": f"req_t{i:06d}",
        "tenant_id": "ten_a",
        "model": "tiny-gpt",
        "engine_id": "tiny-gpt/ort/fp32/cpu",
        "device": "cpu",
        "precision": Precision.FP32,
        "service_tier": ServiceTier.DEFAULT,
        "status": Status.COMPLETED,
        "prompt_tokens": 10 + i,
        "completion_tokens": 5 + i % 7,
        "cached_tokens": 0,
        "device_us": 1_000 + 37 * i,
        "prefill_us": 400,
        "decode_us": 600 + 37 * i,
        "kv_mb_s": Decimal("0.125"),
        "ru_micros": 1_150 * (1_000 + 37 * i),
        "cost": Decimal(f"0.000{i + 1:03d}017"),
        "currency": "USD",
        "queue_ms": 1,
        "latency_ms": 12,
        "started_at": ended - timedelta(milliseconds=12),
        "ended_at": ended,
        "cost_model_version": "cm-1",
        "ru_table_version": "ru-1",
        "price_plan_version": "plan-1",
    }
    fields.update(overrides)
    return UsageRecord(**fields)


_text = st.text(min_size=1, max_size=12)
_ints = st.integers(min_value=-(10**30), max_value=10**30)
_small = st.integers(min_value=0, max_value=10**9)
# Bounded: core.money.format_decimal rounds beyond 28 significant digits (normalize()).
_decimals = st.decimals(allow_nan=False, allow_infinity=False, places=12, min_value=-(10**6), max_value=10**6)
_zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_zones)


@st.composite
def records(draw: st.DrawFn, unusual: bool = True) -> UsageRecord:
    """Valid records with arbitrary text, huge or negative integers, odd decimals and zones."""
    ints = _ints if unusual else _small
    text = _text if unusual else st.from_regex(r"[a-z0-9_\-]{1,12}", fullmatch=True)
    return UsageRecord(
        record_id="rec_" + draw(text),
        request_id="req_" + draw(text),
        tenant_id=draw(text),
        model=draw(text),
        engine_id=draw(text),
        device=draw(text),
        precision=draw(st.sampled_from(Precision)),
        service_tier=draw(st.sampled_from(ServiceTier)),
        status=draw(st.sampled_from(Status)),
        prompt_tokens=draw(ints),
        completion_tokens=draw(ints),
        cached_tokens=draw(ints),
        device_us=draw(ints),
        prefill_us=draw(ints),
        decode_us=draw(ints),
        kv_mb_s=draw(_decimals),
        ru_micros=draw(ints),
        cost=draw(_decimals),
        currency=draw(st.sampled_from(["USD", "EUR", "JPY"])),
        queue_ms=draw(ints),
        latency_ms=draw(ints),
        started_at=draw(_times),
        ended_at=draw(_times),
        cost_model_version=draw(text),
        ru_table_version=draw(text),
        price_plan_version=draw(text),
        warmup=draw(st.booleans()),
        kind=draw(st.sampled_from(["usage", "reversal", "credit", "adjustment"])),
        corrects=draw(st.none() | text),
        reason=draw(st.none() | text),
        weighted_device_ms=draw(st.none() | _decimals),
        dram_score=draw(st.none() | _decimals),
        energy_mj=draw(st.none() | ints),
    )
