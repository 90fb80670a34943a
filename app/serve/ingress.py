"""Ray Serve application: OpenAI-compatible HTTP routes in front of an LLM engine deployment.

    serve run serve_configs/demo.yaml          # or: serve deploy serve_configs/demo.yaml
    curl -N localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
         -d '{"model": "raypost", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'

Deployments (app/serve/replicas.py): `OpenAIServer`, the FastAPI ingress here (no CPU reserved), checks
API keys, rate limits, body size and request fields, renders the chat with the model's own template,
checks the prompt and max_tokens against the context, streams server-sent events and runs the output
safety filter. `LLMServer` holds the engine (HF continuous batching on CPU, over a transformers model, our
INT8 one or an ONNX export; vLLM on GPU); LoRA adapters are Serve multiplexed models selected by the
request's `model`. `RewardServer` ranks `best_of` candidates; `Retriever` serves "rag": true. Log-probs
(`logprobs`, `echo`, `top_logprobs`) as OpenAI and vLLM return them: app/serve/logprobs.py. The engine's
`max_queued_requests` bounds the queue: a full queue answers 503 with Retry-After, a spent rate limit 429.
Every error has OpenAI's error body.

No `from __future__ import annotations` here: Serve ships the ingress class by value, and FastAPI must
see real annotation objects (Request) on its routes.
"""

import asyncio
import contextlib
import hmac
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException

from app.chat import render_prompt, with_sources
from app.config import UserError
from app.pii import SensitiveWords
from app.models import load_tokenizer, resolve
from app.onnx import is_onnx_export
from app.serve import logprobs
from app.serve import protocol as P
from app.serve.config import ServeArgs, http_host, require_keys
from app.serve.engines import GenParams
from app.serve.replicas import LLMServer, RewardServer, Retriever
from app.serve.limits import RateLimiter
from app.serve.prometheus import ServeMetrics
from app.serve.requestlog import FeedbackRequest, RequestLog
from app.safety import SafetyCheck, rank
from app.serve.filter import REFUSAL, OutputFilter

api = FastAPI(title="raypost", docs_url=None, redoc_url=None, redirect_slashes=False)
api.add_middleware(P.OneSlash)


@api.exception_handler(P.APIError)
async def _api_error(request: Request, exc: P.APIError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    return JSONResponse(P.APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)).body(),
                        status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    return JSONResponse(P.APIError(400, str(exc.errors()[0].get("msg"))).body(), status_code=400)


@api.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception):
    logging.getLogger("ray.serve").error("500 on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(P.APIError(500, f"internal error: {type(exc).__name__}", type="server_error",
                                   code="internal_error").body(), status_code=500)


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_wait_loop_s=0.5)
@serve.ingress(api)
class OpenAIServer:
    def __init__(self, llm, args: ServeArgs, model_path: str, version: dict | None = None, reward=None,
                 retriever=None):
        self.llm, self.args, self.limits, self.reward, self.retriever = llm, args, args.limits, reward, retriever
        # what /v1/models reports about the base model: the registry version it came from, if any
        self.served = {"model_path": model_path, **({"version": version["id"], "version_name": version["name"],
                                                      "registry": str(args.registry)} if version else {})}
        self.keys = args.keys()
        require_keys(http_host(), self.keys)
        self.tokenizer = load_tokenizer(model_path, args.trust_remote_code)
        self.context = args.context_length(model_path)
        self.models = [args.served_model_name, *args.adapters]
        self.limiter = RateLimiter(self.limits.rate_limit_per_minute, self.limits.rate_limit_burst)
        self.words = SensitiveWords.from_file(args.sensitive_words)
        self.metrics = ServeMetrics(version)
        self.version, logging = version, args.logging
        self.check = SafetyCheck(args.toxicity, self.words)
        self.log = RequestLog(logging.path, logging.sample_rate, self.check) if logging.requests else None

    @api.get("/health")
    async def health(self):
        return {"status": "ok"}

    @api.get("/v1/models")
    async def list_models(self, request: Request):
        self._authorize(request)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "raypost",
                                            **({"raypost": self.served} if m == self.args.served_model_name else {})}
                                           for m in self.models]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._complete(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._complete(request, "text")

    @api.post("/v1/feedback")
    async def feedback(self, request: Request):
        """A rating (and optionally a better answer) for a logged response: app/serve/requestlog.py."""
        self._authorize(request)
        fb = P.parse(FeedbackRequest, await self._body(request))
        if self.log is None or not self.log.known(fb.id):
            why = "" if self.log else " (this server logs no requests: set args.logging.requests)"
            raise P.APIError(404, f"no logged response has id {fb.id!r}{why}", param="id", code="not_found")
        self.metrics.feedback(fb.score())
        return {"object": "feedback", **self.log.feedback(fb)}

    # -- request handling ---------------------------------------------------------------------------------
    async def _complete(self, request: Request, kind: str):
        start = time.monotonic()
        try:
            key = self._authorize(request)
            wait = self.limiter.check(key or (request.client.host if request.client else ""))
            if wait:
                raise P.APIError(429, "rate limit reached for this key", type="rate_limit_exceeded",
                                 code="rate_limit_exceeded", headers={"Retry-After": str(math.ceil(wait))})
            req = P.parse(P.ChatRequest if kind == "chat" else P.CompletionRequest, await self._body(request))
            adapter = self._adapter(req.model)
            if req.candidates > req.n and self.reward is None:
                raise P.APIError(400, "best_of needs a reward model: this server has no args.reward_model",
                                 param="best_of", code="invalid_value")
            sources = await self._retrieve(req) if kind == "chat" and req.rag else None
            prompt = self._prompt(req, kind, sources)
            params = GenParams(max_tokens=self._budget(len(prompt), req.limit, "messages" if kind == "chat" else "prompt"),
                               temperature=req.temperature, top_p=req.top_p, n=req.candidates, stop=req.stop,
                               seed=req.seed, logprobs=req.top_k)
            rid = P.new_id("chatcmpl" if kind == "chat" else "cmpl")
            echo = await self._echo(req, prompt, adapter) if kind == "text" and req.echo else None
            if params.max_tokens == 0:  # echo alone: the prompt and its log-probs, nothing generated
                return P.response(kind, rid, req.model, [{"index": 0, "text": echo[0], "finish_reason": "length",
                                                          **self._logprobs(kind, req, echo[1])}], P.usage(len(prompt), 0))
            events = self._events(prompt, params, adapter, start + self.limits.request_timeout_s)
            first = await anext(events)  # overload and engine errors surface here, before any 200 is sent
            if req.stream:
                return StreamingResponse(self._sse(kind, rid, req, len(prompt), first, events, start, sources),
                                         media_type="text/event-stream")
            body = await self._collect(kind, rid, req, len(prompt), first, events, start, echo)
            return body if sources is None else {**body, "sources": sources}
        except P.APIError as err:
            self.metrics.error(kind, err.status)
            raise

    def _authorize(self, request: Request) -> str | None:
        if not self.keys:
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not any(hmac.compare_digest(given, k) for k in self.keys):
            raise P.APIError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                             type="authentication_error", code="invalid_api_key")
        return given

    async def _body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            raise P.APIError(413, f"request body over {limit} bytes", code="request_too_large")
        body = await request.body()
        if len(body) > limit:
            raise P.APIError(413, f"request body over {limit} bytes", code="request_too_large")
        return body

    def _adapter(self, model: str) -> str | None:
        if model not in self.models:
            raise P.APIError(404, f"model {model!r} does not exist (served: {', '.join(self.models)})",
                             param="model", code="model_not_found")
        return None if model == self.args.served_model_name else model

    async def _retrieve(self, req) -> list[dict]:
        """The index's top chunks for the last user message ({id, doc, text, score}): the response's sources."""
        if self.retriever is None:
            raise P.APIError(400, "rag: this server has no index (set args.rag.index to a jobs.index output)",
                             param="rag", code="rag_not_configured")
        query = next((m.content for m in reversed(req.messages) if m.role == "user"), None)
        if not query:
            raise P.APIError(400, "rag needs a user message to retrieve for", param="messages", code="invalid_value")
        rag = self.args.rag
        return await self.retriever.search.remote(query, rag.k, rag.mode)

    def _prompt(self, req, kind: str, sources: list[dict] | None = None) -> list[int]:
        if kind == "chat":
            messages = [m.model_dump() for m in req.messages]
            try:
                return render_prompt(self.tokenizer, with_sources(messages, sources) if sources else messages)
            except ValueError as exc:
                raise P.APIError(400, str(exc), param="messages", code="invalid_value") from None
        if len(req.prompt) != 1:
            raise P.APIError(400, "send one prompt per request", param="prompt", code="invalid_value")
        if isinstance(req.prompt[0], str):
            return self.tokenizer(req.prompt[0], add_special_tokens=False)["input_ids"]
        if not all(0 <= t < len(self.tokenizer) for t in req.prompt[0]):
            raise P.APIError(400, f"prompt token ids must be in [0, {len(self.tokenizer)})", param="prompt",
                             code="invalid_value")
        return req.prompt[0]

    async def _echo(self, req, prompt: list[int], adapter: str | None) -> tuple[str, list | None]:
        """(the prompt's text, its log-prob entries when logprobs are asked for)."""
        text = req.prompt[0] if isinstance(req.prompt[0], str) else self.tokenizer.decode(prompt)
        if req.top_k is None:
            return text, None
        handle = self.llm.options(**({"multiplexed_model_id": adapter} if adapter else {}))
        try:
            return text, await handle.prompt_logprobs.remote(prompt, req.top_k)
        except BackPressureError:
            raise P.APIError(503, "the server is at capacity; retry shortly", type="overloaded", code="overloaded",
                             headers={"Retry-After": str(self.limits.retry_after_s)}) from None

    def _logprobs(self, kind: str, req, items: list | None) -> dict:
        """{"logprobs": ...} in the kind's format when asked for (a refused choice has none)."""
        if req.top_k is None or items is None:
            return {}
        token = lambda t: self.tokenizer.decode([t])  # noqa: E731
        return {"logprobs": logprobs.chat_format(items, token) if kind == "chat" else
                logprobs.completion_format(items, token)}

    def _budget(self, prompt_tokens: int, max_tokens: int | None, prompt_param: str) -> int:
        if prompt_tokens > self.limits.max_prompt_tokens:
            raise P.APIError(400, f"the prompt has {prompt_tokens} tokens; this server takes at most "
                             f"{self.limits.max_prompt_tokens}", param=prompt_param, code="context_length_exceeded")
        room = self.context - prompt_tokens
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            raise P.APIError(400, f"this model's context is {self.context} tokens; the prompt has {prompt_tokens} "
                             f"and max_tokens asks for {max_tokens or 1} more", param="max_tokens" if room > 0
                             else prompt_param, code="context_length_exceeded")
        return max_tokens if max_tokens is not None else min(self.limits.default_max_tokens, room)

    async def _events(self, prompt: list[int], params: GenParams, adapter: str | None, deadline: float):
        handle = self.llm.options(stream=True, **({"multiplexed_model_id": adapter} if adapter else {}))
        gen = None
        try:
            while True:
                try:
                    gen = gen or handle.generate.remote(prompt, asdict(params))
                    event = await asyncio.wait_for(anext(gen), max(0.0, deadline - time.monotonic()))
                except StopAsyncIteration:
                    return
                except (asyncio.TimeoutError, TimeoutError):
                    raise P.APIError(504, f"request timed out after {self.limits.request_timeout_s:g}s",
                                     type="timeout", code="timeout") from None
                except BackPressureError:
                    raise P.APIError(503, "the server is at capacity; retry shortly", type="overloaded",
                                     code="overloaded", headers={"Retry-After": str(self.limits.retry_after_s)}
                                     ) from None
                except Exception as exc:  # the engine replica died or failed: a 500, never a hang
                    raise P.APIError(500, f"engine failed: {type(exc).__name__}", type="server_error",
                                     code="engine_error") from None
                if "error" in event:
                    raise P.APIError(500, f"generation failed: {event['error']}", type="server_error",
                                     code="engine_error")
                yield event
        finally:  # ended early (client gone, refusal, timeout): free the engine rows
            with contextlib.suppress(Exception):  # cancel() re-raises a rejection such as BackPressureError
                if gen is not None:
                    gen.cancel()

    async def _choices(self, kind: str, n: int, first: dict, events):
        """(index, text, finish_reason, tokens so far, log-prob entries) per event after the safety filter; a
        refused choice ends at once."""
        filters = [OutputFilter(self.args.safety, self.words) for _ in range(n)]
        done = [False] * n

        async def all_events():
            yield first
            async for e in events:
                yield e

        async for event in all_events():
            i = event["index"]
            if done[i]:
                continue
            f, finish = filters[i], event.get("finish_reason")
            text = f.feed(event["text"])
            if f.refused:
                text, finish = text + REFUSAL, "content_filter"
            elif finish:
                text += f.finish()
            done[i] = bool(finish)
            if finish and (f.refused or f.redacted):
                self.metrics.filtered(kind, "refused" if f.refused else "redacted")
            yield i, text, finish, event.get("completion_tokens", 0), event.get("logprobs", [])
            if all(done):
                return

    async def _collect(self, kind, rid, req, prompt_tokens, first, events, start, echo=None):
        n = req.candidates
        texts, finish, tokens, scored = [echo[0] if echo else ""] * n, [None] * n, [0] * n, [[] for _ in range(n)]
        if echo and echo[1]:
            scored[0] = list(echo[1])
        async for i, text, reason, count, entries in self._choices(kind, n, first, events):
            texts[i] += text
            finish[i], tokens[i] = reason or finish[i], count
            scored[i] += entries
            if reason == "content_filter":
                texts[i], scored[i] = REFUSAL, None
        self.metrics.done(kind, start, None, sum(tokens))
        picked = range(n) if n == req.n else await self._best(req, kind, texts, finish)
        choices = [{"index": j, "text": texts[i], "finish_reason": finish[i],
                    **self._logprobs(kind, req, scored[i] if finish[i] != "content_filter" else None)}
                   for j, i in enumerate(picked)]
        self._log(kind, rid, req, prompt_tokens, choices, sum(tokens), start)
        return P.response(kind, rid, req.model, choices, P.usage(prompt_tokens, sum(tokens)))

    async def _best(self, req, kind: str, texts: list[str], finish: list) -> list[int]:
        """best_of: the req.n candidates with the highest reward among the safe ones (not refused by the filter,
        and safe by the server's SafetyCheck: seed 000's rejection sampling); unsafe candidates rank last, and one
        that is picked all the same answers with the refusal (finish_reason content_filter)."""
        prompt = [m.model_dump() for m in req.messages] if kind == "chat" else req.prompt[0]
        rewards = await self.reward.score.remote(prompt, texts)
        safe = [f != "content_filter" and not u for u, f in zip(self.check.unsafe(texts), finish)]
        picked = rank(rewards, safe)[:req.n]
        for i in picked:
            if not safe[i] and self.args.safety != "off":
                texts[i], finish[i] = REFUSAL, "content_filter"
        return picked

    def _log(self, kind, rid, req, prompt_tokens: int, answers: list[dict], tokens: int, start: float) -> None:
        if self.log is not None:
            self.log.record(rid, kind, req, self._adapter(req.model), self.version, answers, prompt_tokens, tokens,
                            time.monotonic() - start)

    async def _sse(self, kind, rid, req, prompt_tokens, first, events, start, sources=None):
        tokens, first_token_at, finished = [0] * req.n, None, 0
        answers = [{"text": "", "finish_reason": None} for _ in range(req.n)]
        try:
            if kind == "chat":  # the role chunks; with rag, they carry the sources
                for i in range(req.n):
                    yield P.chunk(kind, rid, req.model, i, "", role=True,
                                  extra={"sources": sources} if sources is not None else None)
            async for i, text, reason, count, _ in self._choices(kind, req.n, first, events):
                tokens[i], finished = count, finished + bool(reason)
                answers[i]["text"] += text
                answers[i]["finish_reason"] = reason or answers[i]["finish_reason"]
                if not text and not reason:
                    continue  # held back by the safety filter: nothing to send yet
                first_token_at = first_token_at or time.monotonic()
                last = finished == req.n and not req.include_usage
                yield P.chunk(kind, rid, req.model, i, text, reason,
                              usage_=P.usage(prompt_tokens, sum(tokens)) if last else None)
            if req.include_usage:
                yield P.chunk(kind, rid, req.model, usage_=P.usage(prompt_tokens, sum(tokens)))
            self.metrics.done(kind, start, first_token_at, sum(tokens))
            self._log(kind, rid, req, prompt_tokens, answers, sum(tokens), start)
        except P.APIError as err:  # after the 200 went out: an error chunk, then the stream ends
            self.metrics.error(kind, err.status)
            yield P.error_chunk(err)
        yield P.DONE


def build_app(args: ServeArgs) -> serve.Application:
    """The typed application builder named by serve_configs/*.yaml (import_path: app.serve.ingress:build_app)."""
    import ray
    path, version = args.lookup()
    if is_onnx_export(resolve(path)) and (args.adapters or args.engine == "vllm"):  # resolve: fail on a bad path
        raise UserError(f"model {path} is an ONNX export: it serves on the hf engine, without LoRA adapters")
    index = Path(args.rag.index).resolve() if args.rag else None  # replicas may run in another folder
    if index and not (index / "manifest.json").is_file():
        raise UserError(f"rag.index {args.rag.index} is not an index (build one: python -m jobs.index docs=<folder>)")
    limits = args.limits
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0
    llm = LLMServer.options(
        num_replicas=args.num_replicas, max_ongoing_requests=limits.max_ongoing_requests,
        max_queued_requests=limits.max_queued_requests,
        ray_actor_options={"num_cpus": args.cpus_per_replica, "num_gpus": gpus}).bind(args, str(path))
    reward = RewardServer.options(ray_actor_options={"num_cpus": args.cpus_per_replica}).bind(args.reward_model) \
        if args.reward_model else None
    retriever = Retriever.options(ray_actor_options={"num_cpus": 0}).bind(str(index)) if index else None
    capacity = args.num_replicas * limits.max_ongoing_requests + limits.max_queued_requests
    return OpenAIServer.options(max_ongoing_requests=capacity + 8).bind(llm, args, str(path), version, reward,
                                                                         retriever)
