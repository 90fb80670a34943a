"""The release gate: a candidate's per-item results against a baseline version's, on the same items.

    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/sft-demo/final              # vs latest-promoted
    python -m jobs.eval ... gate.mode=non_inferiority                                      # an INT8 variant
    python -m jobs.eval ... gate.baseline=none                                             # no gate (see below)

A candidate is compared with `latest-promoted` unless told otherwise; the statistics are app/stats.py
(paired bootstrap CIs, McNemar, verdicts per key metric), and the rule is the 5% one: roll back when a key
metric drops by more than `tolerance` (relative), now only when the drop is also significant at `alpha`.
Modes: `no_regression` (no key metric a REGRESSION), `improvement` (that, and one key metric significantly
better: what the demo asks of a fine-tuned model), `non_inferiority` (every key metric's CI excludes a drop
beyond the tolerance: for compressed variants). `gate.keys: baseline` gates on the keys the baseline version
was itself gated on: a compressed variant must be non-inferior wherever its source was judged, and is not
held to a metric its source never was (at n=64 one flipped pass/fail item is a 1.6-point drop that no test
can call non-inferior within 5%; its report still shows every metric). `gate.baseline: none` skips the comparison and never
promotes over an existing promoted version. Bad input (different items, a baseline without per-item results,
an unknown key) is a UserError raised before anything is registered.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from app.config import Config, UserError
from app.stats import ITEM_METRICS, ItemMismatch, compare, passes, warnings, win_rate_row
from app.registry import Registry

ITEMS_FILE = "items.jsonl"
DEFAULT_KEYS = ["rougeL", "bleu", "f1", "perplexity", "safety_pass_rate"]


class GateConfig(Config):
    baseline: str | None = "latest-promoted"  # a version id, latest-promoted, latest, an eval folder; none: no gate
    mode: Literal["no_regression", "improvement", "non_inferiority"] = "no_regression"
    keys: list[str] | Literal["baseline"] = DEFAULT_KEYS  # baseline: the keys the baseline was gated on
    tolerance: float = Field(0.05, ge=0)   # relative: a drop of more than 5% of the baseline's value
    alpha: float = Field(0.05, gt=0, lt=1)  # one-sided significance
    confidence: float = Field(0.95, gt=0, lt=1)
    resamples: int = Field(2000, ge=1000)
    seed: int = 0
    enforce: bool = True  # False: a failed gate is reported (and not promoted) but the job succeeds

    @field_validator("keys")
    @classmethod
    def _known(cls, keys: list[str] | str) -> list[str] | str:
        if keys == "baseline":
            return keys
        if not keys:
            raise ValueError("gate.keys is empty: name the metrics the gate decides on (or baseline)")
        unknown = [k for k in keys if k not in ITEM_METRICS and k != "win_rate"]
        if unknown:
            raise ValueError(f"{unknown[0]} is not a metric the gate can pair (per item: {', '.join(ITEM_METRICS)}, "
                             f"and win_rate with a judge)")
        return keys


def find_baseline(registry: Registry, ref: str | None) -> dict | None:
    """The baseline version: by id, latest-promoted / latest, or an eval folder's version. None when there is
    nothing to compare with (ref none, or nothing promoted yet)."""
    if ref is None:
        return None
    if (Path(ref) / "eval.json").is_file():
        ref = str(json.loads((Path(ref) / "eval.json").read_text())["version"])
    version = registry.get(ref)
    if version is None and ref != "latest-promoted":
        raise UserError(f"gate.baseline {ref!r} is not in {registry.path} (see python -m jobs.registry list)")
    return version


def load_items(version: dict) -> list[dict]:
    path = Path(version.get("eval_dir") or "") / ITEMS_FILE
    if not version.get("eval_dir") or not path.is_file():
        raise UserError(f"baseline version {version['id']} has no per-item results ({path}); re-evaluate its model "
                        f"({version['model']}) with this jobs.eval so the gate can pair items")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def resolve_keys(cfg: GateConfig, baseline: dict | None) -> list[str]:
    """cfg.keys, or for keys: baseline the keys the baseline version was gated on (recorded in its verdict)."""
    if cfg.keys != "baseline":
        return cfg.keys
    if baseline is None:
        return DEFAULT_KEYS
    keys = baseline["verdict"].get("keys") or baseline["config"].get("gate", {}).get("keys")
    if not isinstance(keys, list):
        raise UserError(f"gate.keys baseline: version {baseline['id']} records no gate keys; name them (gate.keys=[..])")
    return keys


def ids_by_set(items: list[dict]) -> dict[str, list[str]]:
    """Per-item results -> {set: their ids} (test, redteam, heldout)."""
    out: dict[str, list[str]] = {}
    for r in items:
        out.setdefault(r.get("set", "test"), []).append(r["id"])
    return out


def check_pairable(cfg: GateConfig, baseline: dict, baseline_items: list[dict], ids: dict[str, list[str]],
                   data_sha256: str | None) -> None:
    """Before any model runs: the candidate will score the items the baseline scored, on every set a gate key
    pairs on (ids: set name -> the ids this eval will score), from the same data."""
    if baseline.get("data_sha256") and data_sha256 and baseline["data_sha256"] != data_sha256:
        raise UserError(f"baseline version {baseline['id']} was evaluated on other data (manifest sha256 "
                        f"{baseline['data_sha256'][:12]} vs {data_sha256[:12]}): the gate pairs the same items")
    for key in resolve_keys(cfg, baseline):
        if key not in ITEM_METRICS:  # win_rate: judged on the test items, checked with the baseline's answers
            continue
        subset = ITEM_METRICS[key][0]
        theirs, ours = {r["id"] for r in baseline_items if r.get("set", "test") == subset}, set(ids.get(subset, ()))
        if theirs != ours:
            raise UserError(f"cannot gate against version {baseline['id']}: {key}: the two evaluations score "
                            f"different {subset} items ({len(ours)} vs {len(theirs)}; only in the baseline: "
                            f"{sorted(theirs - ours)[:3]}, only in the new: {sorted(ours - theirs)[:3]})")


def decide(cfg: GateConfig, items: list[dict], baseline: dict | None, baseline_items: list[dict] | None,
           registry: Registry, data_sha256: str | None, wins: list[float] | None = None) -> dict:
    """{baseline, mode, keys, passed, why, rows, warnings}: whether the candidate may be promoted, and why."""
    current, keys = registry.get("latest-promoted"), resolve_keys(cfg, baseline)
    if baseline is None:
        if cfg.baseline is None and current is not None:
            return _result(None, cfg, keys, False, f"gate.baseline none: never promoted over version {current['id']}")
        why = "gate.baseline none" if cfg.baseline is None else "nothing promoted yet to compare with"
        return _result(None, cfg, keys, True, f"first promoted version ({why})")
    check_pairable(cfg, baseline, baseline_items or [], ids_by_set(items), data_sha256)
    options = dict(tolerance=cfg.tolerance, alpha=cfg.alpha, resamples=cfg.resamples, seed=cfg.seed,
                   confidence=cfg.confidence)
    try:
        rows = compare(items, baseline_items, [k for k in keys if k != "win_rate"], **options)
    except ItemMismatch as exc:
        raise UserError(f"cannot gate against version {baseline['id']}: {exc}") from None
    if "win_rate" in keys:
        if wins is None:
            raise UserError("gate key win_rate needs a judge (judge.reward_model or judge.base_url)")
        rows.append(win_rate_row(wins, **options))
    passed, why = passes(rows, cfg.mode)
    return _result(baseline["id"], cfg, keys, passed, why, rows)


def _result(baseline: int | None, cfg: GateConfig, keys: list[str], passed: bool, why: str,
            rows: list[dict] | None = None) -> dict:
    return {"baseline": baseline, "mode": cfg.mode, "keys": keys, "passed": passed, "why": why, "rows": rows or [],
            "warnings": warnings(rows or [])}
