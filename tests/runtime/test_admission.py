"""Admission control: a bound on active requests, a FIFO queue, a refusal past the queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from infermeter.runtime.admission import Admission, AdmissionLimits, Overloaded


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_within_the_bound_enter_at_once() -> None:
    """Up to max_active requests take a slot without waiting."""

    async def scenario() -> int:
        adm = Admission(AdmissionLimits(max_active=3, max_queued=0))
        for _ in range(3):
            await adm.enter()
        return adm.active

    assert run(scenario()) == 3


def test_past_the_queue_bound_the_refusal_names_the_limits_and_a_retry() -> None:
    """With every slot busy and the queue full, enter raises Overloaded with the limits and Retry-After."""

    async def scenario() -> Overloaded:
        adm = Admission(AdmissionLimits(max_active=1, max_queued=1, retry_after_s=2))
        await adm.enter()
        waiting = asyncio.ensure_future(adm.enter())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await adm.enter()
        waiting.cancel()
        return refused.value

    exc = run(scenario())
    assert isinstance(exc, Overloaded)
    assert exc.code == "rate_limit_exceeded" and exc.retry_after_s == 2
    assert (
        "max_active=1" in exc.message and "max_queued=1" in exc.message and "retry after 2 s" in exc.message
    )


def test_waiters_get_slots_in_arrival_order() -> None:
    """Each leave hands its slot to the oldest waiter."""

    async def scenario() -> list[int]:
        adm = Admission(AdmissionLimits(max_active=1, max_queued=5))
        await adm.enter()
        order: list[int] = []

        async def wait(i: int) -> None:
            await adm.enter()
            order.append(i)

        tasks = [asyncio.ensure_future(wait(i)) for i in range(4)]
        await asyncio.sleep(0)
        for _ in range(4):
            adm.leave()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert adm.active == 1 and adm.queued == 0
        return order

    assert run(scenario()) == [0, 1, 2, 3]


def test_a_slot_given_back_on_another_thread_wakes_the_waiter() -> None:
    """leave() from a non-loop thread (the ledger writer's) wakes the waiter on its loop."""

    async def scenario() -> int:
        adm = Admission(AdmissionLimits(max_active=1, max_queued=1))
        await adm.enter()
        waiting = asyncio.ensure_future(adm.enter())
        await asyncio.sleep(0)
        thread = threading.Thread(target=adm.leave)
        thread.start()
        await asyncio.wait_for(waiting, timeout=10)
        thread.join()
        return adm.active

    assert run(scenario()) == 1


def test_a_waiter_that_gives_up_leaves_the_queue_and_keeps_no_slot() -> None:
    """A cancelled waiter is removed from the queue; the slots it never got stay free."""

    async def scenario() -> tuple[int, int]:
        adm = Admission(AdmissionLimits(max_active=1, max_queued=2))
        await adm.enter()
        gone = asyncio.ensure_future(adm.enter())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        queued = adm.queued
        adm.leave()
        return queued, adm.active

    assert run(scenario()) == (0, 0)


def test_a_slot_granted_to_a_cancelled_waiter_passes_to_the_next() -> None:
    """If the slot is handed over just as its waiter is cancelled, the next waiter gets it."""

    async def scenario() -> int:
        adm = Admission(AdmissionLimits(max_active=1, max_queued=2))
        await adm.enter()
        first = asyncio.ensure_future(adm.enter())
        second = asyncio.ensure_future(adm.enter())
        await asyncio.sleep(0)
        adm.leave()  # granted to `first`, whose wake-up is only scheduled
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.wait_for(second, timeout=10)
        return adm.active

    assert run(scenario()) == 1


def test_admit_gives_the_slot_back_when_submitting_fails() -> None:
    """A request refused while being submitted (bad prompt, budget) does not keep its slot."""

    async def refuse() -> None:
        raise ValueError("bad prompt")

    async def seven() -> int:
        return 7

    async def scenario() -> int:
        adm = Admission(AdmissionLimits(max_active=1, max_queued=0))
        with pytest.raises(ValueError):
            await adm.admit(refuse)
        assert await adm.admit(seven) == 7
        return adm.active

    assert run(scenario()) == 1


def test_limits_are_checked() -> None:
    """A zero slot count or a negative queue is refused with the values given."""
    with pytest.raises(ValueError, match="max_active >= 1"):
        AdmissionLimits(max_active=0, max_queued=1)
    with pytest.raises(ValueError, match="max_queued >= 0"):
        AdmissionLimits(max_active=1, max_queued=-1)
