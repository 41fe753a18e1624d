"""Per-request meters, accumulated step by step from attributed shares.

The worker feeds every step's record and shares into one ``MeterBook`` and pops a request's
meters when it finishes. The book is a plain accumulator: it is not thread-safe, and its
owner (the worker loop of one device) serializes access.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from infermeter.core.records import StepRecord, StepShares
from infermeter.core.types import Phase


@dataclass(frozen=True, slots=True)
class RequestMeters:
    """One request's metered device time (µs) and KV-cache memory held over time.

    ``kv_mb_s`` is exact: byte-µs / 10^6 / 10^6 (MB·s with MB = 10^6 bytes).
    """

    device_us: int
    prefill_us: int
    decode_us: int
    steps: int
    kv_byte_us: int
    kv_mb_s: Decimal


def _meters(prefill_us: int, decode_us: int, steps: int, kv_byte_us: int) -> RequestMeters:
    return RequestMeters(
        device_us=prefill_us + decode_us,
        prefill_us=prefill_us,
        decode_us=decode_us,
        steps=steps,
        kv_byte_us=kv_byte_us,
        kv_mb_s=Decimal(kv_byte_us).scaleb(-12),
    )


class MeterBook:
    """Running per-request totals, plus the operator's unattributed and warmup totals.

    Invariant: over all steps added, Σ attributed (popped + open) + unattributed_us +
    warmup_us == Σ step device_us.
    """

    __slots__ = ("_open", "attributed_us", "steps", "unattributed_us", "warmup_us")

    def __init__(self) -> None:
        # request id -> [prefill_us, decode_us, steps, kv_byte_us]
        self._open: dict[str, list[int]] = {}
        self.attributed_us = 0
        self.unattributed_us = 0  # rounding and zero-cost steps of non-warmup steps
        self.warmup_us = 0  # engine load and warm-up steps: platform overhead, never billed
        self.steps = 0

    def add(self, step: StepRecord, shares: StepShares, kv_bytes: Mapping[str, int]) -> None:
        """Fold one step in.

        Each share goes to the request's prefill_us or decode_us by its participant's phase
        (prefill if any of its parts in the step had prefill tokens). Every participant counts
        one step. ``kv_bytes`` maps request id -> KV-cache bytes held during the step (requests
        that hold memory without taking part included); each adds bytes x step device_us.
        A warmup step only adds to ``warmup_us``.
        """
        if shares.step_id != step.step_id or shares.device_us != step.device_us:
            raise ValueError(
                f"shares are for step {shares.step_id} ({shares.device_us} µs) but the record is "
                f"step {step.step_id} ({step.device_us} µs); pass attribute(step, model) of it"
            )
        self.steps += 1
        if step.warmup:
            self.warmup_us += step.device_us
            return
        self.unattributed_us += shares.unattributed_us

        prefill: set[str] = set()
        for p in step.participants:
            if p.phase is Phase.PREFILL:
                prefill.add(p.request_id)
        for rid, share in shares.shares.items():
            acc = self._open.get(rid)
            if acc is None:
                acc = self._open[rid] = [0, 0, 0, 0]
            acc[0 if rid in prefill else 1] += share
            acc[2] += 1
            self.attributed_us += share

        t = step.device_us
        for rid, held in kv_bytes.items():
            if held < 0:
                raise ValueError(f"step {step.step_id}: request {rid!r} holds {held} KV bytes; must be >= 0")
            if held:
                acc = self._open.get(rid)
                if acc is None:
                    acc = self._open[rid] = [0, 0, 0, 0]
                acc[3] += held * t

    def get(self, request_id: str) -> RequestMeters:
        """The request's meters so far (zeros if it has not run a step); it stays open."""
        acc = self._open.get(request_id)
        return _meters(0, 0, 0, 0) if acc is None else _meters(*acc)

    def pop(self, request_id: str) -> RequestMeters:
        """Close the request and return its meters (zeros if it never ran a step)."""
        acc = self._open.pop(request_id, None)
        return _meters(0, 0, 0, 0) if acc is None else _meters(*acc)

    def open_requests(self) -> list[str]:
        """Request ids with meters not yet popped (a leak check for the worker)."""
        return list(self._open)

    def __len__(self) -> int:
        return len(self._open)


__all__ = ["MeterBook", "RequestMeters"]
