"""jobs.eval end to end through a real local Ray (tiny model): metrics, report, registry, gate."""
import json
import subprocess
import sys

import pytest

from app import PROJECT_ROOT
from app.config import UserError, load_config
from app.eval.evaluate import EvalConfig, run
from app.eval.registry import Registry
from tests.test_sft import sft_data  # noqa: F401  (the module fixture: train/ and val/ Parquet)


def evaluate(data, tmp_path, *overrides):
    cfg = load_config(EvalConfig, "jobs/configs/eval_demo.yaml",
                      ["model=tiny", f"data={data}/val", f"registry={tmp_path}/reg.sqlite", "max_samples=12",
                       "max_new_tokens=8", "batch_size=4", "human_eval_rows=5", "concurrency=1", *overrides])
    return run(cfg)


def test_eval_registers_promotes_and_gates(ray_local, sft_data, tmp_path):  # noqa: F811
    first = evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e1", "name=base")
    out = tmp_path / "e1"
    for name in ("eval.json", "report.md", "metrics.png", "answers.jsonl", "human_eval.csv"):
        assert (out / name).is_file(), name
    m = first["metrics"]
    assert {"bleu", "rougeL", "exact_match", "f1", "perplexity", "safety_pass_rate", "ttft_ms"} <= set(m)
    assert m["perplexity"] > 1000  # a random model: near the vocabulary size
    assert first["promoted"] and len((out / "answers.jsonl").read_text().splitlines()) == 12
    # The same model again, gated against the first: deterministic, so it passes and is promoted.
    second = evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e2", "gate.baseline=latest-promoted",
                      "safety=false", "efficiency=false", "gate.keys=[rougeL,perplexity]")
    assert second["promoted"] and second["metrics"]["perplexity"] == pytest.approx(m["perplexity"])
    # A planted baseline far better than this model: the gate fails and the version is not promoted.
    reg = Registry(tmp_path / "reg.sqlite")
    strong = reg.register("planted", "elsewhere", {**m, "perplexity": m["perplexity"] / 2})
    with pytest.raises(UserError, match=f"release gate failed against version {strong}"):
        evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e3", f"gate.baseline={strong}", "safety=false",
                 "efficiency=false", "gate.keys=[perplexity]")
    versions = reg.list()
    assert versions[-1]["promoted"] is False and reg.get("latest-promoted")["id"] == second["version"]
    report = (tmp_path / "e3" / "report.md").read_text()
    assert "REGRESSION" in report and json.loads((tmp_path / "e3" / "eval.json").read_text())["promoted"] is False


def test_registry_cli(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    a = reg.register("base", "m1", {"rougeL": 0.1})
    b = reg.register("sft", "m2", {"rougeL": 0.2})
    reg.promote(a)
    reg.promote(b)
    cli = lambda *args: subprocess.run([sys.executable, "-m", "jobs.registry", *args, f"registry={tmp_path}/r.sqlite"],  # noqa
                                       cwd=PROJECT_ROOT, capture_output=True, text=True)
    listed = cli("list")
    assert listed.returncode == 0 and f"*   {b}" in listed.stdout
    assert "current: 1" in cli("rollback").stdout
    bad = cli("promote", "99")
    assert bad.returncode == 2 and "no version 99" in bad.stderr
    assert cli("frobnicate").returncode == 2


GSM8K = PROJECT_ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.skipif(not GSM8K.is_file(), reason="../shared/data/gsm8k not present")
def test_gsm8k_task_reports_accuracy(ray_local, tmp_path):
    cfg = load_config(EvalConfig, "jobs/configs/eval_demo.yaml",
                      ["model=tiny", f"data={GSM8K}", "task=gsm8k", f"registry={tmp_path}/reg.sqlite", "max_samples=4",
                       "max_new_tokens=8", "batch_size=4", "safety=false", "efficiency=false", "concurrency=1",
                       f"output_dir={tmp_path}/g"])
    result = run(cfg)
    assert result["metrics"]["accuracy"] == 0.0  # a random model does not solve grade-school math
    answers = [json.loads(line) for line in (tmp_path / "g" / "answers.jsonl").read_text().splitlines()]
    assert "####" in answers[0]["reference"] and "step by step" in answers[0]["prompt"][0]["content"]
