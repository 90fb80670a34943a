"""Paired comparison of two evaluations on the same items: the statistics behind the release gate. Pure
(numpy, scipy, sacrebleu; no ray).

    rows = compare(new_items, baseline_items, keys=["bleu", "perplexity"], tolerance=0.05)

For each key metric: diff = new - baseline; a seeded paired-bootstrap CI (items resampled together, with
scipy.stats.bootstrap; BLEU and perplexity recomputed from per-item sufficient statistics in every
resample); a one-sided p-value in the direction of the observed change (bootstrap, or for pass/fail
metrics the exact McNemar test, i.e. a binomial test on the discordant items); the minimum detectable
effect at that n (one-sided alpha, 80% power); and a verdict, with margin = tolerance x |baseline|:

    REGRESSION             worse, significant at alpha, and by more than the margin
    better                 better, significant at alpha
    inconclusive           the CI's worse end lies beyond the margin: n too small to rule a drop out
    worse within tolerance a significant drop no larger than the margin
    no significant change  the CI rules out a drop beyond the margin

Lower-is-better metrics (perplexity) count a rise as the drop. Why not lm-evaluation-harness's stderr:
it compares two runs unpaired; pairing on items is what makes n=64 informative (DESIGN.md section 4).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from app.metrics import bleu_from_stats

LOWER_IS_BETTER = {"perplexity", "ttft_ms", "latency_ms", "peak_memory_gb", "bias_gap"}
# metric -> (item set, kind): how per-item results aggregate to the corpus figure
ITEM_METRICS = {
    "bleu": ("test", "bleu"), "perplexity": ("test", "perplexity"),
    "rouge1": ("test", "mean"), "rouge2": ("test", "mean"), "rougeL": ("test", "mean"), "f1": ("test", "mean"),
    "exact_match": ("test", "binary"), "accuracy": ("test", "binary"),
    "safety_pass_rate": ("redteam", "binary"), "heldout_reward": ("heldout", "mean"),
    "identity_rate": ("identity", "binary"), "refusal_rate": ("redteam", "binary"), "bias_gap": ("bias", "mean"),
}


class ItemMismatch(ValueError):
    """The two evaluations did not score the same items: a paired comparison is meaningless."""


def item_values(items: list[dict], metric: str) -> tuple[list[str], np.ndarray]:
    """(ids, per-item values) of one metric; values are (n,) or (n, k) for BLEU stats and (nll, tokens)."""
    if metric not in ITEM_METRICS:
        raise KeyError(f"{metric} has no per-item results (per-item metrics: {', '.join(ITEM_METRICS)})")
    subset, kind = ITEM_METRICS[metric]
    rows = sorted((r for r in items if r.get("set", "test") == subset and _has(r, metric, kind)),
                  key=lambda r: r["id"])
    if kind == "bleu":
        values = [r["bleu_stats"] for r in rows]
    elif kind == "perplexity":
        values = [(r["nll"], r["n_tokens"]) for r in rows]
    else:
        values = [float(r[metric]) for r in rows]
    return [r["id"] for r in rows], np.asarray(values, dtype=np.float64)


def _has(row: dict, metric: str, kind: str) -> bool:
    return {"bleu": "bleu_stats", "perplexity": "nll"}.get(kind, metric) in row


def aggregate(kind: str, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The corpus figure of the items at `idx` (shape (..., n)): one number per row of idx."""
    v = values[idx]
    if kind == "bleu":
        sums = v.sum(axis=-2)
        return np.apply_along_axis(bleu_from_stats, -1, sums) if sums.ndim > 1 else np.float64(bleu_from_stats(sums))
    if kind == "perplexity":
        return np.exp(v[..., 0].sum(-1) / np.maximum(v[..., 1].sum(-1), 1))
    return v.mean(-1)


def mean_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The seeded 95% percentile bootstrap CI of one sample's mean (unpaired: a held-out check, bias gaps);
    a constant sample's is the value itself."""
    if len(set(values.tolist())) == 1:
        return float(values[0]), float(values[0])
    ci = stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def sign_test(b: int, c: int) -> tuple[float, float]:
    """Exact one-sided binomial tests on b items going one way and c the other: (p of b > c, p of c > b)."""
    if b + c == 0:
        return 1.0, 1.0
    return (float(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue),
            float(stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue))


def mcnemar(new: np.ndarray, base: np.ndarray) -> tuple[float, float, int, int]:
    """Exact McNemar on paired pass/fail outcomes: (p that new is better, p that it is worse, b, c), one-sided,
    where b = items only the new model passes and c = items only the baseline passes."""
    b, c = int(((new == 1) & (base == 0)).sum()), int(((new == 0) & (base == 1)).sum())
    return (*sign_test(b, c), b, c)


def paired_bootstrap(kind: str, new: np.ndarray, base: np.ndarray, resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float, np.ndarray]:
    """Percentile CI of aggregate(new) - aggregate(base) over resampled items, and the resampled differences.
    Items are resampled together (paired) by resampling their indices."""
    n = len(new)
    diff = lambda idx, axis=-1: aggregate(kind, new, idx) - aggregate(kind, base, idx)  # noqa: E731
    res = stats.bootstrap((np.arange(n),), diff, n_resamples=resamples, vectorized=True, batch=200,
                          method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return float(low), float(high), np.asarray(res.bootstrap_distribution)


def verdict(good: float, good_ci: tuple[float, float], p_better: float, p_worse: float, margin: float,
            alpha: float) -> str:
    """good: the change oriented so that positive is better; good_ci its CI; margin >= 0. "better" needs the
    one-sided test and the (two-sided) CI to agree: a printed CI that reaches zero is not a claim of better;
    a regression blocks on the one-sided test alone (a release gate errs towards not shipping)."""
    if good < 0 and p_worse < alpha and -good > margin:
        return "REGRESSION"
    if good > 0 and p_better < alpha and good_ci[0] > 0:
        return "better"
    if good_ci[0] < -margin:
        return "inconclusive"
    return "worse within tolerance" if good < 0 and p_worse < alpha else "no significant change"


def compare_metric(metric: str, new_items: list[dict], base_items: list[dict], tolerance: float = 0.05,
                   alpha: float = 0.05, resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                   power: float = 0.8) -> dict:
    """One gate row: metric, n, baseline, new, diff, ci_low, ci_high, p_value, test, mde, margin, verdict."""
    new_ids, new = item_values(new_items, metric)
    base_ids, base = item_values(base_items, metric)
    subset, kind = ITEM_METRICS[metric]
    if new_ids != base_ids:
        missing, extra = sorted(set(base_ids) - set(new_ids)), sorted(set(new_ids) - set(base_ids))
        raise ItemMismatch(f"{metric}: the two evaluations scored different {subset} items ({len(new_ids)} vs "
                           f"{len(base_ids)}; only in the baseline: {missing[:3]}, only in the new: {extra[:3]})")
    if not new_ids:
        raise ItemMismatch(f"{metric}: no per-item results on either side")
    all_idx = np.arange(len(new_ids))
    new_value, base_value = float(aggregate(kind, new, all_idx)), float(aggregate(kind, base, all_idx))
    low, high, boot = paired_bootstrap(kind, new, base, resamples, seed, confidence)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    good, good_boot = sign * (new_value - base_value), sign * boot
    good_ci = (min(sign * low, sign * high), max(sign * low, sign * high))
    if kind == "binary" or (kind == "mean" and np.isin(np.r_[new, base], (0.0, 1.0)).all()):  # pass/fail items
        p_better, p_worse, b, c = mcnemar(new, base)
        test = f"McNemar exact (b={b}, c={c})"
    else:
        p_better = (1 + int((good_boot <= 0).sum())) / (len(good_boot) + 1)
        p_worse = (1 + int((good_boot >= 0).sum())) / (len(good_boot) + 1)
        test = "paired bootstrap"
    margin = tolerance * abs(base_value)
    se = float(np.std(boot, ddof=1))
    mde = (stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) * se
    return {"metric": metric, "n": len(new_ids), "baseline": base_value, "new": new_value,
            "diff": new_value - base_value, "ci_low": low, "ci_high": high,
            "p_value": p_better if good >= 0 else p_worse, "test": test, "mde": mde, "margin": margin,
            "verdict": verdict(good, good_ci, p_better, p_worse, margin, alpha)}


def win_rate_row(wins: list[float], alpha: float = 0.05, resamples: int = 2000, seed: int = 0,
                 confidence: float = 0.95, tolerance: float = 0.05, power: float = 0.8) -> dict:
    """A judge's verdicts on the same prompts (1 win, 0.5 tie, 0 loss for the new model) as a gate row:
    the baseline is 0.5 (no preference), the CI is the bootstrap CI of the mean, the test an exact sign
    test on the items that were not ties."""
    w = np.asarray(wins, dtype=np.float64)
    if not len(w):
        raise ItemMismatch("win_rate: no judged items")
    res = stats.bootstrap((w,), np.mean, n_resamples=resamples, method="percentile", confidence_level=confidence,
                          rng=np.random.default_rng(seed))
    low, high = (float(x) - 0.5 for x in res.confidence_interval)
    better, worse = int((w == 1).sum()), int((w == 0).sum())
    p_better, p_worse = sign_test(better, worse)
    se = float(np.std(res.bootstrap_distribution, ddof=1))
    mde = (stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) * se
    good = float(w.mean()) - 0.5
    margin = tolerance * 0.5
    return {"metric": "win_rate", "n": len(w), "baseline": 0.5, "new": float(w.mean()), "diff": good,
            "ci_low": low, "ci_high": high, "p_value": p_better if good >= 0 else p_worse,
            "test": f"sign test ({better} wins, {worse} losses, {len(w) - better - worse} ties)", "mde": mde,
            "margin": margin, "verdict": verdict(good, (low, high), p_better, p_worse, margin, alpha)}


def compare(new_items: list[dict], base_items: list[dict], keys: list[str], **options) -> list[dict]:
    """One row per key metric (see compare_metric for the options)."""
    return [compare_metric(key, new_items, base_items, **options) for key in keys]


def passes(rows: list[dict], mode: str) -> tuple[bool, str]:
    """(passed, why). no_regression: no key metric is a REGRESSION. improvement: that, and at least one is
    better. non_inferiority: every key metric's CI rules out a drop beyond the margin (for INT8 or other
    compressed variants of a promoted model: they need not be better, only shown not to be worse)."""
    regressions = [r["metric"] for r in rows if r["verdict"] == "REGRESSION"]
    if regressions:
        return False, f"significant regression beyond tolerance: {', '.join(regressions)}"
    if mode == "improvement" and not any(r["verdict"] == "better" for r in rows):
        return False, "no key metric is significantly better"
    if mode == "non_inferiority":
        open_ = [r["metric"] for r in rows if r["verdict"] == "inconclusive"]
        if open_:
            return False, f"non-inferiority not shown (the CI reaches past the margin): {', '.join(open_)}"
    return True, "passed"


def warnings(rows: list[dict]) -> list[str]:
    """Metrics whose n cannot detect a drop as large as the tolerance (MDE > margin)."""
    return [f"{r['metric']}: n={r['n']} detects changes of {_pct(r['mde'], r['baseline'])} or more; the "
            f"tolerance is {_pct(r['margin'], r['baseline'])}" for r in rows if r["mde"] > r["margin"] > 0]


def _pct(x: float, base: float) -> str:
    return f"{x / abs(base):.1%}" if base else f"{x:.4g}"


def table(rows: list[dict]) -> str:
    """The gate's markdown table."""
    lines = ["| metric | n | baseline | new | diff | 95% CI | p | MDE | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {r['n']} | {_g(r['baseline'])} | {_g(r['new'])} | {r['diff']:+.4g} | "
                     f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}] | {r['p_value']:.3g} | {_g(r['mde'])} | "
                     f"{r['verdict']} |")
    return "\n".join(lines)


def _g(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"
