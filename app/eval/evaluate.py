"""The evaluation stage: one model on the data stage's test split and the red-team set, then the registry
and the release gate.

    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/sft-demo/final
    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/sft-demo/final gate.baseline=latest-promoted

Writes eval.json, report.md, metrics.png, answers.jsonl and human_eval.csv under output_dir; registers a
version; with a baseline, a key metric worse by more than gate.tolerance fails (exit 2) and the version is
not promoted, otherwise it is promoted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq

from app.cluster import init_ray
from app.config import Config, JobConfig, UserError, load_callable
from app.eval import report
from app.eval.human import export_sheet
from app.eval.metrics import accuracy, final_number, perplexity, text_scores
from app.eval.registry import Registry, gate, gate_table
from app.eval.runner import answer_all, efficiency
from app.eval.safety import load_redteam, score_answers, summarize
from app.models import resolve
from app.runinfo import sha256_file


class GateConfig(Config):
    baseline: str | None = None  # a version id, "latest-promoted", "latest" or an eval output folder; None = no gate
    tolerance: float = 0.05
    keys: list[str] = ["rougeL", "bleu", "f1", "perplexity", "safety_pass_rate"]
    enforce: bool = True  # False: a failed gate is reported (and not promoted) but the job succeeds


class EvalConfig(JobConfig):
    model: str = "smollm2-135m-instruct"
    data: str = "runs/data-demo/test"  # Parquet SFT records (the last assistant turn is the reference),
    task: Literal["chat", "gsm8k"] = "chat"  # or GSM8K JSONL {question, answer}: adds final-answer accuracy
    max_samples: int | None = 64
    batch_size: int = 8
    max_new_tokens: int = 96
    max_len: int = 1024
    concurrency: int = 1  # model actors
    safety: bool = True
    toxicity_model: str | None = None  # "module:function": answers -> scores; default the lexicon
    human_eval_rows: int = 20
    efficiency: bool = True
    registry: str = "runs/registry.sqlite"
    gate: GateConfig = GateConfig()


GSM8K_PROMPT = "{question}\nSolve it step by step, then give the final number after ####."


def load_gsm8k(path: str, limit: int | None) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()[:limit]
    return [{"id": f"gsm8k-{i:05d}", "reference": r["answer"],
             "prompt": [{"role": "user", "content": GSM8K_PROMPT.format(question=r["question"])}]}
            for i, r in enumerate(map(json.loads, lines))]


def load_records(folder: str, limit: int | None, task: str = "chat") -> list[dict]:
    path = Path(folder)
    if not path.exists():
        raise UserError(f"eval data not found: {folder} (run python -m jobs.data first)")
    if task == "gsm8k":
        return load_gsm8k(folder, limit)
    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["id"])[:limit]
    records = [{"id": r["id"], "prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"]}
               for r in rows if r["messages"] and r["messages"][-1]["role"] == "assistant" and len(r["messages"]) > 1]
    if not records:
        raise UserError(f"no usable eval records in {folder} (each needs a prompt and a reference answer)")
    return records


def run(cfg: EvalConfig) -> dict:
    out = cfg.out("eval")
    out.mkdir(parents=True, exist_ok=True)
    model_path = str(resolve(cfg.model))
    records = load_records(cfg.data, cfg.max_samples, cfg.task)
    prompts = load_redteam() if cfg.safety else []
    init_ray()
    # One pass of the actor pool answers the test records and the red-team prompts (one model load).
    red_ids = [f"redteam/{p['id']}" for p in prompts]
    everything = answer_all(records + [{"id": i, "prompt": [{"role": "user", "content": p["prompt"]}]}
                                       for i, p in zip(red_ids, prompts)],
                            model_path, cfg.batch_size, cfg.max_new_tokens, cfg.max_len, cfg.concurrency)
    by_id = {r["id"]: r for r in everything}
    answered, red = [by_id[r["id"]] for r in records], [by_id[i]["answer"] for i in red_ids]
    preds, refs = [r["answer"] for r in answered], [r["reference"] for r in answered]
    metrics = text_scores(preds, refs)
    metrics["perplexity"] = perplexity(sum(r["nll"] for r in answered), sum(r["n_tokens"] for r in answered))
    if cfg.task == "gsm8k":
        metrics["accuracy"] = accuracy([final_number(p) for p in preds], [final_number(r) for r in refs])
    worst = []
    if cfg.safety:
        toxicity_fn = load_callable(cfg.toxicity_model) if cfg.toxicity_model else None
        safety = summarize(score_answers(red, toxicity_fn=toxicity_fn), prompts, red)
        metrics["safety_pass_rate"], worst = safety["safety_pass_rate"], safety["worst"]
    if cfg.efficiency:
        metrics.update(efficiency(model_path, [r["prompt"] for r in answered], cfg.batch_size))
    return finish(cfg, out, model_path, metrics, answered, worst)


def finish(cfg: EvalConfig, out: Path, model_path: str, metrics: dict, answered: list[dict], worst: list) -> dict:
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for r in answered:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    export_sheet([{"id": r["id"], "prompt": r["prompt"][-1]["content"], "answer": r["answer"],
                   "reference": r["reference"]} for r in answered], out / "human_eval.csv", cfg.human_eval_rows, cfg.seed)
    registry = Registry(cfg.registry)
    manifest = Path(cfg.data).parent / "manifest.json"
    version = registry.register(cfg.name, model_path, metrics, cfg.model_dump(mode="json"),
                                sha256_file(manifest) if manifest.is_file() else None)
    baseline_id = cfg.gate.baseline
    if baseline_id and (Path(baseline_id) / "eval.json").is_file():  # another eval's folder (what a pipeline passes)
        baseline_id = json.loads((Path(baseline_id) / "eval.json").read_text())["version"]
    baseline = registry.get(baseline_id) if baseline_id else None
    if cfg.gate.baseline and baseline is None:
        raise UserError(f"gate.baseline {cfg.gate.baseline!r} is not in {cfg.registry}")
    passed, rows = gate(metrics, baseline["metrics"], cfg.gate.keys, cfg.gate.tolerance) if baseline else (True, [])
    if passed:
        registry.promote(version)
    result = {"version": version, "model": model_path, "metrics": metrics, "promoted": passed,
              "baseline": baseline["id"] if baseline else None, "gate": rows}
    (out / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    report.write(out, result, answered, worst, baseline)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    if rows:
        print(gate_table(rows))
    print(f"eval: version {version} {'promoted' if passed else 'NOT promoted'} -> {out}")
    if not passed and cfg.gate.enforce:
        raise UserError(f"release gate failed against version {baseline['id']}: a key metric dropped more than "
                        f"{cfg.gate.tolerance:.0%} (table above); version {version} is not promoted")
    return result
