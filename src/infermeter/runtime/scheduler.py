"""Continuous batching, pure: ``schedule()`` returns a plan, ``update()`` folds results back.

No clocks, threads or devices. Each step the scheduler fills a per-step token budget:

1. running sequences in decode, one token each — ``priority``, then ``default``, then ``flex``;
2. running sequences still in prefill, next chunk;
3. waiting requests join the running batch (up to ``max_batch``), ``priority`` before
   ``default`` before ``flex``, oldest first; a long prompt is prefilled in chunks over
   several steps.

New requests therefore join running batches at the next step, ``default`` work only uses
the budget that ``priority`` work leaves, and ``flex`` what both leave.

Given per-tier tenant ``counters`` (``runtime.fair_share``), step 3 admits within each tier
always from the tenant with the smallest counter instead of oldest first (fair share by
measured cost); without them it is first come, first served.

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
from fractions import Fraction

from infermeter.core.records import Participant
from infermeter.core.types import ServiceTier
from infermeter.runtime.fair_share import SCALE


def estimate(tokens: int, us_per_token: Fraction, weight: Fraction) -> int:
    """An admission's charge in fair-share counter units (1e-6 µs): tokens x µs/token / weight."""
    num = tokens * SCALE * us_per_token.numerator * weight.denominator
    return num // (us_per_token.denominator * weight.numerator)


TIER_RANK = {ServiceTier.PRIORITY: -1, ServiceTier.DEFAULT: 0, ServiceTier.FLEX: 1}


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

    tenant: str = ""
    weight: Fraction = Fraction(1)  # fair-share weight of its tenant

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
        tenant: str = "",
        weight: Fraction = Fraction(1),
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
        seq = SeqState(
            request_id, tier, tokens, max_tokens, self._arrivals, eos_token_id, tenant=tenant, weight=weight
        )
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

    def tenants(self, tier: ServiceTier) -> set[str]:
        """The tenants with a request of ``tier`` waiting or running here."""
        return {s.tenant for s in (*self._running, *self._waiting) if s.tier == tier}

    # planning -----------------------------------------------------------------
    def schedule(
        self,
        counters: Mapping[ServiceTier, Mapping[str, int]] | None = None,
        us_per_token: Fraction = Fraction(1),
    ) -> StepPlan:
        """The next step's plan; ``counters`` (tier -> tenant -> virtual counter) turn on fair share.

        Within one call, admitting a request charges its tenant's counter (a local copy) an
        estimate, ``(prompt + max_tokens) * us_per_token / weight``, so the next pick sees it;
        the caller's counters then carry the measured cost.
        """
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
        self._waiting = self._admission_order(counters, us_per_token)
        while self._waiting and budget > 0 and len(self._running) < self.config.max_batch:
            if not self._fits(self._waiting[0]):
                break
            seq = self._waiting.pop(0)
            self._running.append(seq)
            item = self._prefill_item(seq, budget)
            items.append(item)
            budget -= len(item.tokens)
        return StepPlan(tuple(items), preempted)

    def _admission_order(
        self, counters: Mapping[ServiceTier, Mapping[str, int]] | None, us_per_token: Fraction
    ) -> list[SeqState]:
        """The waiting queue in admission order: its first ``max_batch - running`` by counters."""
        fifo = sorted(self._waiting, key=lambda s: (TIER_RANK[s.tier], s.arrival))
        room = self.config.max_batch - len(self._running)
        if counters is None or room <= 0:
            return fifo
        picked: list[SeqState] = []
        for tier in sorted({s.tier for s in fifo}, key=TIER_RANK.__getitem__):
            queues: dict[str, list[SeqState]] = {}
            for s in fifo:
                if s.tier == tier:
                    queues.setdefault(s.tenant, []).append(s)
            local = {t: counters.get(tier, {}).get(t, 0) for t in queues}
            heads = dict.fromkeys(queues, 0)
            while heads and len(picked) < room:
                t = min(heads, key=lambda u: (local[u], queues[u][heads[u]].arrival))
                seq = queues[t][heads[t]]
                picked.append(seq)
                local[t] += estimate(len(seq.prompt) + seq.max_tokens, us_per_token, seq.weight)
                heads[t] += 1
                if heads[t] == len(queues[t]):
                    del heads[t]
            if len(picked) >= room:
                break
        chosen = {id(s) for s in picked}
        return picked + [s for s in fifo if id(s) not in chosen]

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
