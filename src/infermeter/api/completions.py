"""POST /v1/chat/completions and /v1/completions, streaming and not.

Admission (auth → validate → route → reserve budget) happens before any work, so bad input
costs nothing. The final response, or the final stream chunk, is sent only after the usage
record is durable in the ledger (the worker's sink calls back after the group commit).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from infermeter.api.auth import authenticate, tenant_of
from infermeter.api.records import metering_view
from infermeter.api.schemas import ChatCompletionRequest, CompletionRequest, _Sampling
from infermeter.billing.store import ApiKey
from infermeter.core.errors import InfermeterError, InvalidRequest, Unavailable
from infermeter.core.ids import request_id as new_request_id
from infermeter.core.records import UsageRecord
from infermeter.core.types import Status
from infermeter.runtime.engine import EngineInfo
from infermeter.runtime.sampling import SamplingParams
from infermeter.runtime.worker import GenerationRequest, TokenEvent

router = APIRouter()

DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class _Done:
    outcome: object  # UsageRecord, or an exception


@dataclass(slots=True)
class _Admitted:
    request: GenerationRequest
    events: asyncio.Queue[TokenEvent | _Done]
    engine: EngineInfo
    created: int


def _service(request: Request) -> Any:
    return request.app.state.service


async def api_key(request: Request) -> ApiKey:
    """Dependency: resolved before the body is validated, so a bad key is a 401 first.

    Async on purpose: the hashed-key lookup is one indexed SQLite read (tens of µs), far
    cheaper than the thread-pool hop FastAPI gives a sync dependency.
    """
    return authenticate(_service(request).store, request)


def _admit(request: Request, key: ApiKey, body: _Sampling, prompt: str) -> _Admitted:
    svc = _service(request)
    tenant = tenant_of(key)
    tier = body.tier()
    engines = svc.router.engines(body.model)
    if not engines:
        svc.router.route(body.model, tier, 0, 1)  # raises UnknownModel with the list
    tokenizer = svc.tokenizers[engines[0].engine_id]
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise InvalidRequest(
            "the prompt is empty after tokenization; send some text",
            param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
        )
    limit = body.limit()  # type: ignore[attr-defined]
    context = engines[0].max_seq_len
    max_tokens = limit if limit is not None else max(1, min(DEFAULT_MAX_TOKENS, context - len(prompt_ids)))
    try:
        route = svc.router.route(body.model, tier, len(prompt_ids), max_tokens)
    except InfermeterError as exc:
        svc.metrics.refusals.labels(exc.code).inc()
        raise
    engine = route.engine
    rid = new_request_id()
    estimate = svc.pipeline.estimate_cost(engine, tier, len(prompt_ids), max_tokens)
    try:
        svc.budgets.reserve(tenant, rid, estimate)
    except InfermeterError as exc:
        svc.metrics.refusals.labels(exc.code).inc()
        raise
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[TokenEvent | _Done] = asyncio.Queue()
    gen = GenerationRequest(
        request_id=rid,
        tenant_id=tenant,
        model=engine.model,
        engine_id=engine.engine_id,
        tier=tier,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        sampling=SamplingParams(body.temperature, body.top_p, body.seed),
        stop=body.stops(),
        on_token=lambda ev: _send(loop, events, ev),
        on_finish=lambda outcome: _finished(svc, loop, events, rid, outcome),
    )
    svc.worker.submit(gen)
    svc.metrics.in_flight.inc()
    return _Admitted(gen, events, engine, int(time.time()))


def _send(
    loop: asyncio.AbstractEventLoop, events: asyncio.Queue[TokenEvent | _Done], event: TokenEvent
) -> None:
    """Runs on the worker thread: hand a token to the request's event loop."""
    loop.call_soon_threadsafe(events.put_nowait, event)


def _finished(
    svc: Any,
    loop: asyncio.AbstractEventLoop,
    events: asyncio.Queue[TokenEvent | _Done],
    request_id: str,
    outcome: object,
) -> None:
    """Runs on the ledger writer thread once the record is durable (or on the failing thread).

    A request that ends in an exception was never priced: its reservation is released
    (a no-op if the pipeline already settled or released it).
    """
    svc.admission.leave()
    svc.metrics.in_flight.dec()
    if isinstance(outcome, BaseException):
        svc.budgets.release(request_id)
    loop.call_soon_threadsafe(events.put_nowait, _Done(outcome))


def _usage(record: UsageRecord) -> dict[str, Any]:
    return {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "prompt_tokens_details": {"cached_tokens": record.cached_tokens},
        "metering": metering_view(record),
    }


def _outcome_record(outcome: object) -> UsageRecord:
    if isinstance(outcome, UsageRecord):
        if outcome.status == Status.FAILED:
            raise Unavailable(
                f"the engine failed while running request {outcome.request_id}; "
                "it was not charged; retry the request"
            )
        return outcome
    raise Unavailable(f"the request could not be completed ({outcome}); it was not charged; retry")


async def _collect(adm: _Admitted) -> tuple[str, UsageRecord, str]:
    text: list[str] = []
    while True:
        ev = await adm.events.get()
        if isinstance(ev, _Done):
            record = _outcome_record(ev.outcome)
            return "".join(text), record, _finish_reason(record)
        text.append(ev.text)


def _finish_reason(record: UsageRecord) -> str:
    return "length" if record.status == Status.LENGTH else "stop"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(request: Request, adm: _Admitted, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
    rid, svc = adm.request.request_id, _service(request)
    base = {
        "id": ("chatcmpl-" if chat else "cmpl-") + rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": adm.created,
        "model": adm.engine.model,
        "system_fingerprint": adm.engine.engine_id,
        "service_tier": adm.request.tier.value,
    }

    def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    done = False
    try:
        if chat:
            yield _sse({**base, "choices": [choice(None, None, first=True)]})
        while True:
            ev = await adm.events.get()
            if isinstance(ev, _Done):
                done = True
                try:
                    record = _outcome_record(ev.outcome)
                except InfermeterError as exc:
                    yield _sse(
                        {
                            "error": {
                                "message": exc.message,
                                "type": "server_error",
                                "param": None,
                                "code": exc.code,
                            }
                        }
                    )
                    return
                yield _sse({**base, "choices": [choice(None, _finish_reason(record))]})
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(record)})
                yield b"data: [DONE]\n\n"
                return
            yield _sse({**base, "choices": [choice(ev.text, None)]})
    finally:
        if not done:  # the client went away: stop the work; it is billed as cancelled
            svc.worker.cancel(rid)


async def _respond(request: Request, key: ApiKey, body: _Sampling, prompt: str, chat: bool) -> Any:
    adm = await _service(request).admission.admit(lambda: _admit(request, key, body, prompt))
    if body.stream:
        return StreamingResponse(
            _stream(request, adm, chat, body.include_usage()),
            media_type="text/event-stream",
            headers={"x-request-id": adm.request.request_id},
        )
    try:
        text, record, finish = await _collect(adm)
    except asyncio.CancelledError:
        _service(request).worker.cancel(adm.request.request_id)
        raise
    common = {
        "created": adm.created,
        "model": record.model,
        "system_fingerprint": record.engine_id,
        "service_tier": record.service_tier.value,
        "usage": _usage(record),
    }
    if chat:
        payload = {
            "id": "chatcmpl-" + record.request_id,
            "object": "chat.completion",
            **common,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
        }
    else:
        payload = {
            "id": "cmpl-" + record.request_id,
            "object": "text_completion",
            **common,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }
    return JSONResponse(payload, headers={"x-request-id": record.request_id})


@router.post("/v1/chat/completions")
async def chat_completions(
    request: Request, body: ChatCompletionRequest, key: ApiKey = Depends(api_key)
) -> Any:
    svc = _service(request)
    engines = svc.router.engines(body.model)
    tokenizer = svc.tokenizers[engines[0].engine_id] if engines else None
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt = tokenizer.apply_chat_template(messages) if tokenizer else ""
    return await _respond(request, key, body, prompt, chat=True)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest, key: ApiKey = Depends(api_key)) -> Any:
    return await _respond(request, key, body, body.text(), chat=False)
