"""Rate limits per tenant and per API key: requests, tokens and RU per minute.

Each limit is a token bucket that holds one minute's allowance and refills continuously
(``limit / 60`` per second), so a client may burst a full minute's worth and then gets the
limit's steady rate. At admission a request takes 1 from the requests bucket and
``prompt_tokens + max_tokens`` from the tokens bucket (OpenAI counts ``max_tokens`` before
generating), from its key's buckets and its tenant's alike; it is refused (429
``rate_limit_exceeded``, ``Retry-After``) if any bucket lacks that much. RU cannot be known
before the work: the RU bucket must be above zero to admit, and each request's *measured*
RU is taken from it when its record is written, so a burst can drive it negative and the
next requests wait until it refills. Pure state with an injected clock; integers only (a
bucket's level is kept in units x 60,000, one refill step per millisecond).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from infermeter.core.errors import InfermeterError, InvalidRequest

MINUTE_MS = 60_000


class RateLimited(InfermeterError):
    """429 ``rate_limit_exceeded``; ``retry_after_s`` goes in ``Retry-After``."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, retry_after_s: int, headers: dict[str, str]) -> None:
        super().__init__(message, param=None)
        self.kind = kind  # "requests" | "tokens" (OpenAI's error.type), "ru"
        self.retry_after_s = retry_after_s
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-minute limits of one tenant or key; None = no limit on that dimension."""

    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    ru_per_min: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_min", "tokens_per_min"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise InvalidRequest(f"{name}={value!r} must be an integer >= 1 (or unset)", param=name)
        ru = self.ru_per_min
        if ru is not None and (not isinstance(ru, Decimal) or not ru.is_finite() or ru <= 0):
            raise InvalidRequest(
                f"ru_per_min={ru!r} must be a positive decimal (or unset)", param="ru_per_min"
            )

    @property
    def empty(self) -> bool:
        return self.requests_per_min is None and self.tokens_per_min is None and self.ru_per_min is None

    def to_json(self) -> dict[str, object]:
        return {
            "requests_per_min": self.requests_per_min,
            "tokens_per_min": self.tokens_per_min,
            "ru_per_min": None if self.ru_per_min is None else str(self.ru_per_min),
        }


def limits_from_row(row: tuple[object, ...]) -> Limits:
    """(subject, requests_per_min, tokens_per_min, ru_per_min) -> Limits."""
    _, rpm, tpm, ru = row[:4]
    return Limits(
        None if rpm is None else int(str(rpm)),
        None if tpm is None else int(str(tpm)),
        None if ru is None else Decimal(str(ru)),
    )


def go_duration(ms: int) -> str:
    """OpenAI's reset format (Go durations): 12ms, 1s, 1.5s, 6m0s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if ms < MINUTE_MS:
        whole, frac = divmod(ms, 1000)
        return f"{whole}s" if frac == 0 else f"{whole}.{frac:03d}".rstrip("0") + "s"
    minutes, rest = divmod(ms, MINUTE_MS)
    return f"{minutes}m{rest // 1000}s"


class _Bucket:
    __slots__ = ("at_ms", "capacity", "level")

    def __init__(self, capacity: int, now_ms: int) -> None:
        self.capacity = capacity  # units per minute
        self.level = capacity * MINUTE_MS  # units x 60,000
        self.at_ms = now_ms

    def refill(self, now_ms: int) -> None:
        full = self.capacity * MINUTE_MS
        self.level = min(full, self.level + max(0, now_ms - self.at_ms) * self.capacity)
        self.at_ms = now_ms

    def remaining(self) -> int:
        return max(0, self.level // MINUTE_MS)

    def wait_ms(self, need: int) -> int:
        """Milliseconds until ``need`` units are there (0 if they are)."""
        short = need * MINUTE_MS - self.level
        return 0 if short <= 0 else -(-short // self.capacity)

    def reset_ms(self) -> int:
        return self.wait_ms(self.capacity)


@dataclass(frozen=True, slots=True)
class Headroom:
    """What the response headers say: the tightest subject's requests and tokens buckets."""

    headers: dict[str, str]


Subject = tuple[str, Limits]  # ("tenant:ten_…" | "key:key_…", its limits)


class RateLimiter:
    def __init__(self, clock_ms: Callable[[], int]) -> None:
        self._clock = clock_ms
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, subject: str, dim: str, capacity: int, now: int) -> _Bucket:
        b = self._buckets.get((subject, dim))
        if b is None or b.capacity != capacity:
            b = self._buckets[(subject, dim)] = _Bucket(capacity, now)
        b.refill(now)
        return b

    def _dims(self, limits: Limits) -> list[tuple[str, int]]:
        out = []
        if limits.requests_per_min is not None:
            out.append(("requests", limits.requests_per_min))
        if limits.tokens_per_min is not None:
            out.append(("tokens", limits.tokens_per_min))
        if limits.ru_per_min is not None:
            out.append(("ru", int(limits.ru_per_min * 1_000_000)))  # micro-RU
        return out

    def admit(self, subjects: Sequence[Subject], tokens: int) -> Headroom:
        """Take one request and ``tokens`` from every subject's buckets, or raise RateLimited."""
        need = {"requests": 1, "tokens": tokens, "ru": 1}
        with self._lock:
            now = self._clock()
            chosen: list[tuple[str, _Bucket]] = []
            for subject, limits in subjects:
                for dim, capacity in self._dims(limits):
                    if dim == "tokens" and tokens > capacity:
                        raise InvalidRequest(
                            f"this request counts {tokens} tokens (prompt + max_tokens) but {subject}'s "
                            f"limit is {capacity} tokens per minute; lower max_tokens or the prompt",
                            param="max_tokens",
                        )
                    bucket = self._bucket(subject, dim, capacity, now)
                    if bucket.level < need[dim] * MINUTE_MS:
                        wait = bucket.wait_ms(need[dim])
                        unit = "micro-RU" if dim == "ru" else dim
                        raise RateLimited(
                            f"rate limit reached for {subject}: {capacity} {unit} per minute; "
                            f"retry in {go_duration(wait)} or ask for a higher limit",
                            kind=dim,
                            retry_after_s=max(1, -(-wait // 1000)),
                            headers=self._headers(subjects, now),
                        )
                    chosen.append((dim, bucket))
            for dim, bucket in chosen:
                if dim != "ru":
                    bucket.level -= need[dim] * MINUTE_MS
            return Headroom(self._headers(subjects, now))

    def charge_ru(self, subjects: Sequence[Subject], ru_micros: int) -> None:
        """Take a finished request's measured RU from its RU buckets (may go below zero)."""
        with self._lock:
            now = self._clock()
            for subject, limits in subjects:
                if limits.ru_per_min is not None:
                    bucket = self._bucket(subject, "ru", int(limits.ru_per_min * 1_000_000), now)
                    bucket.level -= ru_micros * MINUTE_MS

    def _headers(self, subjects: Sequence[Subject], now: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for dim, label in (("requests", "requests"), ("tokens", "tokens"), ("ru", "ru")):
            tightest: _Bucket | None = None
            for subject, limits in subjects:
                capacity = dict(self._dims(limits)).get(dim)
                if capacity is None:
                    continue
                b = self._bucket(subject, dim, capacity, now)
                if tightest is None or b.remaining() * tightest.capacity < tightest.remaining() * b.capacity:
                    tightest = b
            if tightest is None:
                continue
            if dim == "ru":  # in RU, not micro-RU
                out["x-ratelimit-limit-ru"] = str(Decimal(tightest.capacity).scaleb(-6).normalize())
                out["x-ratelimit-remaining-ru"] = str(Decimal(tightest.remaining()).scaleb(-6).normalize())
            else:
                out[f"x-ratelimit-limit-{label}"] = str(tightest.capacity)
                out[f"x-ratelimit-remaining-{label}"] = str(tightest.remaining())
            out[f"x-ratelimit-reset-{label}"] = go_duration(tightest.reset_ms())
        return out


__all__ = ["Headroom", "Limits", "RateLimited", "RateLimiter", "go_duration"]
