"""A fast, byte-identical encoder for a usage record's canonical CloudEvent JSON.

``canonical_json(record.to_cloudevent())`` costs ~50 µs a record on a small CPU, which
alone would cap the ledger near 20,000 appends/s. ``encode_event`` writes the same bytes
from one f-string, with the C encoders of the standard library (strings) and orjson
(timestamps) doing the escaping and formatting (~3 µs). It is an optimisation only:
anything it does not expect (a value of an unusual type, a huge integer, a timestamp in
another zone, a set optional field it does not know) sends the record down the reference
path, and a property test holds the two byte-identical.

The optional pricing fields (``price_point``, ``multiplier``) are written here when set;
other fields added to ``UsageRecord`` later are handled without editing this module as long as
they are optional: a record whose unknown fields are all ``None`` takes the fast path only
if the reference encoding leaves such fields out (checked once, at import, on a probe
record); any record with one of them set takes the reference path.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring as _s  # C-accelerated

from orjson import OPT_UTC_Z as _UTC_Z
from orjson import dumps as _dumps

from infermeter.core.records import (
    CLOUDEVENT_SOURCE,
    CLOUDEVENT_TYPE,
    UsageRecord,
    canonical_json,
    iso,
)
from infermeter.core.types import Precision, ServiceTier, Status

_KNOWN_FIELDS = frozenset(
    "record_id request_id tenant_id model engine_id device precision service_tier status "
    "prompt_tokens completion_tokens cached_tokens device_us prefill_us decode_us kv_mb_s "
    "ru_micros cost currency queue_ms latency_ms started_at ended_at cost_model_version "
    "ru_table_version price_plan_version warmup kind corrects reason weighted_device_ms "
    "dram_score energy_mj stopped_by price_point multiplier".split()
)
# The enums are StrEnums, so the C string encoder writes their value directly.
_ALL_FIELDS = tuple(f.name for f in fields(UsageRecord))
_EXTRA = tuple(name for name in _ALL_FIELDS if name not in _KNOWN_FIELDS)
_SOURCE = _s(CLOUDEVENT_SOURCE)
_TYPE = _s(CLOUDEVENT_TYPE)
_LIMIT = 10**24  # beyond any real meter; larger values take the reference path


def _dec(value: Decimal) -> str:
    """format_decimal(value) with no minimum places: trailing zeros trimmed, never rounded.

    ``str`` is ten times faster than ``format(value, "f")`` and writes the same digits
    whenever it does not switch to exponent notation.
    """
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _opt_dec(value: Decimal | None) -> str:
    return "null" if value is None else f'"{_dec(value)}"'


def _str(value: str | None) -> str:
    return "null" if value is None else _s(value)


def _milli(value: int) -> str:
    """format_decimal(Decimal(value).scaleb(-3), 3), by integer arithmetic."""
    if value < 0:
        return "-" + _milli(-value)
    return f"{value // 1000}.{value % 1000:03d}"


def _micro(value: int) -> str:
    """format_decimal(Decimal(value).scaleb(-6), 6), by integer arithmetic."""
    if value < 0:
        return "-" + _micro(-value)
    return f"{value // 1_000_000}.{value % 1_000_000:06d}"


def _iso(ts: datetime) -> str:
    """``core.records.iso`` as a JSON string (quoted), by orjson for the usual UTC timestamp."""
    if ts.tzinfo is UTC and ts.microsecond:
        # orjson writes RFC 3339 with all six fraction digits when the fraction is not zero
        # (and none when it is: that case, and other zones, take the reference path).
        return _dumps(ts, option=_UTC_Z).decode()
    return f'"{iso(ts)}"'


def reference_event(record: UsageRecord) -> tuple[str, str, str]:
    """The slow, obviously right path: (event JSON, event time, cost text)."""
    event = record.to_cloudevent()
    return canonical_json(event).decode(), event["time"], event["data"]["cost"]


def encode_event(record: UsageRecord) -> tuple[str, str, str]:
    """(canonical JSON of ``record.to_cloudevent()``, its ``time``, its ``data.cost``)."""
    r = record
    us, ru, energy = r.device_us, r.ru_micros, r.energy_mj
    # json.dumps writes an exact int as f"{v}" does; a bool or int subclass it would not.
    if not (
        _FAST
        and int
        is type(r.cached_tokens)
        is type(r.completion_tokens)
        is type(r.decode_us)
        is type(us)
        is type(r.latency_ms)
        is type(r.prefill_us)
        is type(r.prompt_tokens)
        is type(r.queue_ms)
        is type(ru)
        and (energy is None or type(energy) is int)
        and type(r.warmup) is bool
        and r.stopped_by is None  # other optional fields, when set, take the reference path
        and (r.price_point is None or type(r.price_point) is str)
        and (r.multiplier is None or type(r.multiplier) is Decimal)
        and -_LIMIT < us < _LIMIT
        and -_LIMIT < ru < _LIMIT
        and (not _EXTRA or all(getattr(r, name) is None for name in _EXTRA))
    ):
        return reference_event(record)
    try:
        time = _iso(r.ended_at)
        cost = _dec(r.cost)
        rid, tenant = _s(r.record_id), _s(r.tenant_id)
        mult = "" if r.multiplier is None else f'"multiplier":"{_dec(r.multiplier)}",'
        point = "" if r.price_point is None else f'"price_point":{_s(r.price_point)},'
        text = (
            f'{{"data":{{"cached_tokens":{r.cached_tokens},'
            f'"completion_tokens":{r.completion_tokens},"corrects":{_str(r.corrects)},'
            f'"cost":"{cost}","cost_model_version":{_s(r.cost_model_version)},'
            f'"currency":{_s(r.currency)},"decode_us":{r.decode_us},"device":{_s(r.device)},'
            f'"device_ms":"{_milli(us)}","device_us":{us},"dram_score":{_opt_dec(r.dram_score)},'
            f'"ended_at":{time},"energy_mj":{"null" if energy is None else energy},'
            f'"engine_id":{_s(r.engine_id)},"kind":{_s(r.kind)},'
            f'"kv_mb_s":"{_dec(r.kv_mb_s)}","latency_ms":{r.latency_ms},'
            f'"model":{_s(r.model)},{mult}"precision":{_s(r.precision)},'
            f'"prefill_us":{r.prefill_us},"price_plan_version":{_s(r.price_plan_version)},{point}'
            f'"prompt_tokens":{r.prompt_tokens},"queue_ms":{r.queue_ms},'
            f'"reason":{_str(r.reason)},"record_id":{rid},"request_id":{_s(r.request_id)},'
            f'"ru":"{_micro(ru)}","ru_micros":{ru},'
            f'"ru_table_version":{_s(r.ru_table_version)},'
            f'"service_tier":{_s(r.service_tier)},"started_at":{_iso(r.started_at)},'
            f'"status":{_s(r.status)},"tenant_id":{tenant},'
            f'"warmup":{"true" if r.warmup else "false"},'
            f'"weighted_device_ms":{_opt_dec(r.weighted_device_ms)}}},'
            f'"datacontenttype":"application/json","id":{rid},"source":{_SOURCE},'
            f'"specversion":"1.0","subject":{tenant},"time":{time},"type":{_TYPE}}}'
        )
    except (TypeError, AttributeError, ValueError):
        return reference_event(record)
    return text, time[1:-1], cost


def _probe() -> bool:
    """Whether the fast path writes the reference bytes for a plain record (checked at import).

    False when ``UsageRecord`` lacks a field this module writes, has a new field without a
    default, or writes a new field even when it is ``None``; then every record takes the
    reference path, which is slower but never wrong.
    """
    if not _KNOWN_FIELDS <= set(_ALL_FIELDS):
        return False
    ts = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    try:
        probe = UsageRecord(
            record_id="rec_probe", request_id="req_probe", tenant_id="ten_probe", model="m",
            engine_id="e", device="cpu", precision=Precision.FP32, service_tier=ServiceTier.DEFAULT,
            status=Status.COMPLETED, prompt_tokens=1, completion_tokens=2, cached_tokens=0,
            device_us=1234, prefill_us=34, decode_us=1200, kv_mb_s=Decimal("0.5"),
            ru_micros=1_419_100, cost=Decimal("0.0000071"), currency="USD", queue_ms=0,
            latency_ms=2, started_at=ts, ended_at=ts, cost_model_version="c",
            ru_table_version="r", price_plan_version="p",
        )  # fmt: skip
        return encode_event(probe) == reference_event(probe)
    except Exception:
        return False


_FAST = True
_FAST = _probe()
