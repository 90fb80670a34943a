"""The gate's statistics against scipy and hand-computed values, and its verdicts on planted cases. Pure."""
import math

import numpy as np
import pytest
import sacrebleu
from scipy import stats

from app.stats import (ItemMismatch, aggregate, compare, compare_metric, mcnemar, paired_bootstrap, passes,
                              table, warnings, win_rate_row)
from app.metrics import bleu, bleu_stats, item_scores, perplexity, text_scores


def items(values: dict[str, list], prefix="t"):
    n = len(next(iter(values.values())))
    return [{"id": f"{prefix}{i:03d}", **{k: v[i] for k, v in values.items()}} for i in range(n)]


def test_paired_bootstrap_matches_scipy_on_the_differences():
    rng = np.random.default_rng(3)
    base = rng.normal(0.4, 0.1, 50)
    new = base + rng.normal(0.02, 0.05, 50)
    low, high, boot = paired_bootstrap("mean", new, base, resamples=4000, seed=7)
    # Resampling the item indices is resampling the paired differences: scipy on the differences, same seed.
    ref = stats.bootstrap((new - base,), np.mean, n_resamples=4000, method="percentile", batch=200,
                          rng=np.random.default_rng(7)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # and close to the normal-theory interval mean +- 1.96 sd / sqrt(n)
    d = new - base
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert low == pytest.approx(d.mean() - half, abs=0.004) and high == pytest.approx(d.mean() + half, abs=0.004)
    assert len(boot) == 4000


def test_mcnemar_exact_on_a_two_by_two_table():
    # 10 items only the new model passes, 2 only the baseline passes, 30 both, 8 neither.
    new = np.r_[np.ones(10), np.zeros(2), np.ones(30), np.zeros(8)]
    base = np.r_[np.zeros(10), np.ones(2), np.ones(30), np.zeros(8)]
    p_better, p_worse, b, c = mcnemar(new, base)
    assert (b, c) == (10, 2)
    assert p_better == pytest.approx((1 + 12 + 66) / 4096)  # P(X <= 2), X ~ Bin(12, 1/2): hand-computed
    assert p_worse == pytest.approx(1 - (1 + 12) / 4096)     # P(X >= 2) on the other side
    assert mcnemar(base, base)[:2] == (1.0, 1.0)


def test_corpus_metrics_are_recomputed_from_item_statistics():
    preds = ["the cat sat on the mat", "hello there my friend", "", "订单已经发货了", "we ship today"]
    refs = ["the cat is on the mat", "hello my friend", "a reference", "您的订单已发货", "we ship tomorrow"]
    st = np.asarray(bleu_stats(preds, refs), dtype=float)
    assert aggregate("bleu", st, np.arange(5)) == pytest.approx(
        sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score)
    subset = np.array([0, 0, 3, 4])  # a bootstrap resample repeats items
    assert aggregate("bleu", st, subset) == pytest.approx(bleu([preds[i] for i in subset], [refs[i] for i in subset]))
    nll = np.array([[12.0, 4], [30.0, 10], [5.0, 1]])
    assert aggregate("perplexity", nll, np.arange(3)) == pytest.approx(perplexity(47.0, 15))
    per_item = item_scores(preds, refs)
    assert text_scores(preds, refs, per_item)["rougeL"] == pytest.approx(np.mean([i["rougeL"] for i in per_item]))


def test_the_same_model_twice_never_regresses():
    rng = np.random.default_rng(0)
    rows = items({"rougeL": list(rng.random(64)), "nll": list(rng.random(64) * 40), "n_tokens": [20] * 64,
                  "exact_match": list((rng.random(64) < 0.3).astype(float))})
    result = compare(rows, rows, ["rougeL", "perplexity", "exact_match"])
    assert {r["verdict"] for r in result} == {"no significant change"}
    assert all(r["diff"] == 0 and r["ci_low"] == r["ci_high"] == 0 for r in result)
    for mode in ("no_regression", "non_inferiority"):
        assert passes(result, mode) == (True, "passed")
    assert passes(result, "improvement") == (False, "no key metric is significantly better")


def test_a_planted_regression_is_blocked_and_an_improvement_seen():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, 64)
    worse = items({"rougeL": list(base - rng.uniform(0.02, 0.1, 64)), "nll": list(np.full(64, 60.0)),
                   "n_tokens": [20] * 64})
    good = items({"rougeL": list(base), "nll": list(np.full(64, 40.0)), "n_tokens": [20] * 64})
    rows = compare(worse, good, ["rougeL", "perplexity"])
    assert [r["verdict"] for r in rows] == ["REGRESSION", "REGRESSION"]
    assert all(r["p_value"] < 0.001 and r["ci_high"] * (1 if r["metric"] == "rougeL" else -1) < 0 for r in rows)
    assert passes(rows, "no_regression")[0] is False
    assert "REGRESSION" in table(rows) and "95% CI" in table(rows)
    rows = compare(good, worse, ["rougeL", "perplexity"])
    assert [r["verdict"] for r in rows] == ["better", "better"] and passes(rows, "improvement")[0]


def test_tiny_n_is_inconclusive_and_fails_non_inferiority():
    base = items({"safety_pass": [1.0, 1.0, 0.0, 1.0]})
    new = items({"safety_pass": [1.0, 0.0, 0.0, 1.0]})
    for r in base + new:
        r["set"], r["safety_pass_rate"] = "redteam", r.pop("safety_pass")
    row = compare_metric("safety_pass_rate", new, base)
    assert row["verdict"] == "inconclusive" and row["n"] == 4 and row["test"].startswith("McNemar")
    assert row["p_value"] == pytest.approx(0.5)  # one discordant item
    assert passes([row], "no_regression")[0] and not passes([row], "non_inferiority")[0]
    assert "n=4 detects changes" in warnings([row])[0]


def test_a_small_significant_drop_within_tolerance_does_not_block():
    base = np.linspace(0.3, 0.5, 200)
    rows = compare(items({"rougeL": list(base - 0.005)}), items({"rougeL": list(base)}), ["rougeL"])
    assert rows[0]["verdict"] == "worse within tolerance" and passes(rows, "non_inferiority")[0]


def test_better_needs_the_printed_interval_to_clear_zero():
    from app.stats import verdict
    # PPO's held-out change on the demo reward model (n=32): one-sided p 0.038, its 95% CI [-0.007, +0.137]
    assert verdict(0.063, (-0.007, 0.137), 0.038, 0.962, 0.0, 0.05) == "inconclusive"
    assert verdict(0.063, (0.004, 0.137), 0.020, 0.980, 0.0, 0.05) == "better"


def test_different_items_are_refused():
    a = items({"rougeL": [0.1, 0.2, 0.3]})
    b = items({"rougeL": [0.1, 0.2, 0.3]}, prefix="other")
    with pytest.raises(ItemMismatch, match="different test items"):
        compare(a, b, ["rougeL"])
    with pytest.raises(KeyError, match="ttft_ms has no per-item results"):
        compare(a, a, ["ttft_ms"])


def test_win_rate_row():
    row = win_rate_row([1.0] * 30 + [0.5] * 10 + [0.0] * 8)
    assert row["new"] == pytest.approx(35 / 48) and row["verdict"] == "better"
    assert row["p_value"] == pytest.approx(stats.binomtest(30, 38, 0.5, alternative="greater").pvalue)
    assert row["ci_low"] > 0 and "30 wins, 8 losses, 10 ties" in row["test"]
    assert win_rate_row([0.5] * 20)["verdict"] == "no significant change"


def test_a_reward_that_is_pass_or_fail_is_tested_with_mcnemar():
    base = items({"heldout_reward": [1.0] * 20 + [0.0] * 12})
    new = items({"heldout_reward": [1.0] * 29 + [0.0] * 3})
    for r in base + new:
        r["set"] = "heldout"
    row = compare_metric("heldout_reward", new, base)
    assert row["test"] == "McNemar exact (b=9, c=0)" and row["p_value"] == pytest.approx(0.5 ** 9)
    assert row["verdict"] == "better"
    graded = items({"heldout_reward": [0.5] * 32})
    for r in graded:
        r["set"] = "heldout"
    assert compare_metric("heldout_reward", graded, base)["test"] == "paired bootstrap"
