"""The toxicity scorers of app/safety.py on hand-labelled replies, EN and ZH: precision and recall at seed
000's threshold (unsafe at >= 0.3), each with its 95% Wilson interval and n, the lexicon (the baseline: what
ran before a classifier plugged in) beside the classifier, and SnowNLP's Chinese sentiment model (1 -
positive probability) where it is installed, the one trained Chinese text model a package ships with weights.
Prints one JSON line.

    .venv/bin/python benchmarks/safety_scorer.py

The set (app/eval/toxicity_labelled.jsonl, 260 replies) was written by this team: shop-assistant replies,
toxic ones (insults, threats, contempt) and clean ones with hard negatives (apologies, complaints, "kill the
process", 垃圾桶, 猪肉脯). Split `dev` (EN 100, ZH 100) was written first and measured the lexicon as it then
was; the Chinese terms added to the lexicon after that measurement were chosen knowing its misses, so the
Chinese figures that count are on split `heldout` (ZH 60), written after the lexicon was fixed. Beside it,
each scorer's false-positive rate on clean in-domain text: the final replies of the demo's generated dialogs
(app/demo/generate.py, seed 0: 4,001 polite shop answers).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SET = Path(__file__).resolve().parent.parent / "app" / "eval" / "toxicity_labelled.jsonl"


def wilson(k: int, n: int) -> list[float | None]:
    from scipy.stats import binomtest
    if not n:
        return [None, None]
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return [round(ci.low, 3), round(ci.high, 3)]


def precision_recall(scores: list[float], labels: list[int], threshold: float) -> dict:
    flagged = [s >= threshold for s in scores]
    tp = sum(f and y for f, y in zip(flagged, labels))
    fp = sum(f and not y for f, y in zip(flagged, labels))
    positives = sum(labels)
    return {"n": len(labels), "positives": positives, "tp": tp, "fp": fp,
            "precision": round(tp / (tp + fp), 3) if tp + fp else None, "precision_ci": wilson(tp, tp + fp),
            "recall": round(tp / positives, 3) if positives else None, "recall_ci": wilson(tp, positives)}


def demo_replies() -> list[str]:
    from app.demo.generate import generate
    with tempfile.TemporaryDirectory() as d:
        generate(d)
        lines = (Path(d) / "dialogs.jsonl").read_text(encoding="utf-8").splitlines()
    replies = []
    for line in lines:
        try:
            replies.append(json.loads(line)["messages"][-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):  # the generator's deliberately malformed lines
            pass
    return replies


def snownlp_scores(texts: list[str]) -> list[float] | None:
    try:
        from snownlp import SnowNLP
    except ImportError:
        return None
    return [1 - SnowNLP(t).sentiments for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args()
    from app.safety import load_scorer
    rows = [json.loads(line) for line in SET.read_text().splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    clean = demo_replies()
    out = {"benchmark": "safety_scorer", "threshold": args.threshold, "n": len(rows), "n_demo_replies": len(clean)}
    scorers = {"lexicon": load_scorer("lexicon"), "classifier": load_scorer("classifier"),
               "snownlp_sentiment": snownlp_scores}
    for name, fn in scorers.items():
        t0 = time.perf_counter()
        scores = fn(texts)
        if scores is None:
            out[name] = "not installed"
            continue
        out[name] = {"ms_per_text": round(1000 * (time.perf_counter() - t0) / len(texts), 3)}
        for lang, split in (("en", "dev"), ("zh", "dev"), ("zh", "heldout")):
            idx = [i for i, r in enumerate(rows) if r["lang"] == lang and r["split"] == split]
            out[name][f"{lang}_{split}"] = precision_recall([scores[i] for i in idx], [rows[i]["toxic"] for i in idx],
                                                            args.threshold)
        flagged = sum(s >= args.threshold for s in fn(clean))
        out[name]["demo_false_positive_rate"] = {"flagged": flagged, "n": len(clean),
                                                 "rate": round(flagged / len(clean), 4), "ci": wilson(flagged, len(clean))}
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
