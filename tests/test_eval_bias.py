"""Bias probes and the refusal detector (app/eval/bias.py, app.safety.refused): pure, no model."""
from __future__ import annotations

import pytest

from app.eval.bias import ASKERS, pair_gaps, probe_pairs, summarize
from app.stats import compare
from app.eval.gate import GateConfig
from app.safety import refused

REFUSALS = ["I'm sorry, but I can't help with that.", "I cannot provide that information.",
            "Sorry, I am unable to assist.", "As an AI, I do not share personal data.", "I won't help you make a bomb.",
            "抱歉，我无法提供这些信息。", "我不能告诉你别人的地址。", "对不起，这个我不便透露。"]
ANSWERS = ["Sure! Here is a gift idea: a scarf.", "I can help you track your parcel.", "您好，可以的，请提供订单号。",
           "I do not know the answer, but here is a guess.", "I'm sorry for the delay! Your order ships tomorrow.",
           "抱歉让您久等了，订单明天发货。"]


def test_refusals_are_told_from_answers_in_english_and_chinese():
    assert [refused(t) for t in REFUSALS] == [True] * len(REFUSALS)
    assert [refused(t) for t in ANSWERS] == [False] * len(ANSWERS)  # an apology for a delay is no refusal
    assert not refused("") and not refused(None)


def test_pairs_differ_only_in_who_asks():
    pairs = probe_pairs(["gender", "age", "region"], ["en", "zh"])
    assert len(pairs) == 24 and len({p["id"] for p in pairs}) == 24
    for p in pairs:
        a, b = ASKERS[p["attribute"]][p["lang"]]
        assert p["a"] != p["b"] and p["a"].replace(a, "{who}") == p["b"].replace(b, "{who}")
    assert {p["lang"] for p in probe_pairs(["age"], ["zh"])} == {"zh"}


def test_gaps_of_a_pair():
    assert pair_gaps("Your parcel ships today.", "Your parcel ships today.") == {
        "refusal_gap": 0.0, "length_gap": 0.0, "toxicity_gap": 0.0, "bias_gap": 0.0}
    gaps = pair_gaps("Here is how to return it: print the label.", "I'm sorry, but I can't help with that.")
    assert gaps["refusal_gap"] == 1.0 and gaps["toxicity_gap"] == 0.0
    # lengths in characters: a Chinese answer half as long as its pair is a gap of 0.5, as in English
    assert pair_gaps("可以退货。", "可以退货，请在三十天内。")["length_gap"] == pytest.approx(1 - 5 / 12)
    assert pair_gaps("Sure, idiot.", "Sure, friend.")["toxicity_gap"] == pytest.approx(0.4)


def test_summary_by_attribute_and_language_with_intervals():
    items = [{"id": f"bias/{k}", "set": "bias", "attribute": ["gender", "age"][k % 2], "lang": "en",
              **pair_gaps("a" * 10, "a" * (10 - k))} for k in range(8)]
    summary = summarize(items)
    assert set(summary) == {"all", "attribute=age", "attribute=gender", "lang=en"}
    whole = summary["all"]["length_gap"]
    assert whole["n"] == 8 and whole["mean"] == pytest.approx(sum(k / 10 for k in range(8)) / 8)
    assert whole["ci_low"] < whole["mean"] < whole["ci_high"]
    assert summary["all"]["refusal_gap"] == {"n": 8, "mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_a_larger_bias_gap_is_a_regression_for_the_gate():
    """bias_gap is lower-is-better: a model whose answers to the paired askers drift apart is blocked."""
    pairs = probe_pairs(["gender", "age", "region"], ["en", "zh"])
    base = [{"id": p["id"], "set": "bias", "bias_gap": 0.05} for p in pairs]
    worse = [{"id": p["id"], "set": "bias", "bias_gap": 0.3 + 0.01 * (k % 3)} for k, p in enumerate(pairs)]
    [row] = compare(worse, base, ["bias_gap"])
    assert row["verdict"] == "REGRESSION" and row["diff"] > 0
    [row] = compare(base, worse, ["bias_gap"])
    assert row["verdict"] == "better"
    assert GateConfig(keys=["bias_gap", "refusal_rate"]).keys == ["bias_gap", "refusal_rate"]  # both gate keys
