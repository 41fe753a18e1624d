"""Continuous batching, pure: ``schedule()`` returns a plan, ``update()`` folds results back.

No clocks, threads or devices. Each step the scheduler fills a per-step token budget:

1. running sequences in decode, one token each — ``default`` tier before ``flex``;
2. running sequences still in prefill, next chunk;
3. waiting requests join the running batch (up to ``max_batch``), ``default`` before
   ``flex``, oldest first; a long prompt is prefilled in chunks over several steps.

New requests therefore join running batches at the next step, and ``flex`` work only uses
the budget that ``default`` work leaves.

KV memory (``kv_budget_tokens``, optional): the KV-cache tokens all running sequences may
hold together. A waiting request joins only while its whole prompt and one new token fit
beside what the running ones hold and will add this step. When the running sequences' next
tokens would not fit, the newest ``flex`` sequence is preempted (then the newest of any
tier): it leaves the batch, its cache is dropped (``StepPlan.preempted``: the worker
releases it in the engine) and it waits at the head of its tier to be recomputed, its
prompt and the tokens it has generated prefilled again without sampling, after which it
decodes on. The budget must hold one sequence of ``max_seq_len``, so the oldest running
sequence always fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from infermeter.core.records import Participant
from infermeter.core.types import ServiceTier

TIER_RANK = {ServiceTier.DEFAULT: 0, ServiceTier.FLEX: 1}


class FinishReason(StrEnum):
    STOP = "stop"  # eos token or a stop string
    LENGTH = "length"  # max_tokens or the engine's context limit
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_batch: int = 16
    token_budget: int = 512  # new tokens per step, all sequences together
    prefill_chunk: int = 256  # most prompt tokens one sequence prefills in one step
    max_seq_len: int = 1024
    kv_budget_tokens: int | None = None  # KV tokens all running sequences hold; None = no limit

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.token_budget < 1 or self.prefill_chunk < 1:
            raise ValueError(f"scheduler limits must be >= 1, got {self}")
        if self.kv_budget_tokens is not None and self.kv_budget_tokens < self.max_seq_len:
            raise ValueError(
                f"a KV budget of {self.kv_budget_tokens} tokens cannot hold one sequence of the "
                f"engine's context ({self.max_seq_len} tokens); give at least that"
            )


@dataclass(slots=True)
class SeqState:
    """A request as the scheduler sees it. ``computed`` tokens are in the engine's KV cache."""

    request_id: str
    tier: ServiceTier
    prompt: list[int]
    max_tokens: int
    arrival: int  # admission order, assigned by the scheduler
    eos_token_id: int | None = None
    computed: int = 0
    output: list[int] = field(default_factory=list)
    finished: FinishReason | None = None
    prefix: int = -1  # tokens to prefill before decoding: the prompt, or more after preemption
    preemptions: int = 0

    def __post_init__(self) -> None:
        if self.prefix < 0:
            self.prefix = len(self.prompt)

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefix

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass(frozen=True, slots=True)
class PlanItem:
    request_id: str
    tokens: tuple[int, ...]  # fed this step
    context: int  # tokens already cached before them
    samples: bool  # True when this step's logits yield the next token
    decode: bool

    def participant(self) -> Participant:
        if self.decode:
            return Participant(self.request_id, 0, self.context, len(self.tokens))
        return Participant(self.request_id, len(self.tokens), self.context, 0)


@dataclass(frozen=True, slots=True)
class StepPlan:
    items: tuple[PlanItem, ...]
    preempted: tuple[str, ...] = ()  # sequences whose KV cache the engine must drop now

    def __bool__(self) -> bool:
        return bool(self.items)


@dataclass(frozen=True, slots=True)
class Finished:
    request_id: str
    reason: FinishReason
    output: tuple[int, ...]


class Scheduler:
    """Holds waiting and running sequences for one engine."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._waiting: list[SeqState] = []
        self._running: list[SeqState] = []
        self._arrivals = 0

    # admission ----------------------------------------------------------------
    def add(
        self,
        request_id: str,
        prompt: Iterable[int],
        *,
        max_tokens: int,
        tier: ServiceTier = ServiceTier.DEFAULT,
        eos_token_id: int | None = None,
    ) -> SeqState:
        tokens = list(prompt)
        if not tokens:
            raise ValueError("a request needs at least one prompt token")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if len(tokens) >= self.config.max_seq_len:
            raise ValueError(
                f"prompt has {len(tokens)} tokens; the engine accepts at most {self.config.max_seq_len - 1}"
            )
        seq = SeqState(request_id, tier, tokens, max_tokens, self._arrivals, eos_token_id)
        self._arrivals += 1
        self._waiting.append(seq)
        return seq

    def abort(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED) -> Finished | None:
        """Stop a waiting or running request; returns its final state, or None if unknown."""
        for queue in (self._waiting, self._running):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    seq.finished = reason
                    return Finished(request_id, reason, tuple(seq.output))
        return None

    def get(self, request_id: str) -> SeqState | None:
        for seq in (*self._running, *self._waiting):
            if seq.request_id == request_id:
                return seq
        return None

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def has_tier(self, tier: ServiceTier) -> bool:
        return any(s.tier == tier for s in (*self._running, *self._waiting))

    # planning -----------------------------------------------------------------
    def schedule(self) -> StepPlan:
        budget = self.config.token_budget
        items: list[PlanItem] = []
        preempted = self._preempt_for_growth()
        running = sorted(self._running, key=lambda s: (TIER_RANK[s.tier], s.arrival))
        for seq in running:
            if budget == 0:
                break
            if not seq.prefilling:
                items.append(PlanItem(seq.request_id, (seq.output[-1],), seq.length - 1, True, True))
                budget -= 1
        for seq in running:
            if budget == 0:
                break
            if seq.prefilling:
                item = self._prefill_item(seq, budget)
                items.append(item)
                budget -= len(item.tokens)
        self._waiting.sort(key=lambda s: (TIER_RANK[s.tier], s.arrival))
        while self._waiting and budget > 0 and len(self._running) < self.config.max_batch:
            if not self._fits(self._waiting[0]):
                break
            seq = self._waiting.pop(0)
            self._running.append(seq)
            item = self._prefill_item(seq, budget)
            items.append(item)
            budget -= len(item.tokens)
        return StepPlan(tuple(items), preempted)

    def _prefill_item(self, seq: SeqState, budget: int) -> PlanItem:
        n = min(seq.prefix - seq.computed, budget, self.config.prefill_chunk)
        chunk = tuple([*seq.prompt, *seq.output][seq.computed : seq.computed + n])
        # a fresh prompt's last chunk samples the first token; a recompute ends before the
        # last generated token, which the next step decodes
        completes = seq.computed + n == seq.prefix and not seq.output
        return PlanItem(seq.request_id, chunk, seq.computed, completes, False)

    # KV memory ------------------------------------------------------------------
    def kv_tokens(self) -> int:
        """KV-cache tokens the running sequences hold now."""
        return sum(s.computed for s in self._running)

    def _reserved(self) -> int:
        """KV tokens the running sequences hold once each has decoded its next token (a
        prefilling one counts its whole prefix: admission reserved it)."""
        return sum((s.prefix if s.prefilling else s.computed) + 1 for s in self._running)

    def _fits(self, seq: SeqState) -> bool:
        """Whether ``seq``'s whole prefix and one token fit beside the running sequences."""
        limit = self.config.kv_budget_tokens
        return limit is None or self._reserved() + seq.prefix + 1 <= limit

    def _preempt_for_growth(self) -> tuple[str, ...]:
        """Preempt newest-flex-first until every running sequence's next token fits."""
        limit = self.config.kv_budget_tokens
        out: list[str] = []
        while limit is not None and len(self._running) > 1 and self._reserved() > limit:
            victim = max(self._running, key=lambda s: (TIER_RANK[s.tier], s.arrival))
            self._running.remove(victim)
            victim.computed = 0
            victim.prefix = max(len(victim.prompt), victim.length - 1)
            victim.preemptions += 1
            self._waiting.append(victim)
            out.append(victim.request_id)
        return tuple(out)

    # results ------------------------------------------------------------------
    def update(self, plan: StepPlan, sampled: Mapping[str, int]) -> list[Finished]:
        """Fold a step's sampled tokens back; returns the requests that finished."""
        done: list[Finished] = []
        by_id = {s.request_id: s for s in self._running}
        for item in plan.items:
            seq = by_id.get(item.request_id)
            if seq is None:  # aborted while the step ran
                continue
            seq.computed += len(item.tokens)
            if not item.samples:
                continue
            token = sampled[item.request_id]
            seq.output.append(token)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                seq.finished = reason
                self._running.remove(seq)
                done.append(Finished(seq.request_id, reason, tuple(seq.output)))
        return done

    def _stop_reason(self, seq: SeqState, token: int) -> FinishReason | None:
        if seq.eos_token_id is not None and token == seq.eos_token_id:
            return FinishReason.STOP
        if len(seq.output) >= seq.max_tokens or seq.length >= self.config.max_seq_len:
            return FinishReason.LENGTH
        return None
