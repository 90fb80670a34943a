"""The opt-in request log and the feedback on it: what seed 004's monitor -> collect -> retrain loop collects.

    args: {logging: {requests: true, path: runs/request-log, sample_rate: 1.0}}   # in a serve config
    python -m jobs.harvest logs=runs/request-log                                  # into training records

Off by default. When on, each finished request (a `sample_rate` share of them, drawn per request) is one
JSON line in <path>/requests-<ingress pid>.jsonl:

    {id, time, route, model, adapter, version, messages | prompt, answers: [{text, finish_reason}],
     prompt_tokens, completion_tokens, latency_ms, safety: {filtered, unsafe}}

Every text (the conversation, the answers) is PII-redacted with the data stage's detectors (app/pii.py:
e-mail, phone, ID and card numbers become [EMAIL], [PHONE], ...) before it is written; nothing about the
client (address, API key) is stored. `POST /v1/feedback` appends {id, rating, score, preferred_answer,
comment, time} to feedback-<pid>.jsonl, redacted the same way, for a response id the log holds (404
otherwise). `rating` is -1..1 (thumbs), or 1-5 with "scale": "stars"; `score` is it on -1..1.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.pii import redact
from app.safety import SafetyCheck


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)
    rating: float
    scale: Literal["thumbs", "stars"] = "thumbs"
    preferred_answer: str | None = Field(None, max_length=20_000)
    comment: str | None = Field(None, max_length=5_000)

    @model_validator(mode="after")
    def _in_range(self):
        low, high = (-1, 1) if self.scale == "thumbs" else (1, 5)
        if not low <= self.rating <= high:
            raise ValueError(f"rating must be in [{low}, {high}] on the {self.scale} scale")
        return self

    def score(self) -> float:
        return self.rating if self.scale == "thumbs" else (self.rating - 3) / 2


def clean(text: str | None) -> str | None:
    return None if text is None else redact(text)[0]


def _clean_messages(messages: list[dict]) -> list[dict]:
    return [{**m, "content": clean(m["content"])} for m in messages]


class RequestLog:
    """Appends redacted request records and feedback; one file pair per ingress replica (its pid)."""

    def __init__(self, path: str, sample_rate: float, check: SafetyCheck, seed: int | None = None):
        self.dir = Path(path).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.requests = self.dir / f"requests-{os.getpid()}.jsonl"
        self.feedback_file = self.dir / f"feedback-{os.getpid()}.jsonl"
        self.sample_rate, self.rng, self.check = sample_rate, random.Random(seed), check  # the server's verdicts
        self.ids: set[str] = set()  # logged by this replica (others' are found in their files)
        self.lock = threading.Lock()

    def record(self, rid: str, route: str, req, adapter: str | None, version: dict | None, answers: list[dict],
               prompt_tokens: int, completion_tokens: int, latency_s: float) -> bool:
        """Log one finished request (True) or leave it out by the sample rate (False). `answers`: the
        choices as sent, each {text, finish_reason}."""
        if self.rng.random() >= self.sample_rate:
            return False
        conversation = {"messages": _clean_messages([m.model_dump() for m in req.messages])} if route == "chat" \
            else {"prompt": clean(req.prompt[0]) if isinstance(req.prompt[0], str) else req.prompt[0]}
        row = {"id": rid, "time": time.time(), "route": route, "model": req.model, "adapter": adapter,
               "version": version and {k: version[k] for k in ("id", "name") if k in version},
               **conversation,
               "answers": [{"text": clean(a["text"]), "finish_reason": a["finish_reason"]} for a in answers],
               "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
               "latency_ms": round(latency_s * 1000, 1),
               "safety": {"filtered": sum(a["finish_reason"] == "content_filter" for a in answers),
                          "unsafe": sum(self.check.unsafe([a["text"] for a in answers]))}}
        self._append(self.requests, row)
        self.ids.add(rid)
        return True

    def known(self, rid: str) -> bool:
        if rid in self.ids:
            return True
        needle = json.dumps(rid)
        return any(needle in line for f in self.dir.glob("requests-*.jsonl") for line in _lines(f))

    def feedback(self, fb: FeedbackRequest) -> dict:
        row = {"id": fb.id, "rating": fb.rating, "scale": fb.scale, "score": fb.score(),
               "preferred_answer": clean(fb.preferred_answer), "comment": clean(fb.comment), "time": time.time()}
        self._append(self.feedback_file, row)
        return row

    def _append(self, path: Path, row: dict) -> None:
        with self.lock, path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _lines(path: Path):
    with path.open(encoding="utf-8") as f:
        yield from f


def read_jsonl(folder: str | Path, pattern: str) -> list[dict]:
    """Every record of the log files matching `pattern` in `folder` (a torn last line is skipped)."""
    rows = []
    for path in sorted(Path(folder).glob(pattern)):
        for line in _lines(path):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows
