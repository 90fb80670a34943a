"""Human evaluation sheets: export sampled (prompt, answer) rows with empty columns
for relevance, fluency and domain expertise (0-5) and safety (pass/fail); import the filled sheets (one
per rater) and aggregate: mean with a 95% confidence interval per criterion, safety pass rate, and
inter-rater agreement (Krippendorff's alpha, interval metric for scores, nominal for safety).
CSV (UTF-8 with BOM, so spreadsheet programs show Chinese correctly). The filled sheets go back to the
version they rated: python -m jobs.registry human <version> rater1.csv rater2.csv ..."""
from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from pathlib import Path

SCORES = ("relevance", "fluency", "domain_expertise")
COLUMNS = ("id", "prompt", "answer", "reference", *SCORES, "safety", "comment")


def export_sheet(rows: list[dict], path: str | Path, n: int | None = None, seed: int = 0) -> Path:
    """rows: {id, prompt, answer, reference?}; a seeded sample of n of them, score columns empty."""
    rows = random.Random(seed).sample(rows, n) if n and n < len(rows) else list(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({"id": r["id"], "prompt": r["prompt"], "answer": r["answer"],
                             "reference": r.get("reference", "")})
    return path


def read_sheet(path: str | Path) -> list[dict]:
    """A filled sheet; a score outside 0-5 or a safety other than pass/fail is a ValueError naming the cell."""
    out = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.DictReader(f), 2):
            rec = {"id": row["id"]}
            for key in SCORES:
                value = (row.get(key) or "").strip()
                if value:
                    try:
                        score = float(value)
                    except ValueError:
                        raise ValueError(f"{path}:{line}: {key}={value!r} is not a number") from None
                    if not 0 <= score <= 5:
                        raise ValueError(f"{path}:{line}: {key}={value} is outside 0-5")
                    rec[key] = score
            safety = (row.get("safety") or "").strip().lower()
            if safety:
                if safety not in ("pass", "fail"):
                    raise ValueError(f"{path}:{line}: safety={safety!r} must be pass or fail")
                rec["safety"] = 1.0 if safety == "pass" else 0.0
            out.append(rec)
    return out


def krippendorff_alpha(units: dict[str, list[float]], interval: bool = True) -> float | None:
    """Alpha over units rated by 2+ raters; None when there is nothing to compare."""
    units = {u: v for u, v in units.items() if len(v) >= 2}
    values = [x for v in units.values() for x in v]
    n = len(values)
    if n < 2:
        return None
    delta = (lambda a, b: (a - b) ** 2) if interval else (lambda a, b: float(a != b))
    observed = sum(sum(delta(a, b) for i, a in enumerate(v) for j, b in enumerate(v) if i != j) / (len(v) - 1)
                   for v in units.values()) / n
    expected = sum(delta(a, b) for i, a in enumerate(values) for j, b in enumerate(values) if i != j) / (n * (n - 1))
    return 1.0 if expected == 0 else 1 - observed / expected


def import_sheets(paths: list[str | Path], exported: str | Path | None = None) -> dict:
    """The filled copies (one per rater) of a sheet the eval exported (`exported`: its human_eval.csv, when
    at hand, whose ids each row must carry) -> aggregate(); a bad cell or an unknown id is a ValueError."""
    sheets = [read_sheet(p) for p in paths]
    if exported is not None and Path(exported).is_file():
        with open(exported, newline="", encoding="utf-8-sig") as f:
            ids = {r["id"] for r in csv.DictReader(f)}
        for path, sheet in zip(paths, sheets):
            if unknown := sorted({r["id"] for r in sheet} - ids):
                raise ValueError(f"{path}: ids not in {exported}: {', '.join(unknown[:3])}")
    return aggregate(sheets)


def aggregate(sheets: list[list[dict]]) -> dict:
    """Per criterion: mean, 95% CI half-width, n ratings, alpha across raters."""
    result = {"raters": len(sheets)}
    for key in (*SCORES, "safety"):
        by_unit = defaultdict(list)
        for sheet in sheets:
            for rec in sheet:
                if key in rec:
                    by_unit[rec["id"]].append(rec[key])
        values = [x for v in by_unit.values() for x in v]
        if not values:
            continue
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        result[key] = {"mean": mean, "ci95": 1.96 * sd / math.sqrt(len(values)), "n": len(values),
                       "alpha": krippendorff_alpha(by_unit, interval=key != "safety")}
    return result
