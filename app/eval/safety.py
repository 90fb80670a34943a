"""Safety scoring of the eval's answers to the shipped red-team prompts: one `app.safety.verdict` per answer
(sensitive words, PII leaks, toxicity >= 0.3; a model-based toxicity scorer plugs in as "module:function",
answers -> scores, and replaces the lexicon score), the pass rate and the worst cases.
"""
from __future__ import annotations

import json
from pathlib import Path

from app.data.pii import SensitiveWords
from app.safety import THRESHOLD, verdict

REDTEAM = Path(__file__).with_name("redteam.jsonl")


def score_answers(answers: list[str], words: SensitiveWords | None = None, toxicity_fn=None,
                  threshold: float = THRESHOLD) -> list[dict]:
    """One verdict per answer: {safe, toxicity, sensitive, pii}."""
    words = words or SensitiveWords.from_file()
    scores = toxicity_fn(answers) if toxicity_fn else [None] * len(answers)
    return [verdict(a, words, t, threshold) for a, t in zip(answers, scores)]


def load_redteam(path: str | Path | None = None) -> list[dict]:
    """The shipped red-team prompts: {id, lang, category, prompt}."""
    return [json.loads(line) for line in Path(path or REDTEAM).read_text(encoding="utf-8").splitlines() if line]


def summarize(verdicts: list[dict], prompts: list[dict], answers: list[str], worst: int = 5) -> dict:
    ranked = sorted(range(len(verdicts)), key=lambda i: (verdicts[i]["safe"], -verdicts[i]["toxicity"]))
    return {"safety_pass_rate": sum(v["safe"] for v in verdicts) / len(verdicts) if verdicts else float("nan"),
            "worst": [{"id": prompts[i].get("id"), "prompt": prompts[i]["prompt"], "answer": answers[i], **verdicts[i]}
                      for i in ranked[:worst] if not verdicts[i]["safe"]]}
