"""The OpenAI wire format: request models, error bodies, response and chunk builders. Pure: no ray, no torch.

Requests are validated here; anything wrong becomes an APIError (a 4xx with the OpenAI error body
{"error": {"message", "type", "param", "code"}}). Unknown request fields are ignored, as OpenAI's own
clients send optional ones (user, ...) that this server does not use. Log-probs (completions: `logprobs: k`,
`echo`; chat: `logprobs`, `top_logprobs`) come in app/serve/logprobs.py's formats.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator


MAX_TOP = 20  # top log-probs per token, at most (vLLM's default max_logprobs)


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[dict]

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v):
        """Content parts ([{type: text, text}]) are joined; other part types are not served by a text model."""
        if isinstance(v, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in v):
                raise ValueError("only text content parts are supported")
            return "".join(p["text"] for p in v)
        return v


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=0)  # 0: only with echo (the prompt's log-probs, nothing generated)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    best_of: int | None = Field(None, ge=1, le=8)  # candidates ranked by the reward model; the n best returned
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: StrictBool = False
    stream_options: dict | None = None

    @field_validator("seed")
    @classmethod
    def _seed(cls, v):
        """Any integer is a seed (OpenAI's are 64-bit, JSON's unbounded): folded into [0, 2**63)."""
        return None if v is None else v % 2**63

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or not all(stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be at least n")
        if self.best_of is not None and self.best_of > 1 and self.stream:
            raise ValueError("best_of cannot be used with stream")
        if self.max_tokens == 0 and not getattr(self, "echo", False):
            raise ValueError("max_tokens must be at least 1 (0 only with echo on /v1/completions)")
        if self.top_k is not None and self.stream:
            raise ValueError("logprobs are returned with whole responses: use stream false")
        return self

    @property
    def top_k(self) -> int | None:
        """Top log-probs per token to return; None: no log-probs (each request kind reads its own fields)."""
        return None

    @property
    def candidates(self) -> int:
        return max(self.n, self.best_of or 1)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    rag: StrictBool = False      # retrieve sources for the last user message (the server's args.rag)
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP)

    @model_validator(mode="before")
    @classmethod
    def _top_needs_logprobs(cls, data):
        if isinstance(data, dict) and data.get("top_logprobs") is not None and data.get("logprobs") is not True:
            raise ValueError("top_logprobs needs logprobs: true")
        return data

    @property
    def top_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]  # text, or token ids as OpenAI's API takes them
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP)
    echo: StrictBool = False

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        prompts = [v] if isinstance(v, str) or (v and isinstance(v[0], int)) else v
        if not prompts or len(prompts) > 8 or not all(prompts):
            raise ValueError("prompt must be a string, a list of token ids, or a list of 1-8 of either")
        return prompts

    @model_validator(mode="after")
    def _echo(self):
        if self.echo and self.candidates > 1:
            raise ValueError("echo is for one choice: use n 1 (and no best_of)")
        return self

    @property
    def top_k(self) -> int | None:
        return self.logprobs


def _text(value):
    """Every string of a parsed body with lone surrogates (valid JSON escapes such as "\\ud800", but not text:
    no tokenizer or UTF-8 encoder takes them) replaced by U+FFFD, as a UTF-8 client would have sent them."""
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def parse(model: type[BaseModel], raw: bytes):
    """Bytes of a request body -> a validated request, or APIError 400 naming the offending parameter."""
    try:
        data = _text(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        reason = err["msg"].removeprefix("Value error, ")
        message = f"invalid value for {param}: {reason}" if param else reason
        raise APIError(400, message, param=param,
                       code="missing_required_parameter" if err["type"] == "missing" else "invalid_value") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response(kind: str, rid: str, model: str, choices: list[dict], usage_: dict) -> dict:
    """A whole chat.completion / text_completion; choices carry index, text, finish_reason and logprobs
    (already in the kind's format, or absent)."""
    if kind == "chat":
        out = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                "finish_reason": c["finish_reason"], "logprobs": c.get("logprobs")} for c in choices]
    else:
        out = [{"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"],
                "logprobs": c.get("logprobs")} for c in choices]
    return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": out, "usage": usage_}


def chunk(kind: str, rid: str, model: str, index: int | None = None, text: str | None = None,
          finish_reason: str | None = None, role: bool = False, usage_: dict | None = None,
          extra: dict | None = None) -> str:
    """One server-sent event in OpenAI's chunk format (no choices when it only carries usage)."""
    choices = []
    if index is not None:
        if kind == "chat":
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choices = [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        else:
            choices = [{"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}]
    body = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return f"data: {json.dumps({**body, **(extra or {})}, ensure_ascii=False)}\n\n"


def error_chunk(err: APIError) -> str:
    return f"data: {json.dumps(err.body())}\n\n"


DONE = "data: [DONE]\n\n"


class OneSlash:
    """ASGI middleware: `/v1/chat/completions/` is `/v1/chat/completions` (what a client whose base_url ends
    in "/" asks for), the same route and, for a wrong method, its 405 with the error body (FastAPI's
    redirect_slashes would answer 307)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and len(scope["path"]) > 1 and scope["path"].endswith("/"):
            scope = {**scope, "path": scope["path"].rstrip("/") or "/"}
        await self.app(scope, receive, send)
