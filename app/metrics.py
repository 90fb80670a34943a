"""Text metrics, pure (no ray): BLEU-4 (sacrebleu), ROUGE-1/2/L (rouge-score with a CJK-aware tokenizer),
SQuAD-style exact match and token F1 (also for Chinese), accuracy, GSM8K final answers, perplexity.

Chinese is measured per character: sacrebleu's "zh" tokenizer for BLEU when a reference holds CJK, and
app/text.py's tokens (Latin words, single CJK characters) for ROUGE, EM and F1, so a Chinese answer
is not scored 0 because a tokenizer dropped everything non-ASCII (rouge-score's default does).
An empty prediction scores 0; predictions and references of different lengths are a ValueError.
"""
from __future__ import annotations

import math
from collections import Counter

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from app.text import CJK_CHAR, tokens

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


def _bleu_scorer(refs: list[str]):
    return BLEU(tokenize="zh" if any(CJK_CHAR.search(r) for r in refs) else "13a", effective_order=True)


def bleu_stats(preds: list[str], refs: list[str]) -> list[list[int]]:
    """Per item BLEU's sufficient statistics: [sys_len, ref_len, 4 n-gram matches, 4 n-gram totals]. Summed
    over any subset of items they give that subset's corpus BLEU (bleu_from_stats), which is how the paired
    bootstrap recomputes BLEU per resample. One tokenizer for the whole corpus ("zh" if a reference holds CJK)."""
    _check(preds, refs)
    scorer = _bleu_scorer(refs)
    out = []
    for p, r in zip(preds, refs):
        s = scorer.sentence_score(p or "", [r])
        out.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return out


def bleu_from_stats(stats) -> float:
    """Corpus BLEU-4 (0-100) from summed bleu_stats rows: sacrebleu's own formula (exp smoothing, as corpus_bleu)."""
    s = [int(x) for x in stats]
    return float(BLEU.compute_bleu(s[2:6], s[6:10], s[0], s[1], smooth_method="exp").score)


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 (0-100), one reference per prediction (= sacrebleu.corpus_bleu)."""
    return bleu_from_stats([sum(col) for col in zip(*bleu_stats(preds, refs))])


class _Tokenizer:
    """rouge-score's tokenizer interface over our tokens."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text or "")


def rouge(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (0-1)."""
    items = item_scores(preds, refs)
    return {k: sum(i[k] for i in items) / len(items) for k in ("rouge1", "rouge2", "rougeL")}


def accuracy(preds: list, labels: list) -> float:
    _check(preds, labels)
    return sum(p == l for p, l in zip(preds, labels)) / len(labels)


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(total_nll / n_tokens) if n_tokens else float("nan")


def item_scores(preds: list[str], refs: list[str]) -> list[dict]:
    """Per item: BLEU statistics and sentence BLEU, ROUGE-1/2/L, exact match, token F1 (what the gate pairs)."""
    stats = bleu_stats(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Tokenizer())
    out = []
    for p, r, st in zip(preds, refs, stats):
        rouges = scorer.score(r, p or "")
        out.append({"bleu_stats": st, "bleu": round(bleu_from_stats(st), 4),
                    **{k: rouges[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")},
                    "exact_match": exact_match(p, r), "f1": token_f1(p, r)})
    return out


def text_scores(preds: list[str], refs: list[str], items: list[dict] | None = None) -> dict[str, float]:
    """Every reference-based corpus score at once (from item_scores, computed here unless given)."""
    items = items if items is not None else item_scores(preds, refs)
    n = len(items)
    scores = {"bleu": bleu_from_stats([sum(col) for col in zip(*(i["bleu_stats"] for i in items))])}
    for key in ("rouge1", "rouge2", "rougeL", "exact_match", "f1"):
        scores[key] = sum(i[key] for i in items) / n
    return scores
