"""How usage records are shown over HTTP (one place, so every endpoint agrees)."""

from __future__ import annotations

from typing import Any

from infermeter.billing.plans import Quote
from infermeter.core.money import format_decimal
from infermeter.core.records import UsageRecord
from infermeter.metering.window_ledger import WindowMeters


def metering_view(record: UsageRecord) -> dict[str, Any]:
    """``usage.metering`` of a completion: what the request cost and what priced it."""
    return {
        "record_id": record.record_id,
        "request_id": record.request_id,
        "device": record.device,
        "engine_id": record.engine_id,
        "precision": record.precision.value,
        "service_tier": record.service_tier.value,
        "status": record.status.value,
        "stopped_by": record.stopped_by,  # "budget" when the request's cost cap ended it
        "device_ms": float(record.device_ms),
        "prefill_ms": record.prefill_us / 1000,
        "decode_ms": record.decode_us / 1000,
        "kv_mb_s": format_decimal(record.kv_mb_s),
        "ru": format_decimal(record.ru, 6),
        "cost": format_decimal(record.cost),
        "currency": record.currency,
        "queue_ms": record.queue_ms,
        "latency_ms": record.latency_ms,
        "cost_model_version": record.cost_model_version,
        "ru_table_version": record.ru_table_version,
        "price_plan_version": record.price_plan_version,
        "price_point": record.price_point,
        "multiplier": None if record.multiplier is None else format_decimal(record.multiplier),
    }


def price_headers(quote: Quote) -> dict[str, str]:
    """The response headers that say what a request is priced with (fixed at admission)."""
    return {
        "x-infermeter-price-point": quote.price_point,
        "x-infermeter-price-multiplier": format_decimal(quote.multiplier),
        "x-infermeter-price-plan": quote.plan_version,
    }


def record_view(
    record: UsageRecord, seq: int | None = None, windows: WindowMeters | None = None
) -> dict[str, Any]:
    """A full record for /v1/usage/records: the CloudEvent's data, plus its ledger position.

    ``windows``: the request's window-derived meters joined by request id (they arrive after
    the record); they fill weighted_device_ms, dram_score and energy_mj where the record has
    none, and ``window_count`` says how many sampler windows were joined.
    """
    out = {"object": "usage.record", **record.data()}
    if seq is not None:
        out["seq"] = seq
    if windows is not None:
        if out.get("weighted_device_ms") is None and windows.weighted_device_ms is not None:
            out["weighted_device_ms"] = format_decimal(windows.weighted_device_ms)
        if out.get("dram_score") is None and windows.dram_score is not None:
            out["dram_score"] = format_decimal(windows.dram_score)
        if out.get("energy_mj") is None:
            out["energy_mj"] = windows.energy_mj
        out["window_count"] = windows.windows
    return out
