"""Budgets: reserve-then-settle never overshoots a limit, settle/release are idempotent."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from infermeter.billing.budgets import Budgets
from infermeter.core.errors import BudgetExceeded, InvalidRequest


class YieldingLimit(Decimal):
    """A limit whose comparison yields the GIL, widening any check-then-act race window."""

    def __lt__(self, other: object) -> bool:
        time.sleep(0)
        return Decimal.__lt__(self, other)  # type: ignore[operator]


def make(limit: Decimal | None, spent: Decimal = Decimal(0)) -> tuple[Budgets, list[str]]:
    loads: list[str] = []

    def spent_of(tenant: str) -> Decimal:
        loads.append(tenant)
        return spent

    return Budgets(spent_of=spent_of, limit_of=lambda _t: limit), loads


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_admits_up_to_the_limit_exactly() -> None:
    """A reservation that lands exactly on the limit is admitted; one cent more is refused."""
    budgets, _ = make(Decimal("1.00"), Decimal("0.40"))
    budgets.reserve("t", "r1", Decimal("0.60"))
    with pytest.raises(BudgetExceeded):
        budgets.reserve("t", "r2", Decimal("0.01"))
    assert budgets.snapshot("t") == (Decimal("1.00"), Decimal("0.40"), Decimal("0.60"))


def test_refusal_message_names_everything() -> None:
    """The refusal names the tenant, limit, spent, reserved, the amount and a fix."""
    budgets, _ = make(Decimal("5"), Decimal("4.5"))
    budgets.reserve("ten_x", "r1", Decimal("0.25"))
    with pytest.raises(BudgetExceeded) as err:
        budgets.reserve("ten_x", "r2", Decimal("0.3"))
    msg = err.value.message
    for part in ("ten_x", "limit 5", "spent 4.5", "reserved (in flight) 0.25", "up to 0.3"):
        assert part in msg
    assert "raise the budget" in msg and err.value.code == "budget_exceeded"


def test_unlimited_tenant_is_always_admitted() -> None:
    """A None limit admits any amount and still tracks the reservation."""
    budgets, _ = make(None)
    budgets.reserve("t", "r1", Decimal("1e12"))
    assert budgets.snapshot("t") == (None, Decimal(0), Decimal("1e12"))


def test_settle_moves_reservation_to_spent_once() -> None:
    """settle: reserved -= estimate, spent += actual; a second settle or release is a no-op."""
    budgets, _ = make(Decimal(10))
    budgets.reserve("t", "r1", Decimal(3))
    assert budgets.settle("r1", Decimal("1.25")) is True
    assert budgets.settle("r1", Decimal("1.25")) is False
    assert budgets.release("r1") is False
    assert budgets.snapshot("t") == (Decimal(10), Decimal("1.25"), Decimal(0))


def test_release_gives_back_without_charge_once() -> None:
    """release frees the reservation and charges nothing; repeating it changes nothing."""
    budgets, _ = make(Decimal(10))
    budgets.reserve("t", "r1", Decimal(3))
    assert budgets.reserved_for("r1") == Decimal(3)
    assert budgets.release("r1") is True and budgets.release("r1") is False
    assert budgets.settle("r1", Decimal(9)) is False
    assert budgets.snapshot("t") == (Decimal(10), Decimal(0), Decimal(0))
    assert budgets.reserved_for("r1") is None


def test_unknown_request_settle_is_a_no_op() -> None:
    """Settling a request that never reserved here changes no account."""
    budgets, _ = make(Decimal(10))
    assert budgets.settle("nobody", Decimal(5)) is False
    assert budgets.snapshot("t") == (Decimal(10), Decimal(0), Decimal(0))


def test_reusing_a_request_id_is_refused() -> None:
    """A second reservation under the same request id (open or finished) raises."""
    budgets, _ = make(Decimal(10))
    budgets.reserve("t", "r1", Decimal(1))
    with pytest.raises(InvalidRequest, match="already has a budget reservation"):
        budgets.reserve("t", "r1", Decimal(1))
    budgets.settle("r1", Decimal(1))
    with pytest.raises(InvalidRequest):
        budgets.reserve("t", "r1", Decimal(1))


def test_floats_and_negatives_are_refused() -> None:
    """Money as a float, or a negative reservation, raises instead of guessing."""
    budgets, _ = make(Decimal(10))
    with pytest.raises(TypeError, match="float"):
        budgets.reserve("t", "r1", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        budgets.reserve("t", "r1", Decimal(-1))
    with pytest.raises(TypeError, match="float"):
        budgets.settle("r1", 0.5)  # type: ignore[arg-type]


def test_spent_is_loaded_once_and_refresh_reloads() -> None:
    """spent_of is called once per tenant; refresh reloads the limit, and spent on request."""
    limit = [Decimal(1)]
    spent = [Decimal(0)]
    calls: list[str] = []

    def spent_of(t: str) -> Decimal:
        calls.append(t)
        return spent[0]

    budgets = Budgets(spent_of=spent_of, limit_of=lambda _t: limit[0])
    budgets.reserve("t", "r1", Decimal(1))
    budgets.settle("r1", Decimal(1))
    budgets.snapshot("t")
    assert calls == ["t"]
    limit[0] = Decimal(5)
    spent[0] = Decimal("0.5")  # e.g. a credit appended elsewhere
    budgets.refresh("t")
    assert budgets.snapshot("t") == (Decimal(5), Decimal(1), Decimal(0))
    budgets.refresh("t", spent=True)
    assert budgets.snapshot("t") == (Decimal(5), Decimal("0.5"), Decimal(0))
    budgets.refresh("new")  # a tenant not seen yet is loaded whole
    assert budgets.snapshot("new") == (Decimal(5), Decimal("0.5"), Decimal(0))


def test_concurrent_reservations_never_overshoot(fast_switching: None) -> None:
    """32 threads racing for 0.07 each against a 10.00 limit admit exactly 142 of them."""
    budgets, loads = make(YieldingLimit("10.00"))
    admitted: list[str] = []
    refused: list[str] = []
    start = threading.Barrier(32)

    def worker(w: int) -> None:
        start.wait()
        for i in range(20):
            rid = f"r{w}_{i}"
            try:
                budgets.reserve("t", rid, Decimal("0.07"))
                admitted.append(rid)
            except BudgetExceeded:
                refused.append(rid)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 142 and len(refused) == 32 * 20 - 142
    _limit, spent, reserved = budgets.snapshot("t")
    assert reserved == Decimal("9.94") and spent == 0
    assert len(set(loads)) == 1


def test_concurrent_reserve_settle_release_keep_the_invariant(fast_switching: None) -> None:
    """With settles at or below the estimate, spent + reserved never exceeds the limit."""
    budgets, _ = make(YieldingLimit("5.00"), Decimal("1.00"))
    budgets.snapshot("t")
    stop = threading.Event()
    violations: list[tuple[Decimal, Decimal]] = []

    def monitor() -> None:
        while not stop.is_set():
            limit, spent, reserved = budgets.snapshot("t")
            assert limit is not None
            if spent + reserved > limit or reserved < 0:
                violations.append((spent, reserved))

    def worker(w: int) -> None:
        for i in range(150):
            rid = f"r{w}_{i}"
            try:
                budgets.reserve("t", rid, Decimal("0.05"))
            except BudgetExceeded:
                continue
            if i % 3 == 0:
                budgets.release(rid)
                budgets.release(rid)
            else:
                budgets.settle(rid, Decimal("0.01"))
                budgets.settle(rid, Decimal("0.01"))

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert violations == []
    limit, spent, reserved = budgets.snapshot("t")
    assert reserved == 0 and spent <= limit  # type: ignore[operator]


def test_a_limit_changed_elsewhere_applies_after_the_ttl() -> None:
    """A budget set by another process (the CLI) is picked up within limit_ttl_s, not only at restart."""
    limits = {"t": Decimal("10")}
    now = [0.0]
    budgets = Budgets(
        spent_of=lambda _: Decimal(0), limit_of=lambda t: limits[t], limit_ttl_s=5.0, clock=lambda: now[0]
    )
    budgets.reserve("t", "r1", Decimal("1"))
    limits["t"] = Decimal("0")
    now[0] = 1.0
    budgets.reserve("t", "r2", Decimal("1"))  # within the TTL: the cached limit still applies
    now[0] = 6.0
    with pytest.raises(BudgetExceeded):
        budgets.reserve("t", "r3", Decimal("1"))


def test_reserve_up_to_grants_what_is_left_down_to_the_minimum() -> None:
    """Less left than asked but at least the minimum: the rest is granted, as a cap."""
    budgets, _ = make(Decimal("1.00"), Decimal("0.70"))
    grant = budgets.reserve_up_to("t", "r1", Decimal("0.50"), Decimal("0.10"))
    assert grant.amount == Decimal("0.30") and grant.capped
    with pytest.raises(BudgetExceeded, match=r"needs at least 0\.1 "):
        budgets.reserve_up_to("t", "r2", Decimal("0.50"), Decimal("0.10"))
    assert budgets.snapshot("t") == (Decimal("1.00"), Decimal("0.70"), Decimal("0.30"))


def test_reserve_up_to_grants_all_when_it_fits_or_there_is_no_limit() -> None:
    """Enough budget: the whole amount; no limit: the whole amount, uncapped."""
    budgets, _ = make(Decimal("10"))
    assert budgets.reserve_up_to("t", "r1", Decimal("2"), Decimal("1")).amount == Decimal("2")
    unlimited, _ = make(None)
    grant = unlimited.reserve_up_to("t", "r1", Decimal("2"), Decimal("1"))
    assert grant.amount == Decimal("2") and not grant.capped


def test_extend_grows_a_reservation_within_the_limit_only() -> None:
    """A running request's reservation grows by what is left, never past the limit."""
    budgets, _ = make(Decimal("1.00"))
    budgets.reserve("t", "r1", Decimal("0.60"))
    assert budgets.extend("r1", Decimal("0.80"), Decimal("0.10")) == Decimal("0.40")
    assert budgets.reserved_for("r1") == Decimal("1.00")
    assert budgets.extend("r1", Decimal("0.10"), Decimal("0.01")) == 0  # nothing left
    assert budgets.extend("nobody", Decimal("1"), Decimal("0")) == 0
    budgets.settle("r1", Decimal("0.95"))
    assert budgets.snapshot("t") == (Decimal("1.00"), Decimal("0.95"), Decimal(0))


def test_adjust_applies_a_correction_without_touching_reservations() -> None:
    """A credit lowers spent by its amount under the lock; in-flight reservations stay."""
    budgets, loads = make(Decimal("5"), Decimal("2"))
    budgets.reserve("t", "r1", Decimal("1"))
    budgets.adjust("t", Decimal("-0.5"))
    assert budgets.snapshot("t") == (Decimal("5"), Decimal("1.5"), Decimal("1"))
    budgets.settle("r1", Decimal("0.25"))
    assert budgets.snapshot("t") == (Decimal("5"), Decimal("1.75"), Decimal(0))
    assert loads == ["t"]  # spent was never re-read
    budgets.adjust("other", Decimal("-1"))  # not loaded: its first use reads the store
    assert "other" not in loads


def test_corrections_racing_settles_lose_and_double_nothing(fast_switching: None) -> None:
    """Settles on worker threads and corrections on request threads add up exactly."""
    budgets, _ = make(None)
    budgets.snapshot("t")

    def settler(w: int) -> None:
        for i in range(200):
            budgets.reserve("t", f"r{w}_{i}", Decimal("0.02"))
            budgets.settle(f"r{w}_{i}", Decimal("0.01"))

    def corrector() -> None:
        for _ in range(200):
            budgets.adjust("t", Decimal("-0.001"))

    threads = [threading.Thread(target=settler, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=corrector) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budgets.snapshot("t") == (None, Decimal("8.000") - Decimal("0.400"), Decimal(0))
