"""Pick the engine for a request by model, service tier and shape — or refuse clearly.

``default`` runs the performance engine: FP16 (then BF16, then FP32) on a GPU, ahead of FP32
(then FP16, BF16) on the CPU. ``flex`` runs the INT8 economy engine when one is loaded, else
the performance engine at flex priority; ``default`` never runs on INT8 while another
precision is loaded. Within the tier's pool the first engine (in that preference) whose
context and optimization profiles admit the request runs it. A request no engine of its
pool admits is refused with the preferred engine's limit — never run on a mismatched
engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infermeter.core.errors import (
    ContextTooLong,
    InvalidRequest,
    ShapeOutsideProfiles,
    UnknownModel,
)
from infermeter.core.types import Precision, ServiceTier
from infermeter.runtime.compile.profiles import request_fit
from infermeter.runtime.engine import EngineInfo

GPU_ORDER = (Precision.FP16, Precision.BF16, Precision.FP32, Precision.INT8)
CPU_ORDER = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8)


@dataclass(frozen=True, slots=True)
class Route:
    engine: EngineInfo
    tier: ServiceTier


def preference(engine: EngineInfo) -> tuple[int, int]:
    """Sort key: GPU engines before CPU ones, then precision in the device's order."""
    on_cpu = engine.device == "cpu"
    order = CPU_ORDER if on_cpu else GPU_ORDER
    return int(on_cpu), order.index(engine.precision)


def tier_pool(engines: Iterable[EngineInfo], tier: ServiceTier) -> list[EngineInfo]:
    """The engines a tier may run on, most preferred first."""
    candidates = list(engines)
    if tier == ServiceTier.FLEX:
        pool = [e for e in candidates if e.precision == Precision.INT8] or candidates
    else:
        pool = [e for e in candidates if e.precision != Precision.INT8] or candidates
    return sorted(pool, key=preference)


class Router:
    def __init__(self, engines: Iterable[EngineInfo]) -> None:
        self._by_model: dict[str, list[EngineInfo]] = {}
        for info in engines:
            self._by_model.setdefault(info.model, []).append(info)

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def engines(self, model: str | None = None) -> list[EngineInfo]:
        if model is None:
            return [e for infos in self._by_model.values() for e in infos]
        return list(self._by_model.get(model, []))

    def route(self, model: str, tier: ServiceTier, prompt_tokens: int, max_tokens: int) -> Route:
        """The engine for this request; UnknownModel, ContextTooLong or ShapeOutsideProfiles
        (each a 4xx naming the limit) when there is none."""
        candidates = self._by_model.get(model)
        if not candidates:
            known = ", ".join(self.models()) or "none"
            raise UnknownModel(
                f"model {model!r} does not exist; models served here: {known} (GET /v1/models)",
                param="model",
            )
        pool = tier_pool(candidates, tier)
        refusals: list[InvalidRequest] = []
        for engine in pool:
            refusal = refusal_for(engine, prompt_tokens, max_tokens)
            if refusal is None:
                return Route(engine, tier)
            refusals.append(refusal)
        raise refusals[0]


def refusal_for(engine: EngineInfo, prompt_tokens: int, max_tokens: int) -> InvalidRequest | None:
    """Why ``engine`` cannot run this request (an error to raise), or None if it can."""
    limit = engine.max_seq_len
    if prompt_tokens >= limit:
        return ContextTooLong(
            f"prompt has {prompt_tokens:,} tokens; engine {engine.engine_id} "
            f"({engine.model}/{engine.precision.value}) accepts at most {limit - 1:,} prompt "
            f"tokens (context {limit:,}); shorten the prompt",
            param="messages",
        )
    if prompt_tokens + max_tokens > limit:
        return ContextTooLong(
            f"prompt ({prompt_tokens:,} tokens) + max_tokens ({max_tokens:,}) = "
            f"{prompt_tokens + max_tokens:,} exceeds the context of engine {engine.engine_id} "
            f"({limit:,} tokens); lower max_tokens to at most {limit - prompt_tokens:,}",
            param="max_tokens",
        )
    fit = request_fit(engine.profiles, prompt_tokens, max_tokens)
    if fit.prefill_limit is not None:
        return ShapeOutsideProfiles(
            f"a {prompt_tokens:,}-token prompt fits no optimization profile of engine "
            f"{engine.engine_id}; its profiles prefill at most {fit.prefill_limit:,} tokens: "
            + ", ".join(f"{p.name} tokens {p.min_tokens}..{p.max_tokens}" for p in engine.profiles)
            + "; shorten the prompt or rebuild the engine with a larger --max-seq-len",
            param="messages",
        )
    if fit.decode_limit is not None:
        most = max(1, fit.decode_limit - prompt_tokens + 2)
        return ShapeOutsideProfiles(
            f"prompt ({prompt_tokens:,} tokens) + max_tokens ({max_tokens:,}) needs decode "
            f"steps over {prompt_tokens + max_tokens - 2:,} cached tokens; the decode profiles "
            f"of engine {engine.engine_id} admit at most {fit.decode_limit:,}; lower max_tokens "
            f"to at most {most:,}",
            param="max_tokens",
        )
    return None


__all__ = ["CPU_ORDER", "GPU_ORDER", "Route", "Router", "preference", "refusal_for", "tier_pool"]
