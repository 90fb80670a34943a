"""Text metrics, pure (no ray): BLEU-4 (sacrebleu), ROUGE-1/2/L (rouge-score with a CJK-aware tokenizer),
SQuAD-style exact match and token F1 (also for Chinese), accuracy, GSM8K final answers, perplexity.

Chinese is measured per character: sacrebleu's "zh" tokenizer for BLEU when a reference holds CJK, and
app/data/text.py's tokens (Latin words, single CJK characters) for ROUGE, EM and F1, so a Chinese answer
is not scored 0 because a tokenizer dropped everything non-ASCII (rouge-score's default does).
An empty prediction scores 0; predictions and references of different lengths are a ValueError.
"""
from __future__ import annotations

import math
import re
from collections import Counter

from app.data.text import CJK_CHAR, tokens

ARTICLES = {"a", "an", "the"}


def _check(preds: list[str], refs: list[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not refs:
        raise ValueError("no references to score against")


def normalize_answer(text: str) -> list[str]:
    """SQuAD normalization as tokens: lower case, no punctuation, no English articles; CJK per character."""
    return [t for t in tokens(text or "") if t not in ARTICLES]


def exact_match(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize_answer(pred), normalize_answer(ref)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 (0-100), one reference per prediction."""
    import sacrebleu
    _check(preds, refs)
    tokenize = "zh" if any(CJK_CHAR.search(r) for r in refs) else "13a"
    return float(sacrebleu.corpus_bleu([p or "" for p in preds], [list(refs)], tokenize=tokenize).score)


class _Tokenizer:
    """rouge-score's tokenizer interface over our tokens."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text or "")


def rouge(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (0-1)."""
    from rouge_score import rouge_scorer
    _check(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Tokenizer())
    totals = Counter()
    for p, r in zip(preds, refs):
        for name, score in scorer.score(r, p or "").items():
            totals[name] += score.fmeasure
    return {name: totals[name] / len(refs) for name in ("rouge1", "rouge2", "rougeL")}


def accuracy(preds: list, labels: list) -> float:
    _check(preds, labels)
    return sum(p == l for p, l in zip(preds, labels)) / len(labels)


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


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(total_nll / n_tokens) if n_tokens else float("nan")


def text_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Every reference-based score at once."""
    _check(preds, refs)
    scores = {"bleu": bleu(preds, refs), **rouge(preds, refs)}
    scores["exact_match"] = sum(map(exact_match, preds, refs)) / len(refs)
    scores["f1"] = sum(map(token_f1, preds, refs)) / len(refs)
    return scores
