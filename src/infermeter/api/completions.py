"""POST /v1/chat/completions and /v1/completions, streaming and not.

Admission (auth → validate → tokenize → route → reserve budget) happens before any work, so
bad input costs nothing. Rendering and tokenizing the prompt run in a thread, never on the
event loop. The reservation is the request's cost cap (``app.cost_caps``). The final
response, or the final stream chunk, is sent only after the usage record is durable in the
ledger (the worker's sink calls back after the group commit). A client that goes away —
a stream closed early, or a non-streaming request whose connection drops while it waits —
cancels the request within one step; it is billed ``cancelled`` for the work done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from infermeter.api.auth import authenticate, tenant_of
from infermeter.api.records import metering_view, price_headers
from infermeter.api.schemas import ChatCompletionRequest, CompletionRequest, _Sampling
from infermeter.api.service import ServingService, service_of
from infermeter.billing.plans import Quote
from infermeter.billing.store import ApiKey
from infermeter.core.errors import BudgetExceeded, InfermeterError, InvalidRequest, Unavailable
from infermeter.core.ids import request_id as new_request_id
from infermeter.core.records import UsageRecord, utc_now
from infermeter.core.types import Status
from infermeter.runtime.engine import EngineInfo
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
    quote: Quote
    limits: dict[str, str]  # x-ratelimit-* headers (empty without limits)


def _service(request: Request) -> ServingService:
    return service_of(request)


async def api_key(request: Request) -> ApiKey:
    """Dependency: resolved before the body is validated, so a bad key is a 401 first.

    Async on purpose: the hashed-key lookup is one indexed SQLite read (tens of µs), far
    cheaper than the thread-pool hop FastAPI gives a sync dependency.
    """
    return authenticate(_service(request).store, request)


def _prompt_ids(svc: ServingService, body: _Sampling, engine_id: str) -> list[int]:
    """Render and tokenize the prompt (in a worker thread: a huge prompt never stalls the loop)."""
    body.check()  # valid Unicode everywhere first: nothing below may meet a lone surrogate
    tokenizer = svc.tokenizers[engine_id]
    if isinstance(body, ChatCompletionRequest):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = tokenizer.apply_chat_template(messages)
    else:
        assert isinstance(body, CompletionRequest)
        prompt = body.text()
    ids: list[int] = tokenizer.encode(prompt)
    return ids


async def _admit(request: Request, key: ApiKey, body: _Sampling) -> _Admitted:
    svc = _service(request)
    svc.check_admission()  # fail closed: 503 naming the cause while the ledger cannot append
    tenant = tenant_of(key)
    tier = body.tier()
    engines = svc.router.engines(body.model)
    if not engines:
        body.check()
        svc.router.route(body.model, tier, 0, 1)  # raises UnknownModel with the list
    prompt_ids = await asyncio.to_thread(_prompt_ids, svc, body, engines[0].engine_id)
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
    body.check_vocab(engine.vocab_size)
    subjects = svc.rate_limits.subjects(key)
    headroom = svc.rate_limits.admit(subjects, len(prompt_ids) + max_tokens)  # or 429 (RateLimited)
    rid = new_request_id()
    arrived = utc_now()  # the admission instant: the request is priced as of it (billing.plans)
    quote = svc.prices.quote(tenant, tier, arrived)
    priced = quote.price_plan()
    bound, minimum = svc.pipeline.reservation(engine, tier, len(prompt_ids), max_tokens, priced)
    try:
        grant = svc.budgets.reserve_up_to(tenant, rid, bound, minimum)
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
        sampling=body.sampling(),
        stop=body.stops(),
        on_token=lambda ev: _send(loop, events, ev),
        on_finish=lambda outcome: _finished(svc, loop, events, rid, outcome, subjects),
        cap=svc.pipeline.cost_cap(rid, engine, tier, grant, priced),
        arrived_at=arrived,
        weight=svc.prices.weight(tenant, arrived),
    )
    svc.pipeline.hold_quote(rid, quote)
    try:
        svc.worker.submit(gen)
    except BaseException:
        svc.pipeline.drop_quote(rid)
        svc.budgets.release(rid)
        raise
    svc.metrics.in_flight.inc()
    return _Admitted(gen, events, engine, int(time.time()), quote, headroom.headers if headroom else {})


def _send(
    loop: asyncio.AbstractEventLoop, events: asyncio.Queue[TokenEvent | _Done], event: TokenEvent
) -> None:
    """Runs on the worker thread: hand a token to the request's event loop."""
    loop.call_soon_threadsafe(events.put_nowait, event)


def _finished(
    svc: ServingService,
    loop: asyncio.AbstractEventLoop,
    events: asyncio.Queue[TokenEvent | _Done],
    request_id: str,
    outcome: object,
    subjects: Any = (),
) -> None:
    """Runs on the ledger writer thread once the record is durable (or on the failing thread).

    A request that ends in an exception was never priced: its reservation is released
    (a no-op if the pipeline already settled or released it).
    """
    svc.admission.leave()
    svc.metrics.in_flight.dec()
    if isinstance(outcome, BaseException):
        svc.pipeline.drop_quote(request_id)
        svc.budgets.release(request_id)
    elif isinstance(outcome, UsageRecord):
        svc.rate_limits.charge_ru(subjects, outcome.ru_micros)  # RU per minute: measured
    loop.call_soon_threadsafe(events.put_nowait, _Done(outcome))


def _usage(record: UsageRecord) -> dict[str, Any]:
    return {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "prompt_tokens_details": {"cached_tokens": record.cached_tokens},
        "metering": metering_view(record),
    }


def _outcome_record(adm: _Admitted, outcome: object) -> UsageRecord:
    if isinstance(outcome, UsageRecord):
        if outcome.status == Status.FAILED:
            raise Unavailable(
                adm.request.error
                or f"the engine failed while running request {outcome.request_id}; "
                "it was not charged; retry the request"
            )
        return outcome
    if isinstance(outcome, InfermeterError):
        raise outcome  # e.g. Unavailable (the engine failed its first step), BudgetExceeded
    raise Unavailable(f"the request could not be completed ({outcome}); it was not charged; retry")


async def _collect(adm: _Admitted) -> tuple[str, UsageRecord, str]:
    text: list[str] = []
    while True:
        ev = await adm.events.get()
        if isinstance(ev, _Done):
            record = _outcome_record(adm, ev.outcome)
            return "".join(text), record, _finish_reason(record)
        text.append(ev.text)


def _finish_reason(record: UsageRecord) -> str:
    return "length" if record.status == Status.LENGTH else "stop"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class _Json(Response):
    """A JSON response encoded by orjson (compact, UTF-8; several times json's speed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (ASGI ``http.disconnect``).

    Only for a request whose body has been read: the next message uvicorn gives then is the
    disconnect, sent when the client goes away (or after the response is complete).
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
                    record = _outcome_record(adm, ev.outcome)
                except InfermeterError as exc:
                    kind = "insufficient_quota" if isinstance(exc, BudgetExceeded) else "server_error"
                    yield _sse(
                        {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code}}
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


async def _respond(request: Request, key: ApiKey, body: _Sampling, chat: bool) -> Any:
    adm = await _service(request).admission.admit(lambda: _admit(request, key, body))
    if body.stream:
        return StreamingResponse(
            _stream(request, adm, chat, body.include_usage()),
            media_type="text/event-stream",
            headers={"x-request-id": adm.request.request_id, **price_headers(adm.quote), **adm.limits},
        )
    worker = _service(request).worker
    collect = asyncio.ensure_future(_collect(adm))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((collect, gone), return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():  # the client left: stop within one step, billed as cancelled
            worker.cancel(adm.request.request_id)
        text, record, finish = await collect
    except asyncio.CancelledError:
        worker.cancel(adm.request.request_id)
        raise
    finally:
        gone.cancel()
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
    headers = {"x-request-id": record.request_id, **price_headers(adm.quote), **adm.limits}
    return _Json(payload, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(
    request: Request, body: ChatCompletionRequest, key: ApiKey = Depends(api_key)
) -> Any:
    return await _respond(request, key, body, chat=True)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest, key: ApiKey = Depends(api_key)) -> Any:
    return await _respond(request, key, body, chat=False)
