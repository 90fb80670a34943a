"""The pipeline's closing summary, read from what each stage left in its folder (manifest.json, eval.json,
answer.json): records kept and rejected by reason, losses, RL's held-out reward with its paired CI, metrics
side by side, each gate's verdicts with CIs, the served version and answer, and the time. Stages are
recognised by their job, so a pipeline of any shape gets the parts it has. A finished stage whose file lacks
a figure printed here is an error naming the file and the key, not a silently missing line.
"""
from __future__ import annotations

import json
from pathlib import Path

METRICS = {"rougeL": "rougeL", "bleu": "BLEU", "f1": "F1", "perplexity": "PPL", "safety_pass_rate": "safety",
           "heldout_reward": "held-out", "identity_rate": "identity", "accuracy": "accuracy", "ttft_ms": "TTFT ms",
           "tokens_per_s_batch8": "tok/s b8"}


class Record(dict):
    """A stage's JSON file whose missing keys raise an error that names the file."""

    def __init__(self, data: dict, path: Path):
        super().__init__({k: Record(v, path) if isinstance(v, dict) else v for k, v in data.items()})
        self.path = path

    def __missing__(self, key):
        raise KeyError(f"{self.path} has no {key!r}: the summary prints it (did the stage finish?)")


def _read(path: Path) -> Record:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the summary reads it from the finished stage")
    return Record(json.loads(path.read_text(encoding="utf-8")), path)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def gate_lines(name: str, e: dict) -> list[str]:
    """One eval's gate: its verdict and why, then each key metric's change with its CI, p-value and verdict."""
    v = e["verdict"]
    head = (f"gate {name} ({v['mode']} vs v{e['baseline']}, n={e['n']}): " if e["baseline"] else f"gate {name}: ")
    out = [head + ("promoted" if e["promoted"] else "NOT promoted") + f" ({v['why']})"]
    for r in e["gate"]:
        out.append(f"  {r['metric']:<16} {_fmt(r['baseline']):>8} -> {_fmt(r['new']):<8} diff {r['diff']:+.4g}  "
                   f"95% CI [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]  p {r['p_value']:.3g}  {r['verdict']}")
    return out + [f"  warning: {w}" for w in v["warnings"]]


def lines(stages: dict[str, dict], jobs: dict[str, str], seconds: float) -> list[str]:
    """stages: {name: {"dir", "cached", "seconds"}}; jobs: {name: job}."""
    out = []
    by_job = lambda job: [(n, Path(stages[n]["dir"])) for n in stages if jobs[n] == job]  # noqa: E731
    for name, d in by_job("data"):
        counts = _read(d / "manifest.json")["counts"]
        kept, dropped = counts["splits"], counts["dropped"]
        out.append(f"{name}: {counts['input']} records in, {sum(kept.values())} kept "
                   f"({', '.join(f'{k} {v}' for k, v in kept.items())}), {sum(dropped.values())} rejected: "
                   + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1])))
    for name, d in by_job("sft") + by_job("dpo"):
        m = _read(d / "manifest.json")
        if jobs[name] == "dpo":
            if m["val_before"] is not None:
                out.append(f"{name}: validation loss {m['val_before']['val_loss']:.4f} -> {m['val_after']['val_loss']:.4f}, "
                           f"preference accuracy {m['val_before']['val_accuracy']:.2f} -> "
                           f"{m['val_after']['val_accuracy']:.2f}")
        elif m["val_loss_before"] is not None:
            t = m["data"]["train"]
            out.append(f"{name}: validation loss {m['val_loss_before']:.4f} before -> {m['val_loss_after']:.4f} after "
                       f"({m['steps']} steps; {t['kept']} of {t['read']} training rows, {sum(t['dropped'].values())} "
                       f"dropped)")
    for name, d in by_job("reward"):
        s = _read(d / "manifest.json")["summary"]
        out.append(f"{name}: held-out pairwise accuracy {_fmt(s['val_accuracy'])}, "
                   f"loss {_fmt(s['first_loss'])} -> {_fmt(s['last_loss'])}")
    for name, d in by_job("ppo") + by_job("grpo"):
        s = _read(d / "manifest.json")["summary"]
        if "heldout_diff" in s:
            out.append(f"{name}: held-out reward {s['heldout_first']:.3f} -> {s['heldout_last']:.3f} (n={s['heldout_n']}, "
                       f"paired diff {s['heldout_diff']:+.3f}, 95% CI [{s['heldout_ci_low']:+.3f}, "
                       f"{s['heldout_ci_high']:+.3f}], p {s['heldout_p_value']:.3g}: {s['heldout_verdict']})")
        prefix = f"{name}:" if "heldout_diff" not in s else " " * (len(name) + 1)
        out.append(f"{prefix} training-batch reward "
                   f"{_fmt(s['reward_first'])} -> {_fmt(s['reward_last'])} over {s['steps']} steps, "
                   f"KL (k3) {_fmt(s['kl_last'])} per sequence"
                   + ("" if s.get("kl_per_token_last") is None else f", {_fmt(s['kl_per_token_last'])} per token"))
    evals = [(n, _read(d / "eval.json")) for n, d in by_job("eval")]
    if evals:
        keys = [k for k in METRICS if any(k in e["metrics"] for _, e in evals)]
        width = max(len(n) for n, _ in evals)
        out.append("eval".ljust(width) + "  " + "  ".join(f"{METRICS[k]:>9}" for k in keys) + "  gate")
        for n, e in evals:
            verdict = ("promoted" if e["promoted"] else "NOT promoted") + (f" vs v{e['baseline']}" if e["baseline"] else "")
            out.append(n.ljust(width) + "  " + "  ".join(f"{_fmt(e['metrics'].get(k, '-')):>9}" for k in keys)
                       + f"  v{e['version']} {verdict}")
        for n, e in evals:
            if e["safety"]:
                c = e["safety"]
                refusals = e["metrics"].get("refusal_rate")
                out.append(f"{n}: red-team {c['passed']} of {c['n']} pass, {c['unsafe']} unsafe, {c['degenerate']} "
                           f"empty or degenerate" + ("" if refusals is None else
                                                     f"; refusal rate on harmful and PII requests {refusals:.3f}"))
            if e.get("bias"):
                b = e["bias"]["all"]
                out.append(f"{n}: bias gap {b['bias_gap']['mean']:.3f} [{b['bias_gap']['ci_low']:.3f}, "
                           f"{b['bias_gap']['ci_high']:.3f}] (n={b['bias_gap']['n']} pairs; refusal "
                           f"{b['refusal_gap']['mean']:.3f}, length {b['length_gap']['mean']:.3f}, toxicity "
                           f"{b['toxicity_gap']['mean']:.3f})")
        for n, e in evals:
            out += gate_lines(n, e)
    for name, d in by_job("quantize"):
        c = _read(d / "comparison.json")
        out.append(f"{name}: {c['original']['size_mb']} MB -> {c['int8']['size_mb']} MB, decode x{c['speedup']}, "
                   f"perplexity {c['original']['perplexity']} -> {c['int8']['perplexity']}")
    for name, d in by_job("serve_demo"):
        answer = _read(d / "answer.json")
        out.append(f"{name}: registry version {answer['version']} ({answer['model']})")
        out.append(f"{' ' * len(name)}  user: {answer['prompt']}")
        out.append(f"{' ' * len(name)}  assistant: {answer['answer'].strip()}")
    ran = sum(1 for s in stages.values() if not s["cached"])
    out.append(f"total: {seconds / 60:.1f} min ({ran} stages run, {len(stages) - ran} cached)")
    return out
