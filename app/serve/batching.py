"""Continuous batching for HF causal LMs on CPU (or one GPU without vLLM). No ray import.

One background thread owns the model. Each iteration spends at most `prefill_tokens` prompt tokens on
prefill, then runs one decode step for every running sequence in a single forward pass, sampling each row
with its own temperature / top_p / seeded generator and dropping rows that finished or were cancelled.
Short prompts that fit the budget are prefilled together (left-padded); a longer prompt is prefilled a
chunk per iteration into a cache of its own (chunked prefill), so rows already running keep producing a
token per iteration while it fills, instead of all waiting for one long prompt. Rows live in one KV cache
aligned on the right: a prefilled group is left-padded (or the running batch is) to the same width and
concatenated, so a request never waits for another to finish. Sequences may use different LoRA adapters in
the same batch (peft's mixed-adapter forward).
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from app.sampler import GREEDY_BELOW, device_of, pick, positions
from app.serve.logprobs import entries
from app.serve.textstream import TextStream


@dataclass(eq=False)  # compared by identity (removed from the waiting queue)
class Sequence:
    """One choice being generated. `emit(event)` is called from the engine thread."""
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: TextStream
    emit: Callable[[dict], None]
    index: int = 0
    adapter: str | None = None
    logprobs: int | None = None    # top-k log-probs of each generated token (app/serve/logprobs.py), or none
    tokens: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = field(default=None, repr=False)
    cache: DynamicCache | None = field(default=None, repr=False)  # its own, while its prompt is prefilled
    prefilled: int = 0                                            # prompt tokens in that cache
    scored: list = field(default_factory=list, repr=False)        # log-prob entries not emitted yet


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """Next token per row with app.sampler.pick: argmax at temperature ~0, else the row's seeded draw."""
    return pick(logits, [s.temperature for s in seqs], [s.top_p for s in seqs], [s.generator for s in seqs])[0]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Batcher:
    """Owns the model and the running batch; `submit` is thread-safe, everything else runs in the thread."""

    def __init__(self, model, eos_ids: set[int], max_batch_size: int = 8, prefill_tokens: int = 256):
        self.model, self.eos_ids, self.max_batch_size = model, eos_ids, max_batch_size
        self.prefill_tokens = prefill_tokens       # prompt tokens one iteration may prefill (the chunk size)
        self.device = device_of(model)
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.waiting: deque[Sequence] = deque()    # admitted, prompt not (fully) prefilled yet
        self.running: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None      # [B, W] 1 on real tokens
        self.next_ids: torch.Tensor | None = None  # [B] the token each row feeds next
        self.lock = threading.Lock()               # held while the model runs (adapter loading waits on it)
        self.peak_rows = 0                         # the most rows one decode step carried (metrics, tests)
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def submit(self, seq: Sequence) -> None:
        if seq.temperature >= GREEDY_BELOW:
            seq.generator = torch.Generator().manual_seed(seq.seed if seq.seed is not None else
                                                          int(torch.randint(0, 2**62, ()).item()))
        self.inbox.put(seq)

    def prompt_logits(self, prompt: list[int], adapter: str | None = None) -> torch.Tensor:
        """Logits [T, V] at every prompt position (echo's log-probs), in the caller's thread while the
        engine thread waits on the lock."""
        with self.lock, torch.inference_mode():
            ids = torch.tensor([prompt], device=self.device)
            kwargs = {"adapter_names": [adapter or "__base__"]} if hasattr(self.model, "peft_config") else {}
            return self.model(input_ids=ids, **kwargs).logits[0].float().cpu()

    # -- the engine thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if not self.running and not self.waiting:
                self.waiting.append(self.inbox.get())
            while len(self.running) + len(self.waiting) < self.max_batch_size:
                try:
                    self.waiting.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                with self.lock, torch.inference_mode():
                    self.waiting = deque(s for s in self.waiting if not s.cancelled)
                    self._prefill()
                    if self.running:
                        self._step()
            except Exception as exc:  # a failed forward fails the rows in it, not the engine
                for s in self.running + list(self.waiting):
                    s.emit({"index": s.index, "error": f"{type(exc).__name__}: {exc}"})
                self.running, self.waiting, self.cache = [], deque(), None

    def _forward(self, ids, mask, position_ids, cache, seqs):
        kwargs = {}
        if hasattr(self.model, "peft_config"):
            kwargs["adapter_names"] = [s.adapter or "__base__" for s in seqs]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                         use_cache=True, **kwargs)
        return out.logits[:, -1]

    def _prefill(self) -> None:
        """This iteration's prompt tokens: the waiting prompts that fit the budget together (FIFO among them),
        then a chunk of the oldest one left (the rest of the budget, at least a quarter: never starved)."""
        budget, group = self.prefill_tokens, []
        for s in self.waiting:
            if s.prefilled == 0 and len(s.prompt) <= budget:
                group.append(s)
                budget -= len(s.prompt)
        for s in group:
            self.waiting.remove(s)
        if group:
            self._prefill_group(group)
        if self.waiting:
            self._prefill_chunk(self.waiting[0], max(budget, self.prefill_tokens // 4))

    def _prefill_group(self, seqs: list[Sequence]) -> None:
        width = max(len(s.prompt) for s in seqs)
        ids = torch.tensor([[0] * (width - len(s.prompt)) + s.prompt for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs],
                            device=self.device)
        cache = DynamicCache()
        self._join(seqs, cache, mask, self._forward(ids, mask, positions(mask), cache, seqs))

    def _prefill_chunk(self, s: Sequence, tokens: int) -> None:
        """The next `tokens` of one long prompt into its own cache; it joins the batch when complete."""
        start, end = s.prefilled, min(len(s.prompt), s.prefilled + tokens)
        s.cache = s.cache or DynamicCache()
        ids = torch.tensor([s.prompt[start:end]], device=self.device)
        mask = torch.ones(1, end, dtype=torch.long, device=self.device)
        logits = self._forward(ids, mask, torch.arange(start, end, device=self.device)[None], s.cache, [s])
        s.prefilled = end
        if end == len(s.prompt):
            self.waiting.remove(s)
            cache, s.cache = s.cache, None
            self._join([s], cache, mask, logits)

    def _join(self, seqs: list[Sequence], cache: DynamicCache, mask: torch.Tensor, logits: torch.Tensor) -> None:
        """Prefilled rows join the running batch with their first sampled token."""
        if self.running:
            self._merge(cache, mask)
        else:
            self.cache, self.mask = cache, mask
        self.running += seqs
        tokens = sample(logits, seqs)
        first = torch.tensor(tokens, device=self.device)
        self.next_ids = first if self.next_ids is None or len(self.running) == len(seqs) else \
            torch.cat([self.next_ids, first])
        self._accept(seqs, tokens, len(self.running) - len(seqs), entries(logits, tokens, [s.logprobs for s in seqs]))

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
            old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])

    def _step(self) -> None:
        self.peak_rows = max(self.peak_rows, len(self.running))
        next_position = self.mask.sum(1, keepdim=True)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.running), 1)], dim=1)
        logits = self._forward(self.next_ids[:, None], self.mask, next_position, self.cache, self.running)
        tokens = sample(logits, self.running)
        self.next_ids = torch.tensor(tokens, device=self.device)
        self._accept(self.running, tokens, 0, entries(logits, tokens, [s.logprobs for s in self.running]))

    def _accept(self, seqs: list[Sequence], tokens: list[int], offset: int, scored: list[dict | None]) -> None:
        """Record one new token per row (and its log-probs, where asked), emit text, drop the rows that are
        done. An event carries the log-prob entries of the tokens since the last event (text may be held
        back for a stop string); the end-of-turn token has no text and no entry."""
        done = set()
        for i, (s, token, entry) in enumerate(zip(seqs, tokens, scored)):
            finish = None
            if token in self.eos_ids:
                finish, text = "stop", s.stream.flush()
            else:
                s.tokens += 1
                if entry:
                    s.scored.append(entry)
                text, stopped = s.stream.push(token)
                if stopped:
                    finish = "stop"
                elif s.tokens >= s.max_tokens:
                    finish, text = "length", text + s.stream.flush()
            if finish or s.cancelled:
                done.add(offset + i)
            if text or finish:
                s.emit({"index": s.index, "text": text, "finish_reason": finish, "completion_tokens": s.tokens,
                        **({"logprobs": s.scored} if s.logprobs is not None else {})})
                s.scored = []
        for i, s in enumerate(self.running):
            if s.cancelled:
                done.add(i)
        if done:
            self._drop(sorted(done))

    def _drop(self, rows: list[int]) -> None:
        keep = [i for i in range(len(self.running)) if i not in set(rows)]
        self.running = [self.running[i] for i in keep]
        if not keep:
            self.cache, self.mask, self.next_ids = None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.mask, self.next_ids = self.mask[index], self.next_ids[index]
        start = int((self.mask.sum(0) > 0).nonzero()[0])  # leading columns no row uses any more
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
