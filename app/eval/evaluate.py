"""The evaluation stage: one model on the data stage's test split and the red-team set, then the registry
and the release gate (app/eval/gate.py).

    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/pipeline-demo/sft/final
    python -m jobs.eval jobs/configs/eval_demo.yaml model=<dir> gate.mode=non_inferiority gate.baseline=3

Writes eval.json (corpus metrics, n, the gate's rows with CIs and p-values, its verdict), items.jsonl (each
item's scores keyed by record id: what a later gate pairs against), answers.jsonl, report.md, metrics.png
and human_eval.csv under output_dir; registers a version (with its eval folder and the baseline it was
gated against as parent) and promotes it if the gate passes. A failed gate exits 2 unless gate.enforce is off.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from app.cluster import init_ray
from app.config import UserError, load_callable
from app.eval import bias, report
from app.stats import table
from app.eval.config import EvalConfig
from app.eval.gate import ITEMS_FILE, check_pairable, decide, find_baseline, load_items
from app.eval.human import export_sheet
from app.eval.judge import wins as judge_wins
from app.metrics import item_scores, perplexity, text_scores
from app.eval.runner import answer_all, efficiency
from app.eval.redteam import REFUSE, load_redteam, score_answers, summarize
from app.models import resolve
from app.precision import fast_bf16
from app.registry import Registry
from app.rl import rewards
from app.safety import SafetyCheck, refused
from app.runinfo import sha256_file
from app.tasks import final_number, load_prompts, skipped_line
from app.vllm_engine import choose


def load_records(folder: str, limit: int | None, task: str = "chat") -> tuple[list[dict], dict[str, int]]:
    """([{id, prompt, reference}], records skipped by reason): a data stage split of conversations (the last
    assistant reply is the reference; no_reference when there is none) or, for task=gsm8k, a prompt set."""
    path = Path(folder)
    if not path.exists():
        raise UserError(f"eval data not found: {folder} (run python -m jobs.data first)")
    if task == "gsm8k":
        rows, skipped = load_prompts(folder, limit)
        records = [{"id": f"gsm8k-{i:05d}", "reference": r["answer"], "prompt": r["prompt"]} for i, r in enumerate(rows)]
    else:
        rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["id"])[:limit]
        records = [{"id": r["id"], "prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"]}
                   for r in rows if r["messages"] and r["messages"][-1]["role"] == "assistant" and len(r["messages"]) > 1]
        skipped = {"no_reference": len(rows) - len(records)} if len(rows) > len(records) else {}
    if not records:
        raise UserError(f"no usable eval records in {folder} (each needs a prompt and a reference answer): "
                        f"{skipped_line(skipped)}")
    return records, skipped


def _asked(item_id: str, question: str, max_new_tokens: int | None = None) -> dict:
    """A one-question conversation for the answer pool (red-team and identity prompts)."""
    return {"id": item_id, "prompt": [{"role": "user", "content": question}],
            **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}


def run(cfg: EvalConfig) -> dict:
    if cfg.task == "rag":  # with vs without retrieval, in process (app/rag/evaluate.py)
        from app.rag.evaluate import run as run_rag
        return run_rag(cfg)
    out = cfg.out("eval")
    out.mkdir(parents=True, exist_ok=True)
    records, skipped = load_records(cfg.data, cfg.max_samples, cfg.task)
    registry = Registry(cfg.registry)
    baseline = find_baseline(registry, cfg.gate.baseline)  # a bad baseline fails before the model loads
    baseline_items = load_items(baseline) if baseline else None
    model_path = str(resolve(cfg.model))
    prompts = load_redteam() if cfg.safety else []
    held, held_skipped = load_prompts(cfg.heldout.prompts, cfg.heldout.max_samples) if cfg.heldout else ([], {})
    held = [{**r, "id": f"heldout/{r['id']}"} for r in held]
    skipped = {"test": skipped, **({"heldout": held_skipped} if cfg.heldout else {})}
    print(f"eval: {len(records)} test items ({skipped_line(skipped['test'])})"
          + (f", {len(held)} held-out prompts ({skipped_line(held_skipped)})" if cfg.heldout else ""), flush=True)
    red_ids = [f"redteam/{p['id']}" for p in prompts]
    probes = {f"identity/{k}": q for k, q in enumerate(cfg.identity.questions)} if cfg.identity else {}
    pairs = bias.probe_pairs(cfg.bias.attributes, cfg.bias.langs) if cfg.bias else []
    manifest = Path(cfg.data).parent / "manifest.json"
    data_sha = sha256_file(manifest) if manifest.is_file() else None
    if baseline:  # mismatched items or data fail here, before any model loads
        check_pairable(cfg.gate, baseline, baseline_items, {"test": [r["id"] for r in records], "redteam": red_ids,
                                                            "heldout": [r["id"] for r in held],
                                                            "identity": list(probes),
                                                            "bias": [p["id"] for p in pairs]}, data_sha)
    engine = choose(cfg.engine, model_path, "engine")
    init_ray()
    # One pass of the actor pool answers the test records, the red-team, the held-out, identity and bias prompts.
    everything = answer_all(records + [_asked(i, p["prompt"]) for i, p in zip(red_ids, prompts)]
                            + [{"id": r["id"], "prompt": r["prompt"], "max_new_tokens": cfg.heldout.max_new_tokens}
                               for r in held]
                            + [_asked(i, q, cfg.identity.max_new_tokens) for i, q in probes.items()]
                            + [_asked(f"{p['id']}/{side}", p[side], cfg.bias.max_new_tokens)
                               for p in pairs for side in "ab"],
                            model_path, cfg.batch_size, cfg.max_new_tokens, cfg.max_len, cfg.concurrency, cfg.dtype,
                            engine, cfg.vllm.model_dump())
    by_id = {r["id"]: r for r in everything}
    answered, red = [by_id[r["id"]] for r in records], [by_id[i]["answer"] for i in red_ids]
    preds, refs = [r["answer"] for r in answered], [r["reference"] for r in answered]
    items = [{"id": r["id"], "set": "test", **scores, "nll": r["nll"], "n_tokens": r["n_tokens"]}
             for r, scores in zip(answered, item_scores(preds, refs))]
    metrics = text_scores(preds, refs, items)
    metrics["perplexity"] = perplexity(sum(r["nll"] for r in answered), sum(r["n_tokens"] for r in answered))
    if cfg.task == "gsm8k":
        for item, p, r in zip(items, preds, refs):
            item["accuracy"] = float(final_number(p) == final_number(r))
        metrics["accuracy"] = sum(i["accuracy"] for i in items) / len(items)
    safety = {}
    if cfg.safety:
        verdicts = score_answers(red, SafetyCheck(cfg.safety))
        items += [{"id": i, "set": "redteam", "safety_pass_rate": float(v["passed"]), "toxicity": v["toxicity"],
                   **({"refusal_rate": float(refused(a))} if p["category"] in REFUSE else {}), "answer": a}
                  for i, v, a, p in zip(red_ids, verdicts, red, prompts)]
        safety = summarize(verdicts, prompts, red)
        metrics["safety_pass_rate"] = safety["safety_pass_rate"]
        asked = [i for i in items if "refusal_rate" in i]
        metrics["refusal_rate"] = sum(i["refusal_rate"] for i in asked) / len(asked) if asked else float("nan")
        if cfg.explain and safety["worst"]:  # why the worst answer came out: explain/ (report.md links it)
            from app.eval.explain import explain
            worst = safety["worst"][0]
            explain(model_path, worst["prompt"], worst["answer"], cfg.explain.max_tokens, cfg.explain.steps,
                    out / "explain")
    if held:
        answers = [by_id[r["id"]]["answer"] for r in held]
        scores = rewards.call(load_callable(cfg.heldout.reward), [r["prompt"] for r in held], answers,
                              [r["answer"] for r in held])
        items += [{"id": r["id"], "set": "heldout", "heldout_reward": s, "answer": a}
                  for r, s, a in zip(held, scores, answers)]
        metrics["heldout_reward"] = sum(scores) / len(scores)
    if probes:
        expect = [e.lower() for e in cfg.identity.expect]
        passed = [any(e in by_id[i]["answer"].lower() for e in expect) for i in probes]
        items += [{"id": i, "set": "identity", "identity_rate": float(p), "answer": by_id[i]["answer"]}
                  for i, p in zip(probes, passed)]
        metrics["identity_rate"] = sum(passed) / len(passed)
    if pairs:
        gaps = [{"id": p["id"], "set": "bias", "attribute": p["attribute"], "lang": p["lang"],
                 **bias.pair_gaps(by_id[f"{p['id']}/a"]["answer"], by_id[f"{p['id']}/b"]["answer"]),
                 "answers": [by_id[f"{p['id']}/a"]["answer"], by_id[f"{p['id']}/b"]["answer"]]} for p in pairs]
        items += gaps
        metrics["bias_gap"] = sum(g["bias_gap"] for g in gaps) / len(gaps)
        safety = {**safety, "bias": bias.summarize(gaps)}  # seed 000 §4.1: bias is part of the safety check
    wins = judge(cfg, baseline, answered, items, metrics) if cfg.judge and baseline else None
    if cfg.efficiency:
        metrics.update(efficiency(model_path, [r["prompt"] for r in answered], dtype=cfg.dtype))  # batch 1 and 8
    return finish(cfg, out, Scored(model_path, engine, answered, items, metrics, safety, skipped, wins), registry,
                  Against(baseline, baseline_items, data_sha))


def judge(cfg: EvalConfig, baseline: dict, answered: list[dict], items: list[dict], metrics: dict) -> list[float]:
    """Per test item 1 / 0.5 / 0: the judge's verdict on this answer against the baseline's to the same prompt."""
    path = Path(baseline["eval_dir"]) / "answers.jsonl"
    old = {r["id"]: r["answer"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
    missing = [r["id"] for r in answered if r["id"] not in old]
    if missing:
        raise UserError(f"cannot judge against version {baseline['id']}: its answers lack {len(missing)} of these "
                        f"items (e.g. {missing[0]}); the gate pairs the same items")
    wins, unreadable = judge_wins(cfg.judge, [r["prompt"] for r in answered], [r["answer"] for r in answered],
                                  [old[r["id"]] for r in answered])
    for item, w in zip(items, wins):  # the test items come first, in the same order
        item["win_vs_baseline"] = w
    metrics["win_rate"] = sum(wins) / len(wins)
    if unreadable:
        metrics["judge_unreadable"] = unreadable
    return wins


def _compute_of(baseline: dict | None) -> str | None:
    """The float type a baseline's eval computed in (eval.json "compute"), where recorded."""
    path = Path(baseline["eval_dir"]) / "eval.json" if baseline and baseline.get("eval_dir") else None
    return json.loads(path.read_text()).get("compute") if path and path.is_file() else None


@dataclass
class Scored:
    """What one eval run measured: the answers, the per-item results, the corpus metrics, the safety summary
    (red-team counts and worst cases, bias), the records skipped by reason, the judge's per-item wins."""
    model_path: str
    engine: str
    answered: list[dict]
    items: list[dict]
    metrics: dict
    safety: dict
    skipped: dict
    wins: list[float] | None = None


@dataclass
class Against:
    """What the gate compares with: the baseline version (None: none), its per-item results, the data's hash."""
    baseline: dict | None
    items: list[dict] | None
    data_sha: str | None


def finish(cfg: EvalConfig, out: Path, scored: Scored, registry: Registry, against: Against) -> dict:
    """Write the answers and per-item results, gate against the baseline, register (and maybe promote)."""
    for name, rows in (("answers.jsonl", scored.answered), (ITEMS_FILE, scored.items)):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    export_sheet([{"id": r["id"], "prompt": r["prompt"][-1]["content"], "answer": r["answer"],
                   "reference": r["reference"]} for r in scored.answered], out / "human_eval.csv", cfg.human_eval_rows, cfg.seed)
    decision = decide(cfg.gate, scored.items, against.baseline, against.items, registry, against.data_sha,
                      scored.wins)
    compute = "bfloat16" if cfg.dtype == "auto" and fast_bf16() else "float32"
    theirs = _compute_of(against.baseline)
    if theirs and theirs != compute:
        decision["warnings"].append(f"the baseline was evaluated in {theirs}, this model in {compute}: part of each "
                                    f"difference is precision (evaluate both with the same dtype)")
    version = registry.register(cfg.name, scored.model_path, scored.metrics, cfg.model_dump(mode="json"), against.data_sha,
                                eval_dir=str(out.resolve()), parent=decision["baseline"],
                                verdict={k: decision[k] for k in ("baseline", "mode", "keys", "passed", "why")})
    if decision["passed"]:
        registry.promote(version, f"gate passed ({decision['mode']})")
    result = {"version": version, "model": scored.model_path, "compute": compute, "engine": scored.engine,
              "n": len(scored.answered), "skipped": scored.skipped,
              "safety": scored.safety.get("counts"), "bias": scored.safety.get("bias"),
              **{f"n_{s}": sum(1 for i in scored.items if i["set"] == s) for s in ("redteam", "heldout", "identity", "bias")},
              "metrics": scored.metrics,
              "promoted": decision["passed"], "baseline": decision["baseline"], "gate": decision["rows"],
              "verdict": {k: decision[k] for k in ("mode", "keys", "passed", "why", "warnings")}}
    (out / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    report.write(out, result, scored.answered, scored.safety.get("worst", []), against.baseline)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in scored.metrics.items()}))
    if decision["rows"]:
        print(table(decision["rows"]))
    for line in decision["warnings"]:
        print(f"warning: {line}")
    print(f"eval: version {version} {'promoted' if decision['passed'] else 'NOT promoted'} ({decision['why']}) -> {out}")
    if not decision["passed"] and cfg.gate.enforce and against.baseline is not None:
        raise UserError(f"release gate failed against version {against.baseline['id']} ({decision['why']}; table above); "
                        f"version {version} is not promoted")
    return result
