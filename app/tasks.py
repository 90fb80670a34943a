"""Prompt sets and their tasks, read the same way by RL (training and held-out prompts) and evaluation:
our JSONL ({id, prompt: text or messages, answer?}), GSM8K's JSONL ({question, answer}, asked to end with
'#### <number>'), or a data stage output folder (`python -m jobs.data ... input.kind=prompt`: Parquet prompt
records, e.g. its train/ or test/). The tasks' answer check lives here too: `final_number`, which the eval's
GSM8K accuracy and the verifiable RL rewards (app/rl/rewards.py) both use. Pure: no ray.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from app.chat import check_messages
from app.config import UserError

GSM8K_PROMPT = "{question}\nSolve it step by step, then give the final number after ####."


def load_prompts(path: str, limit: int | None = None) -> tuple[list[dict], dict[str, int]]:
    """([{id, prompt (messages), answer (reference or None)}], records skipped by reason: malformed (not
    JSON), no_prompt (neither prompt nor question), not_a_conversation (a prompt that is not text or
    [{role, content}])); `id` defaults to the line number. Callers say how many were skipped and why."""
    if Path(path).is_dir():
        records = pq.read_table(path).to_pylist()
    elif Path(path).is_file():
        records = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    records.append(None)
    else:
        raise UserError(f"prompts {path} not found (python -m jobs.demo_data writes data/demo/raw/prompts.jsonl "
                        f"and arithmetic.jsonl; python -m jobs.data ... input.kind=prompt cleans them)")
    out, skipped = [], Counter()
    for n, record in enumerate(records[:limit]):
        reason, prompt = _prompt_of(record)
        if reason:
            skipped[reason] += 1
            continue
        out.append({"id": str(record.get("id", n)), "answer": record.get("answer") or record.get("reference"),
                    "prompt": prompt})
    return out, dict(sorted(skipped.items()))


def _prompt_of(record) -> tuple[str, list[dict] | None]:
    if not isinstance(record, dict):
        return "malformed", None
    prompt = record.get("prompt") or (GSM8K_PROMPT.format(question=record["question"])
                                      if isinstance(record.get("question"), str) else None)
    if not prompt:
        return "no_prompt", None
    try:
        return "", check_messages(prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}])
    except ValueError:
        return "not_a_conversation", None


def skipped_line(skipped: dict[str, int]) -> str:
    """ "3 skipped (malformed 2, no_prompt 1)", or "none skipped"."""
    return f"{sum(skipped.values())} skipped ({', '.join(f'{k} {n}' for k, n in skipped.items())})" if skipped \
        else "none skipped"


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """GSM8K's answer: the number after '####', else the last number in the text; commas dropped."""
    text = text or ""
    tail = text.split("####")[-1] if "####" in text else text
    found = NUMBER.findall(tail)
    if not found:
        return None
    value = found[0 if "####" in text else -1].replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value
