"""Pick the engine for a request by model, service tier and shape — or refuse clearly.

``default`` runs the performance engine (FP16/BF16 on GPU, FP32 on CPU); ``flex`` runs the
INT8 economy engine when one is loaded, else the performance engine at flex priority.
A shape outside every profile is refused, never run on a mismatched engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infermeter.core.errors import ContextTooLong, ShapeOutsideProfiles, UnknownModel
from infermeter.core.types import Precision, ServiceTier
from infermeter.runtime.engine import EngineInfo

PERFORMANCE_ORDER = (Precision.FP16, Precision.BF16, Precision.FP32, Precision.INT8)


@dataclass(frozen=True, slots=True)
class Route:
    engine: EngineInfo
    tier: ServiceTier


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
        candidates = self._by_model.get(model)
        if not candidates:
            known = ", ".join(self.models()) or "none"
            raise UnknownModel(
                f"model {model!r} does not exist; models served here: {known} (GET /v1/models)",
                param="model",
            )
        if tier == ServiceTier.FLEX:
            int8 = [e for e in candidates if e.precision == Precision.INT8]
            pool = int8 or candidates
        else:
            pool = [e for e in candidates if e.precision != Precision.INT8] or candidates
        pool = sorted(pool, key=lambda e: PERFORMANCE_ORDER.index(e.precision))
        engine = pool[0]
        limit = engine.max_seq_len
        if prompt_tokens >= limit:
            raise ContextTooLong(
                f"prompt has {prompt_tokens:,} tokens; engine {engine.engine_id} "
                f"({engine.model}/{engine.precision.value}) accepts at most {limit - 1:,} prompt "
                f"tokens (context {limit:,}); shorten the prompt",
                param="messages",
            )
        if prompt_tokens + max_tokens > limit:
            raise ContextTooLong(
                f"prompt ({prompt_tokens:,} tokens) + max_tokens ({max_tokens:,}) = "
                f"{prompt_tokens + max_tokens:,} exceeds the context of engine {engine.engine_id} "
                f"({limit:,} tokens); lower max_tokens to at most {limit - prompt_tokens:,}",
                param="max_tokens",
            )
        if engine.profiles and not any(
            p.admits(1, min(prompt_tokens, p.max_tokens), 0) for p in engine.profiles
        ):
            raise ShapeOutsideProfiles(
                f"a {prompt_tokens}-token prompt fits no optimization profile of engine "
                f"{engine.engine_id}; profiles: "
                + ", ".join(f"{p.name} tokens {p.min_tokens}..{p.max_tokens}" for p in engine.profiles),
                param="messages",
            )
        return Route(engine, tier)
