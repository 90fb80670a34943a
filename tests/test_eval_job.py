"""jobs.eval end to end through a real local Ray (tiny model): metrics, report, registry, gate."""
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from app import PROJECT_ROOT
from app.config import ConfigError, UserError, load_config
from app.eval.evaluate import EvalConfig, run
from app.eval.runner import AnswerActor, batches_of
from app.models import resolve
from app.tasks import final_number
from app.registry import Registry


def evaluate(data, tmp_path, *overrides):
    heldout = tmp_path / "arithmetic.jsonl"  # held-out RL prompts: every eval scores them, so they pair
    heldout.write_text("".join(json.dumps({"id": f"m{a}", "prompt": f"Calculate {a} + 1.", "answer": f"#### {a + 1}"})
                               + "\n" for a in range(4)))
    cfg = load_config(EvalConfig, "jobs/configs/eval_demo.yaml",
                      ["model=tiny", f"data={data}/val", f"registry={tmp_path}/reg.sqlite", "max_samples=12",
                       f"heldout.prompts={heldout}",
                       "max_new_tokens=8", "identity.max_new_tokens=8", "bias.max_new_tokens=8", "batch_size=4",
                       "human_eval_rows=5",
                       "concurrency=0", "efficiency=false",
                       "dtype=float32", *overrides])  # the pinned figures: the same on every CPU
    return run(cfg)


@pytest.fixture(scope="module")
def tiny_first(ray_local, sft_data, tmp_path_factory):
    """The tiny model's eval, the first version of a registry: (its folder, result). A test copies the
    registry (reg.sqlite) into its own tmp_path and goes on from there."""
    root = tmp_path_factory.mktemp("tiny-first")
    return root, evaluate(sft_data, root, f"output_dir={root}/e1", "name=tiny", "efficiency=true",
                          "explain.steps=2", "explain.max_tokens=3", "concurrency=2")  # (the others: in this process)


def from_first(tiny_first, tmp_path) -> dict:
    root, first = tiny_first
    shutil.copy(root / "reg.sqlite", tmp_path / "reg.sqlite")
    return first


def test_eval_gates_against_the_promoted_version(tiny_first, sft_data, tmp_path):
    first, out = from_first(tiny_first, tmp_path), tiny_first[0] / "e1"
    reg = Registry(tmp_path / "reg.sqlite")
    for name in ("eval.json", "items.jsonl", "report.md", "metrics.png", "answers.jsonl", "human_eval.csv",
                 "explain/explanation.json", "explain/explanation.png"):
        assert (out / name).is_file(), name
    explained = json.loads((out / "explain" / "explanation.json").read_text())  # the worst red-team answer's
    assert explained["prompt"] in (out / "report.md").read_text() and len(explained["answer_tokens"]) == 3
    assert "![explanation](explain/explanation.png)" in (out / "report.md").read_text()
    m = first["metrics"]
    assert {"bleu", "rougeL", "exact_match", "f1", "perplexity", "safety_pass_rate", "ttft_ms"} <= set(m)
    assert m["perplexity"] > 1000  # a random model: near the vocabulary size
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    test, red = [i for i in items if i["set"] == "test"], [i for i in items if i["set"] == "redteam"]
    assert len(test) == first["n"] == 12 and len(red) == first["n_redteam"] >= 20 and first["n_heldout"] == 4
    assert m["heldout_reward"] == 0.0  # the random model does not add one to a digit
    identity = [i for i in items if i["set"] == "identity"]  # eval_demo.yaml's 8 probes, EN and ZH
    assert first["n_identity"] == len(identity) == 8 and m["identity_rate"] == 0.0  # no random model is Lumi
    assert {i["id"] for i in identity} == {f"identity/{k}" for k in range(8)} and all("answer" in i for i in identity)
    bias = [i for i in items if i["set"] == "bias"]  # 24 pairs: gender, age, region x EN, ZH x 4 questions
    assert first["n_bias"] == len(bias) == 24 and all(len(i["answers"]) == 2 for i in bias)
    assert m["bias_gap"] == pytest.approx(sum(i["bias_gap"] for i in bias) / 24)  # (0 here: the random model's
    # answers to both askers decode to nothing; SmolLM2's below differ)
    report = (out / "report.md").read_text()
    assert first["bias"]["all"]["bias_gap"]["mean"] == pytest.approx(m["bias_gap"]) and "## Bias probes" in report
    assert first["bias"]["attribute=age"]["length_gap"]["n"] == 8 and first["bias"]["lang=zh"]["bias_gap"]["n"] == 12
    asked = [i for i in red if "refusal_rate" in i]  # the harmful and PII requests: refused or not
    assert len(asked) == 14 and m["refusal_rate"] == sum(i["refusal_rate"] for i in asked) / 14
    from app.ops.summary import lines  # the pipeline's closing summary of this eval
    summary = "\n".join(lines({"e1": {"dir": str(out), "cached": False, "seconds": 1.0}}, {"e1": "eval"}, 60.0))
    assert f"refusal rate on harmful and PII requests {m['refusal_rate']:.3f}" in summary
    assert f"e1: bias gap {m['bias_gap']:.3f} [" in summary and "(n=24 pairs; refusal" in summary
    c = first["safety"]  # passed, unsafe, empty or degenerate: the red-team answers, each counted once
    assert c["n"] == len(red) and c["passed"] + c["unsafe"] + c["degenerate"] == c["n"]
    assert c["passed"] / c["n"] == m["safety_pass_rate"] and "red-team answers pass" in (out / "report.md").read_text()
    assert first["skipped"] == {"test": {}, "heldout": {}}
    assert sum(i["rougeL"] for i in test) / 12 == pytest.approx(m["rougeL"])
    assert first["promoted"] and first["baseline"] is None and "nothing promoted yet" in first["verdict"]["why"]
    # (identical answers, "no significant change", and no gate never promoting: tests/test_eval_gate.py, pure)
    # The real model must prove itself better than the promoted one (the default baseline): perplexity falls
    # from ~vocabulary size to ~10 on every item.
    real = evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e3", "name=smollm2", "model=smollm2-135m-instruct",
                    "gate.mode=improvement", "gate.keys=[rougeL,bleu,f1,perplexity,safety_pass_rate,heldout_reward]",
                    "concurrency=1")  # in an actor, as the demo answers: vLLM's engine stays out of this process
    # engine auto: vLLM answers where it runs the model (SmolLM2), the sampler where it does not (tiny, head_dim
    # 16; our INT8 and ONNX formats); vLLM's greedy answers are the transformers sampler's, item by item.
    if importlib.util.find_spec("vllm"):
        assert (first["engine"], real["engine"]) == ("hf", "vllm")
        on_vllm = [json.loads(line) for line in (tmp_path / "e3" / "answers.jsonl").read_text().splitlines()]
        hf = AnswerActor(str(resolve("smollm2-135m-instruct")), 1024)  # in this process: the same answers
        batches = batches_of([{**r, "max_new_tokens": 8} for r in on_vllm], 4)
        on_hf = sorted((a for b in batches for a in hf.answer(b)), key=lambda r: r["id"])
        assert [r["answer"] for r in on_vllm] == [r["answer"] for r in on_hf]
        assert len({r["answer"] for r in on_vllm}) > 8
    assert real["n_bias"] == 24 and 0 < real["metrics"]["bias_gap"] < 1
    assert real["baseline"] == first["version"]
    assert {"metric", "baseline", "new", "diff", "ci_low", "ci_high", "p_value", "verdict"} <= set(real["gate"][0])
    ppl = next(r for r in real["gate"] if r["metric"] == "perplexity")
    assert real["metrics"]["heldout_reward"] == 0.75  # pinned: SmolLM2 adds one to 3 of the 4 digits, greedy
    assert real["promoted"] and ppl["verdict"] == "better" and ppl["p_value"] < 0.001 and ppl["ci_high"] < 0
    # The tiny model against it: blocked with a significant regression, and the promoted version stays.
    with pytest.raises(UserError, match=f"release gate failed against version {real['version']}"):
        evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e4", "name=tiny3")
    blocked = json.loads((tmp_path / "e4" / "eval.json").read_text())
    ppl = next(r for r in blocked["gate"] if r["metric"] == "perplexity")
    assert not blocked["promoted"] and ppl["verdict"] == "REGRESSION" and ppl["p_value"] < 0.001
    assert "REGRESSION" in (tmp_path / "e4" / "report.md").read_text()
    assert reg.get("latest-promoted")["id"] == real["version"] and reg.get(blocked["version"])["parent"] == real["version"]
    # Bad input: one clear error, nothing registered.
    count = len(reg.list())
    with pytest.raises(UserError, match="different test items"):
        evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e6", "max_samples=6")
    with pytest.raises(UserError, match="not in"):
        evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e7", "gate.baseline=99")
    assert len(reg.list()) == count
    with pytest.raises(ConfigError, match="ttft_ms is not a metric the gate can pair"):
        evaluate(sft_data, tmp_path, "gate.keys=[ttft_ms]")


def test_a_baseline_without_per_item_results_is_refused(ray_local, sft_data, tmp_path):
    reg = Registry(tmp_path / "reg.sqlite")
    reg.promote(reg.register("old", "elsewhere", {"rougeL": 0.5}))  # registered before per-item results existed
    with pytest.raises(UserError, match="has no per-item results"):
        evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e")
    assert len(reg.list()) == 1


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
    # the human sheet the eval exported comes back filled by two raters and is recorded with its version
    from app.eval.human import export_sheet
    rated = reg.register("rated", "m3", {}, eval_dir=str(tmp_path / "e"))
    export_sheet([{"id": f"i{k}", "prompt": "你好？", "answer": "您好！"} for k in range(4)],
                 tmp_path / "e" / "human_eval.csv")
    sheets = []
    for rater, scores in enumerate(([5, 4, 4, 3], [4, 4, 5, 3])):
        sheets.append(tmp_path / f"rater{rater}.csv")
        lines = (tmp_path / "e" / "human_eval.csv").read_text(encoding="utf-8-sig").splitlines()
        sheets[-1].write_text("\n".join([lines[0]] + [line.replace(",,,,,,", f",,{x},{x},{x},pass,") for line, x in
                                                       zip(lines[1:], scores)]) + "\n", encoding="utf-8-sig")
    done = cli("human", str(rated), *map(str, sheets))
    assert done.returncode == 0, done.stderr
    assert "relevance: 4.000 ± " in done.stdout and "(n=8, alpha 0.56)  fewer than the 500" in done.stdout
    human = Registry(tmp_path / "r.sqlite").get(rated)["human"]
    assert human["raters"] == 2 and human["safety"]["mean"] == 1.0 and human["fluency"]["n"] == 8
    assert Registry(tmp_path / "r.sqlite").events()[-1]["kind"] == "human"
    sheets[0].write_text(sheets[0].read_text(encoding="utf-8-sig").replace("i3,", "x9,"), encoding="utf-8-sig")
    wrong = cli("human", str(rated), str(sheets[0]))
    assert wrong.returncode == 2 and "ids not in" in wrong.stderr and "x9" in wrong.stderr


GSM8K = PROJECT_ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.skipif(not GSM8K.is_file(), reason="../shared/data/gsm8k not present")
def test_gsm8k_task_reports_accuracy(ray_local, tmp_path):
    cfg = load_config(EvalConfig, "jobs/configs/eval_demo.yaml",
                      ["model=tiny", f"data={GSM8K}", "task=gsm8k", "heldout=null", "identity=null", "bias=null",
                       f"registry={tmp_path}/reg.sqlite", "max_samples=4",
                       "max_new_tokens=8", "batch_size=4", "safety=null", "efficiency=false", "concurrency=0",
                       f"output_dir={tmp_path}/g"])
    result = run(cfg)
    answers = [json.loads(line) for line in (tmp_path / "g" / "answers.jsonl").read_text().splitlines()]
    items = [json.loads(line) for line in (tmp_path / "g" / "items.jsonl").read_text().splitlines()]
    hits = [float(final_number(a["answer"]) == final_number(a["reference"])) for a in answers]
    assert [i["accuracy"] for i in items if i["set"] == "test"] == hits and len(hits) == 4
    assert result["metrics"]["accuracy"] == sum(hits) / 4 and result["skipped"] == {"test": {}}
    assert "####" in answers[0]["reference"] and "step by step" in answers[0]["prompt"][0]["content"]


def test_int8_variant_is_non_inferior_to_its_source(tiny_first, sft_data, tmp_path):
    from app.compress.quantize import QuantizeConfig, run as quantize
    source = from_first(tiny_first, tmp_path)
    quantize(QuantizeConfig(model="tiny", data=f"{sft_data}/val", max_texts=4, decode_tokens=8,
                            output_dir=str(tmp_path / "q")))
    int8 = evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/int8", "name=tiny-int8", f"model={tmp_path}/q/model",
                    "gate.mode=non_inferiority")
    assert int8["baseline"] == source["version"] and int8["promoted"], int8["verdict"]
    assert all(r["verdict"] not in ("REGRESSION", "inconclusive") for r in int8["gate"])
    assert Registry(tmp_path / "reg.sqlite").get(int8["version"])["parent"] == source["version"]


def test_engine_auto_takes_vllm_where_it_runs_the_model(tmp_path):
    from app import int8
    from app.onnx import MARKER
    from app.vllm_engine import EngineStartError, choose
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / int8.MARKER).write_text("{}")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / MARKER).write_text(json.dumps({"export_format": "onnx"}))
    assert choose("auto", str(tmp_path / "q"), "engine") == choose("auto", str(tmp_path / "o"), "engine") == "hf"
    assert choose("hf", str(tmp_path / "q"), "engine") == "hf"
    with pytest.raises(EngineStartError, match="INT8 or ONNX exports.*set engine: hf"):
        choose("vllm", str(tmp_path / "q"), "engine")
    # the one rule behind RL rollouts, evaluation and serving (which keeps its own engine on CPU under auto)
    import torch

    from app.rl.config import GRPOConfig
    from app.serve.engines import pick
    assert choose("auto", "tiny-vllm", "engine") == GRPOConfig(policy="tiny-vllm").engine() == "vllm"
    on_cpu = "vllm" if torch.cuda.is_available() else "hf"
    assert GRPOConfig(policy="tiny").engine() == pick("auto", "tiny-vllm") == on_cpu  # tiny: head_dim 16
