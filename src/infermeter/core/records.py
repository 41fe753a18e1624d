"""The records that flow from the device to the ledger.

StepRecord   one batched forward pass: measured device time and who took part.
UsageRecord  one request's metered footprint and price; serialized as a CloudEvents 1.0 event.
WindowRecord one sampler window (energy, activity) and how it was split.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from infermeter.core.money import format_decimal, micros_to_decimal
from infermeter.core.types import Phase, Precision, ServiceTier, Status

CLOUDEVENT_TYPE = "dev.infermeter.usage.v1"
CLOUDEVENT_SOURCE = "infermeter"
PLATFORM_TENANT = "platform"  # the tenant of warm-up and other platform-overhead records
OPTIONAL_FIELDS = frozenset({"stopped_by", "price_point", "multiplier"})  # encoded only when not None


@dataclass(frozen=True, slots=True)
class Participant:
    """One request's part in a step: p new prefill tokens, c context before them, d decode tokens."""

    request_id: str
    prefill_tokens: int = 0
    context_tokens: int = 0
    decode_tokens: int = 0

    @property
    def phase(self) -> Phase:
        return Phase.PREFILL if self.prefill_tokens > 0 else Phase.DECODE

    @property
    def new_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One batched engine step, timed by the step timer (integer microseconds)."""

    step_id: int
    engine_id: str
    device: str
    device_us: int
    participants: tuple[Participant, ...]
    started_ns: int = 0
    warmup: bool = False


@dataclass(frozen=True, slots=True)
class StepShares:
    """How a step's device time was split: exact, Σ shares + unattributed == step device_us."""

    step_id: int
    device_us: int
    shares: dict[str, int]
    unattributed_us: int


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """One sampler window and what of it went to which request (integers: µs, mJ)."""

    window_start_ns: int
    window_end_ns: int
    energy_mj: int
    sm_activity: float | None
    dram_activity: float | None
    tensor_activity: float | None
    memory_used_mb: int | None
    valid: bool
    energy_shares_mj: dict[str, int] = field(default_factory=dict)
    unattributed_energy_mj: int = 0


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """A request's metered usage and price. Recomputable: it names every version it used."""

    record_id: str
    request_id: str
    tenant_id: str
    model: str
    engine_id: str
    device: str
    precision: Precision
    service_tier: ServiceTier
    status: Status
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    device_us: int
    prefill_us: int
    decode_us: int
    kv_mb_s: Decimal
    ru_micros: int
    cost: Decimal
    currency: str
    queue_ms: int
    latency_ms: int
    started_at: datetime
    ended_at: datetime
    cost_model_version: str
    ru_table_version: str
    price_plan_version: str
    warmup: bool = False
    kind: str = "usage"  # usage | reversal | credit | adjustment
    corrects: str | None = None  # record_id this entry corrects
    reason: str | None = None
    weighted_device_ms: Decimal | None = None
    dram_score: Decimal | None = None
    energy_mj: int | None = None
    # "budget" when the request's cost cap ended it; only set fields are encoded (see data())
    stopped_by: str | None = None
    # what priced it (billing.plans): "<plan version>:<tier>:x<multiplier>" and the multiplier
    price_point: str | None = None
    multiplier: Decimal | None = None

    @property
    def device_ms(self) -> Decimal:
        return Decimal(self.device_us).scaleb(-3)

    @property
    def ru(self) -> Decimal:
        return micros_to_decimal(self.ru_micros)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def data(self) -> dict[str, Any]:
        """The event's ``data``: JSON-safe, decimals as strings, integers exact.

        Fields added after the ledger's first entries (``OPTIONAL_FIELDS``) appear only when
        set, so the canonical encoding, and the hash, of every older entry stays the same.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in OPTIONAL_FIELDS:
                continue
            if isinstance(value, Decimal):
                value = format_decimal(value)
            elif isinstance(value, datetime):
                value = iso(value)
            elif hasattr(value, "value"):
                value = value.value
            out[f.name] = value
        out["device_ms"] = format_decimal(self.device_ms, 3)
        out["ru"] = format_decimal(self.ru, 6)
        return out

    def to_cloudevent(self) -> dict[str, Any]:
        """CloudEvents 1.0 structured-mode JSON (importable by OpenMeter)."""
        return {
            "specversion": "1.0",
            "type": CLOUDEVENT_TYPE,
            "source": CLOUDEVENT_SOURCE,
            "id": self.record_id,
            "time": iso(self.ended_at),
            "subject": self.tenant_id,
            "datacontenttype": "application/json",
            "data": self.data(),
        }

    @classmethod
    def from_cloudevent(cls, event: dict[str, Any]) -> UsageRecord:
        data = dict(event["data"])
        data.pop("device_ms", None)
        data.pop("ru", None)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            if value is None:
                if f.name in data:
                    kwargs[f.name] = None
                continue
            if f.name in ("cost", "kv_mb_s", "weighted_device_ms", "dram_score", "multiplier"):
                value = Decimal(value)
            elif f.name in ("started_at", "ended_at"):
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            elif f.name == "precision":
                value = Precision(value)
            elif f.name == "service_tier":
                value = ServiceTier(value)
            elif f.name == "status":
                value = Status(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding hashed by the ledger: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = [
    "CLOUDEVENT_TYPE",
    "OPTIONAL_FIELDS",
    "PLATFORM_TENANT",
    "Participant",
    "StepRecord",
    "StepShares",
    "UsageRecord",
    "WindowRecord",
    "asdict",
    "canonical_json",
    "iso",
    "utc_now",
]
