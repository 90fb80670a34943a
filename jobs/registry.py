"""Manage evaluated model versions (see app/registry.py).

    python -m jobs.registry list
    python -m jobs.registry show 3
    python -m jobs.registry promote 3
    python -m jobs.registry rollback
    python -m jobs.registry report [out=runs/registry-report]     # HTML + PNG: app/eval/drift.py
    python -m jobs.registry human 3 rater1.csv rater2.csv       # filled human_eval.csv sheets -> version 3
    python -m jobs.registry list registry=/path/to/registry.sqlite
"""
from __future__ import annotations

import json
import sys

from app.config import UserError
from app.registry import Registry

ACTIONS = ("list", "show", "promote", "rollback", "report", "human")
HUMAN_MIN = 500  # ratings per criterion seed 000 §4.2 asks for


def main(argv: list[str]) -> None:
    args = [a for a in argv if "=" not in a]
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(opts) - {"registry", "out"}
    if not args or args[0] not in ACTIONS or unknown:
        raise UserError(f"usage: python -m jobs.registry {'|'.join(ACTIONS)} [version] [registry=path]"
                        + (f" (unknown key: {sorted(unknown)[0]})" if unknown else ""))
    reg = Registry(opts.get("registry", "runs/registry.sqlite"))
    action, rest = args[0], args[1:]
    if action == "list":
        current = reg.get("latest-promoted")
        for v in reg.list():
            mark = "*" if current and v["id"] == current["id"] else " "
            keys = {k: round(v["metrics"][k], 4) for k in ("rougeL", "bleu", "perplexity", "safety_pass_rate")
                    if k in v["metrics"]}
            print(f"{mark} {v['id']:>3} {v['name']:<12} {v['created']} promoted={v['promoted']} {keys} {v['model']}")
    elif action == "show":
        version = reg.get(rest[0] if rest else "latest")
        if version is None:
            raise UserError(f"no version {rest[0] if rest else 'latest'}")
        print(json.dumps(version, indent=2, ensure_ascii=False))
    elif action == "promote":
        if not rest:
            raise UserError("promote needs a version id")
        try:
            reg.promote(int(rest[0]), "by hand (jobs.registry promote)")
        except (KeyError, ValueError):
            raise UserError(f"no version {rest[0]}") from None
        print(f"version {rest[0]} promoted")
    elif action == "human":
        human(reg, rest)
    elif action == "report":
        from pathlib import Path

        from app.eval.drift import write
        print(f"registry report -> {write(reg, Path(opts.get('out', 'runs/registry-report')))}")
    else:
        try:
            now = reg.rollback("by hand (jobs.registry rollback)")
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
        print(f"rolled back; current: {now['id'] if now else 'none'}")


def human(reg: Registry, rest: list[str]) -> None:
    """Aggregate the filled sheets of a version's human evaluation and record them with the version."""
    from pathlib import Path

    from app.eval.human import SCORES, import_sheets
    if len(rest) < 2 or not rest[0].isdigit():
        raise UserError("human needs a version id and one or more filled sheets (CSV)")
    version = reg.get(rest[0])
    if version is None:
        raise UserError(f"no version {rest[0]}")
    missing = [p for p in rest[1:] if not Path(p).is_file()]
    if missing:
        raise UserError(f"sheet not found: {missing[0]}")
    exported = Path(version["eval_dir"]) / "human_eval.csv" if version.get("eval_dir") else None
    try:
        result = import_sheets(rest[1:], exported)
    except (ValueError, KeyError) as exc:
        raise UserError(f"bad sheet: {exc}") from None
    reg.record_human(version["id"], result, f"{len(rest) - 1} sheet(s): {', '.join(rest[1:])}")
    for key in (*SCORES, "safety"):
        if key in result:
            r, alpha = result[key], result[key]["alpha"]
            print(f"{key}: {r['mean']:.3f} ± {r['ci95']:.3f} (n={r['n']}"
                  + (f", alpha {alpha:.2f}" if alpha is not None else "") + ")"
                  + (f"  fewer than the {HUMAN_MIN} ratings seed 000 asks for" if r["n"] < HUMAN_MIN else ""))
    print(f"version {version['id']}: human evaluation of {result['raters']} rater(s) recorded")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
