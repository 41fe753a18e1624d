"""MeterBook: per-request prefill/decode time, steps, KV byte-µs, operator totals."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.records import Participant, StepRecord, StepShares
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, attribute
from infermeter.metering.meter import MeterBook


def run(book: MeterBook, step: StepRecord, kv: dict[str, int] | None = None) -> StepShares:
    shares = attribute(step, TOKEN_PROPORTIONAL)
    book.add(step, shares, kv or {})
    return shares


def test_prefill_then_decode_accumulate_by_phase() -> None:
    """A prefill step's share goes to prefill_us, later decode steps' shares to decode_us."""
    book = MeterBook()
    run(book, StepRecord(1, "e", "cpu", 300, (Participant("a", 2), Participant("b", 1))))
    run(book, StepRecord(2, "e", "cpu", 100, (Participant("a", 0, 2, 1), Participant("b", 0, 1, 1))))
    a = book.pop("a")
    assert (a.prefill_us, a.decode_us, a.device_us, a.steps) == (200, 50, 250, 2)
    b = book.pop("b")
    assert (b.prefill_us, b.decode_us, b.steps) == (100, 50, 2)


def test_kv_byte_microseconds_and_mb_s_are_exact() -> None:
    """KV bytes held x step µs accumulate; kv_mb_s = byte-µs / 10^12, exactly."""
    book = MeterBook()
    run(book, StepRecord(1, "e", "cpu", 1500, (Participant("a", 1),)), {"a": 3_000_001})
    run(book, StepRecord(2, "e", "cpu", 7, (Participant("a", 0, 1, 1),)), {"a": 3_000_002, "z": 5})
    a = book.pop("a")
    assert a.kv_byte_us == 3_000_001 * 1500 + 3_000_002 * 7
    assert a.kv_mb_s == Decimal("0.004521001514")  # ≈ 3 MB for 1.5 ms
    assert book.pop("z").kv_byte_us == 35  # held memory without taking part in the step


def test_warmup_goes_to_warmup_total_only() -> None:
    """A warmup step adds nothing to any request and its time to warmup_us."""
    book = MeterBook()
    run(book, StepRecord(1, "e", "cpu", 900, (Participant("w", 4),), warmup=True), {"w": 10})
    assert book.warmup_us == 900 and book.unattributed_us == 0 and len(book) == 0
    assert book.pop("w").device_us == 0


def test_pop_closes_and_unknown_is_zero() -> None:
    """pop returns the meters once; a request that never ran pops as zeros."""
    book = MeterBook()
    run(book, StepRecord(1, "e", "cpu", 10, (Participant("a", 1),)))
    assert book.get("a").device_us == 10 and book.open_requests() == ["a"]
    assert book.pop("a").device_us == 10
    assert book.pop("a").device_us == 0 and book.open_requests() == []


def test_mismatched_shares_are_refused() -> None:
    """Shares of another step raise, naming both steps."""
    book = MeterBook()
    step = StepRecord(1, "e", "cpu", 10, (Participant("a", 1),))
    with pytest.raises(ValueError, match="step 2"):
        book.add(step, StepShares(2, 10, {"a": 10}, 0), {})
    with pytest.raises(ValueError, match="-5 KV bytes"):
        book.add(step, attribute(step, TOKEN_PROPORTIONAL), {"a": -5})


phases = st.tuples(st.integers(0, 64), st.integers(0, 64), st.integers(0, 1))


@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.booleans(),
            st.lists(st.tuples(st.sampled_from("abcdef"), phases), max_size=6),
        ),
        max_size=30,
    )
)
def test_book_conserves_device_time(
    steps: list[tuple[int, bool, list[tuple[str, tuple[int, int, int]]]]],
) -> None:
    """Σ popped device_us + unattributed + warmup equals Σ step device_us exactly."""
    book = MeterBook()
    total = 0
    for i, (t, warm, parts) in enumerate(steps):
        ps = tuple(Participant(r, p, c, d) for r, (p, c, d) in parts)
        run(book, StepRecord(i, "e", "cpu", t, ps, warmup=warm and i % 3 == 0))
        total += t
    popped = sum(book.pop(r).device_us for r in "abcdef")
    assert popped == book.attributed_us
    assert popped + book.unattributed_us + book.warmup_us == total
    assert book.steps == len(steps)
