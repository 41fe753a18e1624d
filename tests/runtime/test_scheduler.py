"""The pure continuous-batching scheduler, driven with hand-made outputs."""

from __future__ import annotations

import pytest

from infermeter.core.types import ServiceTier
from infermeter.runtime.scheduler import Finished, FinishReason, Scheduler, SchedulerConfig


def drive(s: Scheduler, token: int = 7) -> list[Finished]:
    plan = s.schedule()
    return s.update(plan, {i.request_id: token for i in plan.items if i.samples})


def test_prefill_then_decode_one_token_per_step() -> None:
    """A request prefills its whole prompt in one step, then decodes one token per step."""
    s = Scheduler(SchedulerConfig(max_batch=4, token_budget=64))
    s.add("a", [1, 2, 3], max_tokens=3)
    plan = s.schedule()
    assert [(i.request_id, i.tokens, i.context, i.decode) for i in plan.items] == [("a", (1, 2, 3), 0, False)]
    s.update(plan, {"a": 9})
    plan = s.schedule()
    assert [(i.tokens, i.context, i.decode) for i in plan.items] == [((9,), 3, True)]


def test_max_tokens_finishes_with_length() -> None:
    """A request ends with reason length after exactly max_tokens tokens."""
    s = Scheduler(SchedulerConfig())
    s.add("a", [1], max_tokens=2)
    assert drive(s) == []
    done = drive(s)
    assert len(done) == 1 and done[0].reason == FinishReason.LENGTH and done[0].output == (7, 7)
    assert not s.has_work()


def test_eos_finishes_with_stop() -> None:
    """Sampling the eos token finishes the request with reason stop."""
    s = Scheduler(SchedulerConfig())
    s.add("a", [1], max_tokens=10, eos_token_id=0)
    done = drive(s, token=0)
    assert done[0].reason == FinishReason.STOP


def test_new_requests_join_a_running_batch() -> None:
    """A request arriving while another decodes is prefilled in the same step as that decode."""
    s = Scheduler(SchedulerConfig(max_batch=4, token_budget=64))
    s.add("a", [1, 2], max_tokens=5)
    drive(s)
    s.add("b", [3, 4, 5], max_tokens=5)
    plan = s.schedule()
    assert [(i.request_id, i.decode) for i in plan.items] == [("a", True), ("b", False)]


def test_long_prompt_is_prefilled_in_chunks() -> None:
    """A prompt longer than prefill_chunk is fed over several steps; only the last one samples."""
    s = Scheduler(SchedulerConfig(token_budget=64, prefill_chunk=4))
    s.add("a", list(range(10)), max_tokens=1)
    sizes, samples = [], []
    while s.has_work():
        plan = s.schedule()
        sizes += [len(i.tokens) for i in plan.items]
        samples += [i.samples for i in plan.items]
        s.update(plan, {i.request_id: 1 for i in plan.items if i.samples})
    assert sizes == [4, 4, 2]
    assert samples == [False, False, True]


def test_token_budget_caps_a_step() -> None:
    """No step feeds more tokens than the per-step budget."""
    s = Scheduler(SchedulerConfig(max_batch=8, token_budget=5, prefill_chunk=100))
    for n in range(4):
        s.add(f"r{n}", [1] * 4, max_tokens=3)
    for _ in range(20):
        plan = s.schedule()
        assert sum(len(i.tokens) for i in plan.items) <= 5
        s.update(plan, {i.request_id: 2 for i in plan.items if i.samples})
    assert not s.has_work()


def test_max_batch_limits_running_sequences() -> None:
    """At most max_batch sequences run; the rest wait."""
    s = Scheduler(SchedulerConfig(max_batch=2, token_budget=100))
    for n in range(3):
        s.add(f"r{n}", [1, 2], max_tokens=5)
    plan = s.schedule()
    assert {i.request_id for i in plan.items} == {"r0", "r1"}
    assert s.num_waiting == 1


def test_flex_waits_behind_default() -> None:
    """Waiting default requests are admitted before older flex requests."""
    s = Scheduler(SchedulerConfig(max_batch=1, token_budget=100))
    s.add("flex", [1], max_tokens=1, tier=ServiceTier.FLEX)
    s.add("default", [1], max_tokens=1, tier=ServiceTier.DEFAULT)
    assert [i.request_id for i in s.schedule().items] == ["default"]


def test_flex_uses_only_leftover_budget() -> None:
    """When the budget is tight, default decodes are planned before flex decodes."""
    s = Scheduler(SchedulerConfig(max_batch=4, token_budget=100))
    s.add("f", [1], max_tokens=9, tier=ServiceTier.FLEX)
    s.add("d", [1], max_tokens=9)
    drive(s)
    s.config = SchedulerConfig(max_batch=4, token_budget=1)
    assert [i.request_id for i in s.schedule().items] == ["d"]


def test_abort_removes_a_running_request() -> None:
    """Aborting returns the output so far and the request never runs again."""
    s = Scheduler(SchedulerConfig())
    s.add("a", [1], max_tokens=9)
    drive(s)
    fin = s.abort("a")
    assert fin is not None and fin.reason == FinishReason.CANCELLED and fin.output == (7,)
    assert not s.schedule()
    assert s.abort("a") is None


def test_context_limit_stops_generation() -> None:
    """A sequence reaching max_seq_len stops with reason length."""
    s = Scheduler(SchedulerConfig(max_seq_len=4))
    s.add("a", [1, 2], max_tokens=100)
    drive(s)
    done = drive(s)
    assert done and done[0].reason == FinishReason.LENGTH and len(done[0].output) == 2


def test_bad_requests_are_rejected() -> None:
    """Empty prompts, non-positive max_tokens and over-long prompts are refused at add()."""
    s = Scheduler(SchedulerConfig(max_seq_len=8))
    with pytest.raises(ValueError):
        s.add("a", [], max_tokens=1)
    with pytest.raises(ValueError):
        s.add("a", [1], max_tokens=0)
    with pytest.raises(ValueError, match="at most 7"):
        s.add("a", [1] * 8, max_tokens=1)


# KV budget and preemption ---------------------------------------------------------------
def kv_config(budget: int) -> SchedulerConfig:
    return SchedulerConfig(max_batch=8, token_budget=64, max_seq_len=16, kv_budget_tokens=budget)


def test_a_request_waits_while_its_prompt_would_not_fit_the_kv_budget() -> None:
    """With 20 KV tokens, a running 10-token prompt leaves no room for a second one (10 + 1
    each): it waits, and joins once the first has finished."""
    s = Scheduler(kv_config(20))
    s.add("a", list(range(10)), max_tokens=1)
    s.add("b", list(range(10)), max_tokens=1)
    plan = s.schedule()
    assert [i.request_id for i in plan.items] == ["a"] and s.num_waiting == 1
    s.update(plan, {"a": 7})  # a finishes (max_tokens 1)
    assert [i.request_id for i in s.schedule().items] == ["b"]


def test_growth_past_the_budget_preempts_the_newest_flex_sequence() -> None:
    """Three decoding sequences outgrow 16 KV tokens: the newest flex one is preempted, not
    the older flex one nor the default one, and the plan names it for the engine to drop."""
    s = Scheduler(kv_config(16))
    s.add("old-flex", [1, 2], max_tokens=9, tier=ServiceTier.FLEX)
    s.add("default", [1, 2], max_tokens=9)
    s.add("new-flex", [1, 2], max_tokens=9, tier=ServiceTier.FLEX)
    preempted: list[str] = []
    for _ in range(6):  # at the 5th step 3 x (5 cached + 1) = 18 tokens would exceed 16
        plan = s.schedule()
        preempted += plan.preempted
        s.update(plan, {i.request_id: 7 for i in plan.items if i.samples})
    assert preempted == ["new-flex"]
    assert s.get("new-flex") is not None and s.get("new-flex").preemptions == 1  # type: ignore[union-attr]
    assert s.kv_tokens() <= 16


def test_a_preempted_sequence_is_recomputed_and_decodes_on() -> None:
    """Readmitted, it prefills its prompt and generated tokens again without sampling, then
    decodes its last generated token after them: its output continues where it stopped."""
    s = Scheduler(kv_config(16))
    s.add("a", [1, 2, 3], max_tokens=20)
    s.add("b", [4, 5], max_tokens=20, tier=ServiceTier.FLEX)
    counter = iter(range(100, 1000))

    def step() -> list[tuple[tuple[int, ...], int, bool]]:
        plan = s.schedule()
        s.update(plan, {i.request_id: next(counter) for i in plan.items if i.samples})
        return [(i.tokens, i.context, i.samples) for i in plan.items if i.request_id == "b"]

    while True:  # drive until b is preempted
        plan = s.schedule()
        if plan.preempted:
            break
        s.update(plan, {i.request_id: next(counter) for i in plan.items if i.samples})
    assert plan.preempted == ("b",)
    s.update(plan, {i.request_id: next(counter) for i in plan.items if i.samples})
    b = s.get("b")
    assert b is not None
    generated = tuple(b.output)
    items = step()
    while not items:  # b waits until a (default) finishes and frees the budget
        items = step()
    assert items == [((4, 5, *generated[:-1]), 0, False)]
    assert step() == [((generated[-1],), 1 + len(generated), True)]
    assert tuple(b.output[: len(generated)]) == generated and len(b.output) == len(generated) + 1


def test_a_kv_budget_smaller_than_one_context_is_refused() -> None:
    """The budget must hold one full sequence, naming both sizes."""
    with pytest.raises(ValueError, match=r"KV budget of 15 tokens cannot hold one sequence .*16 tokens"):
        kv_config(15)


def test_priority_is_admitted_before_older_default() -> None:
    """Waiting priority requests join the batch ahead of older default and flex requests."""
    s = Scheduler(SchedulerConfig(max_batch=1, token_budget=100))
    s.add("flex", [1], max_tokens=1, tier=ServiceTier.FLEX)
    s.add("default", [1], max_tokens=1)
    s.add("priority", [1], max_tokens=1, tier=ServiceTier.PRIORITY)
    assert [i.request_id for i in s.schedule().items] == ["priority"]


def test_default_uses_only_the_budget_priority_leaves() -> None:
    """When the budget is tight, priority decodes are planned before default decodes."""
    s = Scheduler(SchedulerConfig(max_batch=4, token_budget=100))
    s.add("d", [1], max_tokens=9)
    s.add("p", [1], max_tokens=9, tier=ServiceTier.PRIORITY)
    drive(s)
    s.config = SchedulerConfig(max_batch=4, token_budget=1)
    assert [i.request_id for i in s.schedule().items] == ["p"]
