"""The pluggable toxicity scorers of app/safety.py on the hand-labelled EN/ZH replies (benchmarks/safety_scorer.py
reports the same figures with their intervals): pinned, so a change of lexicon or classifier shows here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import ConfigError, SafetySection
from app.safety import SafetyCheck, classifier_scores, lexicon_scores, load_scorer

ROWS = [json.loads(line) for line in
        (Path(__file__).parent.parent / "app" / "eval" / "toxicity_labelled.jsonl").read_text().splitlines()]


def counts(scorer, lang: str, split: str, threshold: float = 0.3) -> tuple[int, int, int]:
    """(true positives, false positives, positives) of `scorer` on one language's split."""
    rows = [r for r in ROWS if r["lang"] == lang and r["split"] == split]
    flagged = [s >= threshold for s in scorer([r["text"] for r in rows])]
    return (sum(f and r["toxic"] for f, r in zip(flagged, rows)), sum(f and not r["toxic"] for f, r in zip(flagged, rows)),
            sum(r["toxic"] for r in rows))


def test_labelled_set_is_balanced_en_and_zh():
    assert len(ROWS) == 260 and {(r["lang"], r["split"]) for r in ROWS} == {("en", "dev"), ("zh", "dev"), ("zh", "heldout")}
    assert sum(r["toxic"] for r in ROWS) == 130


def test_classifier_finds_english_toxicity_the_lexicon_misses_without_false_alarms():
    assert counts(lexicon_scores, "en", "dev") == (13, 0, 50)      # recall 0.26
    assert counts(classifier_scores, "en", "dev") == (41, 0, 50)   # recall 0.82, precision 1.0
    # Chinese: the classifier adds nothing (English bag-of-words); the lexicon on replies written after it
    assert counts(classifier_scores, "zh", "heldout") == counts(lexicon_scores, "zh", "heldout") == (14, 0, 30)


def test_scorer_choice_and_bad_plugins():
    assert load_scorer("auto") is classifier_scores  # alt-profanity-check is a dependency
    assert load_scorer("lexicon") is lexicon_scores
    with pytest.raises(ConfigError, match="cannot load 'no.such:scorer'"):
        SafetyCheck({"scorer": "no.such:scorer"}).scores(["hi"])
    with pytest.raises(ValueError):
        SafetySection(threshold=0)
    texts = ["You are an idiot, shut up.", "kill the process and restart", "Thanks!", "call 13812345678"]
    assert SafetyCheck({"threshold": 0.3}).unsafe(texts) == [True, False, False, True]  # PII: unsafe at any threshold
    assert SafetyCheck({"threshold": 0.2}).unsafe(texts) == [True, True, False, True]   # "kill" scores 0.27
