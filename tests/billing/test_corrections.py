"""Credits and reversals: new entries naming the record they correct; the original stays."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.billing.corrections import (
    Correction,
    corrections_of,
    issue_correction,
    parse_amount,
    plan_correction,
)
from infermeter.billing.invoices import build_invoice
from infermeter.billing.store import Store
from infermeter.core.errors import InvalidRequest, NotFound
from infermeter.core.records import UsageRecord
from tests.pgtools import raw_query

from .ledger_records import T0, make_record

COST = Decimal("1.250000")  # the original's cost
LATER = T0 + timedelta(days=1)


@pytest.fixture
def store(any_store: Store) -> Store:
    """SQLite and PostgreSQL, each with the record to correct and one other."""
    any_store.append([make_record(0, cost=COST, ru_micros=5_000_000), make_record(1)])
    return any_store


def correct(store: Store, kind: str, amount: str | None = None, record: str = "rec_t000000") -> Correction:
    return issue_correction(store, record, kind, "customer complaint", amount, clock=lambda: LATER)


def payload_of(store: Store, record_id: str) -> str:
    ((payload,),) = raw_query(store, "SELECT payload FROM ledger WHERE record_id = ?", record_id)
    return str(payload)


def test_a_reversal_negates_cost_and_ru_and_names_the_original(store: Store) -> None:
    """A reversal is a new entry: cost and RU negated, tokens zero, corrects = the original."""
    before = payload_of(store, "rec_t000000")
    done = correct(store, "reversal")
    r = done.record
    assert (r.kind, r.corrects, r.reason) == ("reversal", "rec_t000000", "customer complaint")
    assert (r.cost, r.ru_micros, r.prompt_tokens, r.device_us) == (-COST, -5_000_000, 0, 0)
    assert (r.tenant_id, r.model, r.service_tier) == (done.original.tenant_id, "tiny-gpt", "default")
    assert r.request_id == "correction:rec_t000000:1" and done.seq == 2
    assert done.remaining.cost == 0 and done.remaining.ru_micros == 0
    assert payload_of(store, "rec_t000000") == before  # the original is untouched
    assert store.verify().ok


def test_credits_refund_up_to_what_remains(store: Store) -> None:
    """Credits add up to at most the original's cost; the one too many names the amounts."""
    assert correct(store, "credit", "1.00").remaining.cost == Decimal("0.25")
    with pytest.raises(InvalidRequest) as err:
        correct(store, "credit", "0.30")
    message = err.value.message
    assert "0.3 USD exceeds the 0.25 USD that remains" in message and "1.25" in message
    assert correct(store, "credit", "0.25").remaining.cost == 0
    assert [c.cost for c in corrections_of(store, "rec_t000000")] == [Decimal("-1.00"), Decimal("-0.25")]


def test_a_reversal_after_a_credit_reverses_only_the_rest(store: Store) -> None:
    """After a partial credit a reversal takes the remaining cost and all the RU, to zero."""
    correct(store, "credit", "0.50")
    done = correct(store, "reversal")
    assert (done.record.cost, done.record.ru_micros) == (Decimal("-0.75"), -5_000_000)
    with pytest.raises(InvalidRequest, match="nothing remains to reverse"):
        correct(store, "reversal")
    with pytest.raises(InvalidRequest, match="exceeds the 0 USD"):
        correct(store, "credit", "0.01")


def test_the_invoice_shows_the_correction_and_the_original(store: Store) -> None:
    """The month's invoice keeps the usage line and adds a negative credit line."""
    correct(store, "credit", "0.50")
    records = [r for _, r in store.list_records("ten_a", limit=100)]
    invoice = build_invoice("ten_a", "2026-11", records, "USD")
    lines = {line.kind: line for line in invoice.lines}
    assert lines["credit"].amount == Decimal("-0.50") and lines["usage"].requests == 2
    assert invoice.exact_total == COST + make_record(1).cost - Decimal("0.50")
    assert store.spent("ten_a") == invoice.exact_total


@pytest.mark.parametrize("amount", ["0", "-1", "abc", "NaN", "Infinity"])
def test_bad_credit_amounts_are_refused(store: Store, amount: str) -> None:
    """A credit must be a positive, finite decimal amount."""
    with pytest.raises(InvalidRequest, match="amount"):
        correct(store, "credit", amount)


def test_what_cannot_be_corrected_is_refused(store: Store) -> None:
    """Unknown records, corrections themselves, warm-up, bad kinds and empty reasons are refused."""
    with pytest.raises(NotFound, match="rec_nope"):
        correct(store, "reversal", record="rec_nope")
    first = correct(store, "credit", "0.10").record
    with pytest.raises(InvalidRequest, match="only billed usage records"):
        correct(store, "reversal", record=first.record_id)
    store.append([make_record(9, warmup=True)])
    with pytest.raises(InvalidRequest, match="warm-up"):
        correct(store, "reversal", record="rec_t000009")
    with pytest.raises(InvalidRequest, match="kind"):
        correct(store, "refund")
    with pytest.raises(InvalidRequest, match="reason"):
        issue_correction(store, "rec_t000000", "reversal", "   ")
    with pytest.raises(InvalidRequest, match="takes no amount"):
        correct(store, "reversal", "0.10")
    with pytest.raises(InvalidRequest, match="needs an amount"):
        correct(store, "credit")
    with pytest.raises(InvalidRequest, match="not a number"):
        parse_amount(0.5, "USD")  # type: ignore[arg-type]


def test_concurrent_credits_never_over_credit(store: Store) -> None:
    """Eight admins crediting 0.25 at once: exactly five succeed (1.25 / 0.25), none over."""
    outcomes: list[str] = []
    lock = threading.Lock()

    def credit() -> None:
        try:
            correct(store, "credit", "0.25")
            result = "ok"
        except InvalidRequest:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=credit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 5 + ["refused"] * 3
    assert sum(c.cost for c in corrections_of(store, "rec_t000000")) == -COST


@settings(max_examples=80, deadline=None)
@given(
    steps=st.lists(
        st.one_of(st.just(None), st.decimals(min_value=Decimal("0.01"), max_value=2, places=2)), max_size=8
    )
)
def test_the_remainder_never_goes_below_zero(steps: list[Decimal | None]) -> None:
    """Any series of credits (amounts) and reversals (None): accepted ones never exceed the cost."""
    original = make_record(0, cost=COST, ru_micros=5_000_000)
    prior: list[UsageRecord] = []
    for step in steps:
        kind = "reversal" if step is None else "credit"
        try:
            prior.append(plan_correction(original, prior, kind, step, "r", LATER, f"rec_c{len(prior)}"))
        except InvalidRequest:
            continue
    left = COST + sum((c.cost for c in prior), Decimal(0))
    assert 0 <= left <= COST
    assert all(c.cost < 0 if c.kind == "credit" else c.cost <= 0 and c.ru_micros < 0 for c in prior)
    assert [c.request_id for c in prior] == [f"correction:rec_t000000:{i + 1}" for i in range(len(prior))]
