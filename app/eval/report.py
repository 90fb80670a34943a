"""report.md and metrics.png for an evaluation run."""
from __future__ import annotations

import shutil
from pathlib import Path

from app.stats import table


def write(out: Path, result: dict, answered: list[dict], worst: list[dict], baseline: dict | None) -> None:
    m = result["metrics"]
    lines = [f"# Evaluation: version {result['version']}", "", f"model: `{result['model']}`", "",
             "| metric | value | baseline |", "|---|---|---|"]
    for key, value in m.items():
        base = baseline["metrics"].get(key) if baseline else None
        lines.append(f"| {key} | {_fmt(value)} | {_fmt(base) if base is not None else ''} |")
    v = result["verdict"]
    lines += ["", f"## Release gate ({v['mode']}, baseline: {result['baseline'] or 'none'}, n = {result['n']})", ""]
    if result["gate"]:
        lines += [table(result["gate"]), ""]
    lines += [f"- warning: {w}" for w in v["warnings"]]
    lines += ["", f"Promoted: {'yes' if result['promoted'] else 'no'} ({v['why']})", "", "![metrics](metrics.png)", ""]
    curve = Path(result["model"]).parent / "training_curve.png"  # an SFT run's final/ sits beside its curve
    if curve.is_file():
        shutil.copy(curve, out / "training_curve.png")
        lines += ["## Training curve", "", "![loss](training_curve.png)", ""]
    lines += ["## Sample answers", "", "| prompt | answer | reference |", "|---|---|---|"]
    for r in answered[:8]:
        lines.append(f"| {_cell(r['prompt'][-1]['content'])} | {_cell(r['answer'])} | {_cell(r['reference'])} |")
    if result.get("safety"):
        c = result["safety"]
        lines += ["", f"Safety: {c['passed']} of {c['n']} red-team answers pass (refusals included); {c['unsafe']} "
                      f"unsafe, {c['degenerate']} empty or degenerate (both fail); refusal rate on the harmful "
                      f"and PII requests {result['metrics'].get('refusal_rate', float('nan')):.3f}."]
    if result.get("bias"):  # app/eval/bias.py
        lines += ["", "## Bias probes", "", "Paired prompts that differ only in who asks (gender, age, region); "
                  "how far the two answers differ (0: alike), mean [95% CI]:", "",
                  "| pairs | n | bias_gap | refusal_gap | length_gap | toxicity_gap |", "|---|---|---|---|---|---|"]
        for name, gaps in result["bias"].items():
            cells = [f"{g['mean']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}]" for g in gaps.values()]
            lines.append(f"| {name} | {gaps['bias_gap']['n']} | {' | '.join(cells)} |")
    if worst:
        lines += ["", "## Worst safety cases", "", "| prompt | answer | toxicity | sensitive | pii |", "|---|---|---|---|---|"]
        for w in worst:
            lines.append(f"| {_cell(w['prompt'])} | {_cell(w['answer'])} | {w['toxicity']} | {', '.join(w['sensitive'])} "
                         f"| {', '.join(w['pii'])} |")
        if (out / "explain" / "explanation.png").is_file():
            lines += ["", "Why the first of them was answered so: each answer token's attribution over the prompt's "
                          "tokens (integrated gradients, attention rollout; [tokens and values](explain/explanation.json))",
                      "", "![explanation](explain/explanation.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(out / "metrics.png", m, baseline["metrics"] if baseline else None)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _cell(text: str, width: int = 120) -> str:
    text = (text or "").replace("|", "\\|").replace("\n", " ")
    return text[:width] + ("…" if len(text) > width else "")


def _plot(path: Path, metrics: dict, baseline: dict | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in ("bleu", "rouge1", "rouge2", "rougeL", "exact_match", "f1", "safety_pass_rate") if k in metrics]
    scale = lambda k, v: v / 100 if k == "bleu" else v  # noqa: E731  (BLEU is 0-100)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(keys))
    ax.bar([x + 0.2 for x in xs], [scale(k, metrics[k]) for k in keys], width=0.4, label="this version")
    if baseline:
        ax.bar([x - 0.2 for x in xs], [scale(k, baseline.get(k, 0)) for k in keys], width=0.4, label="baseline")
    ax.set_xticks(list(xs), [k if k != "bleu" else "bleu/100" for k in keys], rotation=20)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
