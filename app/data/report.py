"""The data stage's accounting: counts after each stage, drops per reason, class mix per split."""
from __future__ import annotations

from collections import Counter

STAGES = [("parse", {"malformed", "undecodable"}), ("normalize", {"empty"}), ("pii", {"pii"}),
          ("sensitive", {"sensitive"}),
          ("filters", {"too_short", "too_long", "symbols", "digits", "repetition", "language"}),
          ("quality_model", {"low_quality"}), ("exact_dedup", {"exact_dup"}), ("near_dedup", {"near_dup"}),
          ("contamination", {"contaminated"}), ("class_cap", {"class_cap"})]


def manifest_counts(table, splits: dict, decisions: dict, renamed_ids: int) -> dict:
    reasons = Counter(r for r in table.column("reason").to_pylist() if r)
    reasons.update(reason for reason, _ in decisions.values())
    after, left = {"input": table.num_rows}, table.num_rows
    for stage, codes in STAGES:
        left -= sum(reasons[c] for c in codes)
        after[stage] = left
    return {"input": table.num_rows, "renamed_duplicate_ids": renamed_ids, "after_stage": after,
            "dropped": dict(sorted(reasons.items())),
            "splits": {s: t.num_rows for s, t in splits.items()},
            "intents": {s: dict(sorted(Counter(t.column("intent").to_pylist()).items())) for s, t in splits.items()}}


def print_summary(counts: dict, dedup_stats: dict, out) -> None:
    lines = [f"{'stage':<15}{'records':>9}{'dropped':>9}"]
    prev = counts["input"]
    for stage, n in counts["after_stage"].items():
        lines.append(f"{stage:<15}{n:>9}{prev - n if stage != 'input' else 0:>9}")
        prev = n
    lines.append("drops: " + ", ".join(f"{k}={v}" for k, v in counts["dropped"].items()))
    lines.append("dedup: " + ", ".join(f"{k}={v}" for k, v in dedup_stats.items()))
    for split, n in counts["splits"].items():
        mix = counts["intents"][split]
        top = max(mix.values(), default=0)
        lines.append(f"{split:<6}{n:>7}  largest class {top / n if n else 0:.0%}  {mix}")
    if aug := counts.get("augmented"):
        lines.append(f"augmented: {aug['made']} copies of train records made, {aug['kept']} joined train, dropped: "
                     + (", ".join(f"{k}={v}" for k, v in aug["dropped"].items()) or "none"))
    kept = sum(counts["splits"].values()) - (aug["kept"] if aug else 0)
    lines.append(f"data: {kept} records kept of {counts['input']}"
                 + (f" (+{aug['kept']} augmented copies in train)" if aug else "") + f" -> {out}")
    print("\n".join(lines))
