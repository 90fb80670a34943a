"""Verifiable rewards, named in RL configs (`reward_function: app.rl.rewards:gsm8k`, or several with
weights: `reward_function: {app.rl.rewards:exact_answer: 1.0, app.rl.rewards:answer_format: 0.1}`).

A reward function takes (prompts, responses) or (prompts, responses, references) - the prompt records'
`answer` fields - and returns one float per response. No ray import.
"""
from __future__ import annotations

import inspect
import re

from app.tasks import final_number

ANSWER_LINE = re.compile(r"####\s*-?\d[\d,]*(?:\.\d+)?\s*$")


def _equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return a == b


def exact_answer(prompts, responses, references) -> list[float]:
    """1.0 when the response's final number (after '####', else its last number) equals the reference's."""
    return [float(_equal(final_number(r), final_number(ref))) for r, ref in zip(responses, references)]


def answer_format(prompts, responses, references=None) -> list[float]:
    """1.0 when the response ends with the final-answer line '#### <number>'."""
    return [float(bool(ANSWER_LINE.search(r.strip()))) for r in responses]


def gsm8k(prompts, responses, references) -> list[float]:
    """exact answer + 0.1 for the answer format: the GRPO demo's reward."""
    return [e + 0.1 * f for e, f in zip(exact_answer(prompts, responses, references),
                                        answer_format(prompts, responses))]


def call(function, prompts, responses, references=None) -> list[float]:
    """Call a reward function with the references when its signature takes them."""
    if len(inspect.signature(function).parameters) >= 3:
        return [float(v) for v in function(prompts, responses, references)]
    return [float(v) for v in function(prompts, responses)]
