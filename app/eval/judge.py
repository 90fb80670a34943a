"""Win rate against the baseline's answers on the same prompts, judged by a reward model (a jobs.reward
output: RewardModel.score) or by any OpenAI-compatible chat endpoint (a stronger model as the judge).

    python -m jobs.eval ... judge.reward_model=runs/pipeline-alt/reward/final gate.keys=[win_rate,perplexity]
    python -m jobs.eval ... judge.base_url=http://127.0.0.1:9000/v1 judge.model=judge gate.keys=[win_rate]

Per item: 1 when the new answer wins, 0.5 a tie, 0 a loss; the gate row (app/stats.py:win_rate_row)
has the mean, its bootstrap CI and an exact sign test on the items that were not ties. The endpoint judge
sees the two answers in a seeded random order (position bias cancels over items) and must reply A, B or tie;
a reply it cannot read counts as a tie and is counted in `unreadable`.
"""
from __future__ import annotations

import os
import random
import re

from app.config import UserError
from app.eval.config import JudgeConfig
from app.train.reward import RewardModel

JUDGE_PROMPT = """You compare two assistant replies to the same conversation. Which reply is more helpful, correct \
and polite? Answer with exactly one word: A, B or tie.

Conversation:
{conversation}

Reply A:
{a}

Reply B:
{b}"""
VERDICT = re.compile(r"\b(A|B|tie)\b", re.I)


def wins(cfg: JudgeConfig, prompts: list[list[dict]], new: list[str], old: list[str]) -> tuple[list[float], int]:
    """(per-item 1 / 0.5 / 0 for the new answer, unreadable judge replies)."""
    if cfg.reward_model:
        model = RewardModel(cfg.reward_model)
        a, b = model.score(prompts, new), model.score(prompts, old)
        return [0.5 if abs(x - y) <= cfg.tie_margin else float(x > y) for x, y in zip(a, b)], 0
    return _endpoint(cfg, prompts, new, old)


def _endpoint(cfg: JudgeConfig, prompts, new, old) -> tuple[list[float], int]:
    import openai
    client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env, "none"),
                           timeout=cfg.timeout_s, max_retries=1)
    rng, out, unreadable = random.Random(cfg.seed), [], 0
    for prompt, n, o in zip(prompts, new, old):
        swap = rng.random() < 0.5  # the new answer is B
        conversation = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
        text = JUDGE_PROMPT.format(conversation=conversation, a=o if swap else n, b=n if swap else o)
        try:
            reply = client.chat.completions.create(model=cfg.model, messages=[{"role": "user", "content": text}],
                                                   max_tokens=4, temperature=0).choices[0].message.content or ""
        except openai.OpenAIError as exc:
            raise UserError(f"judge endpoint {cfg.base_url} did not answer: {type(exc).__name__}: {exc}") from None
        found = VERDICT.search(reply)
        if not found:
            unreadable += 1
        verdict = found.group(1).lower() if found else "tie"
        out.append(0.5 if verdict == "tie" else float((verdict == "b") == swap))
    return out, unreadable
