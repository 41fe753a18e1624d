"""Request bodies of the OpenAI-compatible API (pydantic). Unknown fields are ignored, as
OpenAI's clients send fields this server does not use; known fields are checked strictly.

Types and ranges are pydantic's (a 400 naming the field, the value and the limit); what
pydantic cannot say — text that is not valid Unicode, a feature this server does not
implement, a token id outside the model's vocabulary — ``check`` and ``check_vocab`` raise
as ``InvalidRequest`` with the same parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from infermeter.core.errors import InvalidRequest
from infermeter.core.types import ServiceTier
from infermeter.runtime.sampling import SamplingParams

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


def _number(**bounds: float) -> object:
    """A JSON number (an integer is fine), finite, within ``bounds``; never a string."""
    return Field(strict=True, allow_inf_nan=False, **bounds)  # type: ignore[call-overload]


Temperature = Annotated[float, _number(ge=0.0, le=2.0)]
TopP = Annotated[float, _number(gt=0.0, le=1.0)]
Penalty = Annotated[float, _number(ge=-2.0, le=2.0)]
Bias = Annotated[float, _number(ge=-100.0, le=100.0)]
MaxTokens = Annotated[int, Field(strict=True, ge=1)]
Seed = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text`` (not encodable as UTF-8), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_text(field: str, text: str) -> None:
    at = lone_surrogate(text)
    if at is not None:
        raise InvalidRequest(
            f"'{field}' holds a lone surrogate U+{ord(text[at]):04X} at character {at}, which is "
            "not valid Unicode and cannot be encoded as UTF-8; send valid UTF-8 text (a "
            "character beyond U+FFFF is one \\uD8xx\\uDCxx pair in JSON, never half of one)",
            param=field,
            code="invalid_unicode",
        )


class _Sampling(_Body):
    model: StrictStr = Field(min_length=1)
    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Annotated[int, Field(strict=True, ge=1, le=1)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[StrictStr, Bias] | None = None
    service_tier: ServiceTier | Literal["auto"] | None = None
    user: StrictStr | None = None

    def texts(self) -> Iterator[tuple[str, str]]:
        """(field, text) of every string the request carries."""
        yield "model", self.model
        if self.user is not None:
            yield "user", self.user
        if isinstance(self.stop, str):
            yield "stop", self.stop
        elif self.stop is not None:
            for i, stop in enumerate(self.stop):
                yield f"stop[{i}]", stop
        for key in self.logit_bias or {}:
            yield "logit_bias", key

    def check(self) -> None:
        """What pydantic cannot check: valid Unicode everywhere, unsupported features."""
        for field, text in self.texts():
            _check_text(field, text)
        if self.logit_bias is not None and len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidRequest(
                f"'logit_bias' has {len(self.logit_bias)} entries; at most {MAX_LOGIT_BIAS} are "
                "allowed; send fewer",
                param="logit_bias",
            )

    def check_vocab(self, vocab_size: int) -> None:
        """logit_bias keys must be token ids of the model: integers in 0..vocab_size-1."""
        for key in self.logit_bias or {}:
            if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
                raise InvalidRequest(
                    f"'logit_bias' key {key!r} is not a token id of this model; keys are token "
                    f'ids 0..{vocab_size - 1} written as strings, e.g. {{"42": -100}}',
                    param="logit_bias",
                )

    def sampling(self) -> SamplingParams:
        bias = tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items())
        return SamplingParams(
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            seed=self.seed,
            presence_penalty=float(self.presence_penalty or 0.0),
            frequency_penalty=float(self.frequency_penalty or 0.0),
            logit_bias=bias,
        )

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def tier(self) -> ServiceTier:
        if self.service_tier in (None, "auto"):
            return ServiceTier.DEFAULT
        return ServiceTier(self.service_tier)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _unsupported(field: str, value: object, fix: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{field}' = {value!r} is not supported by this server; {fix}", param=field, code="unsupported"
    )


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None

    def texts(self) -> Iterator[tuple[str, str]]:
        yield from super().texts()
        for i, message in enumerate(self.messages):
            if isinstance(message.content, str):
                yield f"messages[{i}].content", message.content
            elif message.content is not None:
                for j, part in enumerate(message.content):
                    yield f"messages[{i}].content[{j}].text", part.text

    def check(self) -> None:
        super().check()
        if self.logprobs:
            raise _unsupported("logprobs", True, "omit it or send false")
        if self.top_logprobs:
            raise _unsupported("top_logprobs", self.top_logprobs, "omit it or send 0")

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)]
    max_tokens: MaxTokens | None = 16
    echo: StrictBool = False
    logprobs: Annotated[int, Field(strict=True, ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(strict=True, ge=1)] | None = None

    def texts(self) -> Iterator[tuple[str, str]]:
        yield from super().texts()
        yield "prompt", self.text()

    def check(self) -> None:
        super().check()
        if self.logprobs is not None:
            raise _unsupported("logprobs", self.logprobs, "omit it (or send null)")
        if self.best_of not in (None, 1):
            raise _unsupported("best_of", self.best_of, "omit it or send 1 (one completion per request)")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        text = value if isinstance(value, str) else value[0]
        if not text:
            raise ValueError("prompt must not be empty")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def limit(self) -> int | None:
        return self.max_tokens
