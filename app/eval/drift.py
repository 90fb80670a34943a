"""The registry's history on one page: every version's key metrics over time with their 95% CIs, promotions
and rollbacks, the gate's verdicts and the lineage (parent version, data hash, model, eval folder).

    python -m jobs.registry report [out=runs/registry-report] [registry=runs/registry.sqlite]

Writes report.html (opens in any browser, no script) and report.png beside it. A metric's CI is a seeded
bootstrap over the version's own eval items (items.jsonl in its eval folder: BLEU and perplexity recomputed
from per-item statistics, as the gate does, app/stats.py); a version without per-item results is
drawn without one.
"""
from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path

import numpy as np
from scipy import stats

from app.stats import ITEM_METRICS, LOWER_IS_BETTER, aggregate, item_values

KEYS = ("rougeL", "bleu", "f1", "perplexity", "safety_pass_rate", "heldout_reward")


def metric_ci(items: list[dict], metric: str, resamples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """The 95% percentile bootstrap CI of one metric over a version's items (None with fewer than 2)."""
    _, values = item_values(items, metric)
    if len(values) < 2:
        return None
    kind = ITEM_METRICS[metric][1]
    res = stats.bootstrap((np.arange(len(values)),), lambda idx, axis=-1: aggregate(kind, values, idx),
                          n_resamples=resamples, vectorized=True, batch=200, method="percentile",
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def history(registry) -> tuple[list[dict], list[dict]]:
    """(versions with `time` and `ci` {metric: (low, high)}, events) from a Registry."""
    versions = registry.list()
    for v in versions:
        v["time"] = datetime.strptime(v["created"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        items_file = Path(v["eval_dir"] or "") / "items.jsonl"
        items = [json.loads(line) for line in items_file.read_text().splitlines()] if items_file.is_file() else []
        v["ci"] = {k: metric_ci(items, k) for k in KEYS if k in v["metrics"] and items}
    return versions, registry.events()


def write(registry, out: Path) -> Path:
    versions, events = history(registry)
    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in KEYS if any(k in v["metrics"] for v in versions)]
    _plot(out / "report.png", versions, events, keys)
    (out / "report.html").write_text(_html(versions, events, keys, registry.path), encoding="utf-8")
    return out / "report.html"


def _plot(path: Path, versions: list[dict], events: list[dict], keys: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    cols = 2
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    when = lambda t: datetime.fromtimestamp(t)  # noqa: E731
    for ax, key in zip(axes.flat, keys):
        have = [v for v in versions if key in v["metrics"]]
        for v in have:
            y, ci = v["metrics"][key], v["ci"].get(key)
            err = [[y - ci[0]], [ci[1] - y]] if ci else None
            color = "tab:green" if v["promoted"] else "tab:gray"
            ax.errorbar([when(v["time"])], [y], yerr=err, fmt="o", capsize=3, color=color,
                        mfc=color if v["promoted"] else "white")
            ax.annotate(f"v{v['id']}", (when(v["time"]), y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for e in events:
            ax.axvline(when(e["time"]), color="tab:red" if e["kind"] == "rollback" else "tab:green", lw=0.8,
                       ls="--" if e["kind"] == "rollback" else ":")
        ax.set_title(key + (" (lower is better)" if key in LOWER_IS_BETTER else ""), fontsize=9)
        locator = mdates.AutoDateLocator(maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("registry versions (filled: promoted; bars: 95% CI; green dotted: promotion, red dashed: "
                 "rollback)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html(versions: list[dict], events: list[dict], keys: list[str], source) -> str:
    e = html.escape
    stamp = lambda t: datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731

    def cell(v, k):
        if k not in v["metrics"]:
            return "<td></td>"
        ci = v["ci"].get(k)
        return f"<td>{v['metrics'][k]:.4g}" + (f"<br><small>[{ci[0]:.4g}, {ci[1]:.4g}]</small>" if ci else "") + "</td>"
    head = "".join(f"<th>{e(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr class='{'promoted' if v['promoted'] else ''}'><td>v{v['id']}</td><td>{e(v['name'] or '')}</td>"
        f"<td>{e(v['created'])}</td><td>{'v' + str(v['parent']) if v['parent'] else ''}</td>"
        f"<td><code>{e((v['data_sha256'] or '')[:12])}</code></td>"
        f"<td>{'yes' if v['verdict'].get('passed') else 'no' if v['verdict'] else ''}"
        f"<br><small>{e(str(v['verdict'].get('why', '')))}</small></td>"
        + "".join(cell(v, k) for k in keys) + f"<td><small>{e(v['model'])}</small></td></tr>" for v in versions)
    log = "".join(f"<tr><td>{stamp(x['time'])}</td><td>{e(x['kind'])}</td><td>v{x['version']}</td>"
                  f"<td>{'v' + str(x['current']) if x['current'] else 'none'}</td><td>{e(x['reason'] or '')}</td></tr>"
                  for x in events)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>raypost registry report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 6px;vertical-align:top}} tr.promoted{{background:#eaf7ea}}
img{{max-width:100%}}</style></head><body>
<h1>Registry report</h1>
<p>{len(versions)} versions, {len(events)} promotions and rollbacks, from <code>{e(str(source))}</code>.
Green rows are promoted; metric cells give the value and its 95% bootstrap CI over the version's eval items.</p>
<img id="figure" src="report.png" alt="metrics over time">
<h2>Versions</h2>
<table id="versions"><tr><th>version</th><th>name</th><th>created</th><th>parent</th><th>data</th>
<th>gate passed</th>{head}<th>model</th></tr>{rows}</table>
<h2>Promotions and rollbacks</h2>
<table id="events"><tr><th>time</th><th>event</th><th>version</th><th>now serving</th><th>why</th></tr>{log}</table>
</body></html>
"""
