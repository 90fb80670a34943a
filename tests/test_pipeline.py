"""The pipeline DAG: references become edges, keys change with configs and inputs, and through the real
`python -m jobs.pipeline`: a failing stage stops it and keeps finished outputs, a re-run skips finished
stages, a changed config re-runs only what depends on it, `--from` forces a stage and its dependents (its
stages joining a running two-node cluster through RAY_ADDRESS); with `parallel`, independent stages overlap
(on the pipeline's own local Ray)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import ConfigError, load_config
from app.ops.pipeline import PipelineConfig, StageConfig, check, check_stage, dependents, edges, order, stage_key


def stages(**spec) -> dict[str, StageConfig]:
    return {name: StageConfig(job="data", overrides=refs) for name, refs in spec.items()}


def test_references_are_edges_in_written_order_and_bad_graphs_fail_at_start():
    graph = stages(a=[], c=["x=${b}/test", "y=${output_dir}/r"], b=["p=${a}"], d=[])
    deps = edges(graph)
    assert deps == {"a": [], "c": ["b"], "b": ["a"], "d": []}
    assert order(deps) == ["a", "b", "c", "d"]
    assert dependents(deps, "b") == {"b", "c"}
    with pytest.raises(ConfigError, match=r"\$\{nope\} is not a stage"):
        edges(stages(a=["x=${nope}"]))
    with pytest.raises(ConfigError, match="cycle"):
        order(edges(stages(a=["x=${b}"], b=["x=${a}"])))
    graph["d"].after = ["c"]
    assert edges(graph)["d"] == ["c"] and stage_key(graph["d"], {"c": "k1"}) != stage_key(graph["d"], {"c": "k2"})
    graph["d"].after = ["e"]
    with pytest.raises(ConfigError, match="stages.d.after: e is not a stage"):
        edges(graph)
    with pytest.raises(ConfigError, match="stages.a.job: no module jobs.nosuchjob"):
        check(PipelineConfig(stages={"a": StageConfig(job="nosuchjob")}))
    with pytest.raises(ConfigError, match="--from e: not a stage"):
        check(PipelineConfig(stages=stages(a=[]), start_from="e"))
    with pytest.raises(ConfigError, match="unknown config key 'stages.a.overides'"):
        load_config(PipelineConfig, None, ["stages={a: {job: data, overides: []}}"])


def test_shipped_dags_are_valid_and_an_upstream_output_can_be_a_config():
    demo = load_config(PipelineConfig, "jobs/configs/demo.yaml")
    assert check(demo) == ["demo_data", "data", "data_prefs", "data_math", "data_prompts", "sft", "eval_base",
                           "eval_sft", "grpo", "eval_grpo", "quantize", "eval_int8", "serve"]
    assert edges(demo.stages)["quantize"] == ["data", "eval_grpo"]  # the gate comes before shipping
    assert edges(demo.stages)["serve"] == ["eval_int8"]
    alt = load_config(PipelineConfig, "jobs/configs/pipeline_alt.yaml")
    deps = edges(alt.stages)
    assert deps["sft_best"] == ["sweep"] and deps["eval_dpo"] == ["dpo", "data", "data_math", "eval_sft"]
    assert deps["ppo"] == ["sft", "reward", "data_prompts"] and deps["reward"] == ["data_prefs"]
    order_ = check(alt)
    assert order_.index("sweep") < order_.index("sft_best") and order_.index("dpo") < order_.index("eval_dpo")
    best = alt.stages["sft_best"]
    assert stage_key(best, {"sweep": "k1"}) != stage_key(best, {"sweep": "k2"})  # a new sweep, a new best.yaml
    loop = load_config(PipelineConfig, "jobs/configs/pipeline_loop.yaml")
    assert check(loop) == ["harvest", "data", "data_prefs", "sft", "dpo", "eval", "serve"]
    assert edges(loop.stages)["dpo"] == ["sft", "data_prefs"] and edges(loop.stages)["serve"] == ["eval"]
    for dag in (demo, alt, loop):  # every stage's config as its process will load it (best.yaml: when it exists)
        dirs = {"output_dir": "/p", **{n: f"/p/{n}" for n in dag.stages}}
        for name, stage in dag.stages.items():
            check_stage(name, stage, dirs)
    typo = demo.stages["grpo"].model_copy(update={"overrides": [*demo.stages["grpo"].overrides, "kl.intit=0.1"]})
    with pytest.raises(ConfigError, match=r"stages.grpo \(jobs.grpo\): unknown config key 'kl.intit'"):
        check_stage("grpo", typo, {"output_dir": "/p", **{n: f"/p/{n}" for n in demo.stages}})


def test_key_follows_config_upstream_keys_and_input_files(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"id": 1}\n')
    stage = StageConfig(job="data", config="jobs/configs/data_demo.yaml", overrides=[f"input.path={raw}", "x=${up}"])
    key = stage_key(stage, {"up": "k1"})
    assert key == stage_key(stage, {"up": "k1"})
    assert key != stage_key(stage, {"up": "k2"})  # an upstream stage changed
    assert key != stage_key(stage.model_copy(update={"overrides": [f"input.path={raw}", "x=${up}", "seed=1"]}),
                            {"up": "k1"})
    raw.write_text('{"id": 2}\n')  # the input file changed
    assert key != stage_key(stage, {"up": "k1"})
    # The YAML's own output_dir and the paths the overrides replace are not inputs.
    own = tmp_path / "own.yaml"
    own.write_text(f"output_dir: {tmp_path / 'out'}\ninput: {{path: {raw}}}\n")
    stage = StageConfig(job="data", config=str(own), overrides=["input.path=${up}/x.jsonl"])
    key = stage_key(stage, {"up": "k1"})
    (tmp_path / "out").mkdir()
    raw.write_text('{"id": 3}\n')
    assert stage_key(stage, {"up": "k1"}) == key


def pipeline(cluster: dict, tmp_path: Path, data_overrides: list[str], quant_overrides: list[str], *args: str):
    config = {"name": "t", "output_dir": str(tmp_path / "pipe"), "stages": {
        "raw": {"job": "demo_data", "overrides": ["n_dialogs=300", "n_tickets=10", "n_preferences=4", "n_prompts=4",
                                                  "n_arithmetic=4"]},
        "data": {"job": "data", "config": "jobs/configs/data_demo.yaml",
                 "overrides": ["input.path=${raw}/dialogs.jsonl", "wandb=false", *data_overrides]},
        "quant": {"job": "quantize", "overrides": ["model=tiny", "data=${data}/test", "max_texts=4",
                                                   "decode_tokens=8", *quant_overrides]}}}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "jobs.pipeline", str(path), *args], capture_output=True, text=True,
                            timeout=600, env=cluster["env"])  # its stages join the two-node cluster
    ran = {line.split()[1] for line in result.stdout.splitlines() if " running " in line}
    cached = {line.split()[1] for line in result.stdout.splitlines() if " cached " in line}
    return result, ran, cached


def stage_dirs(tmp_path: Path, stage: str) -> list[Path]:
    return sorted((tmp_path / "pipe").glob(f"{stage}-*/stage.json"))


@pytest.mark.slow
def test_pipeline_failure_caching_changes_and_from(cluster, tmp_path):
    typo, ran, _ = pipeline(cluster, tmp_path, [], ["max_textz=4"])  # every stage's config is checked before any runs
    assert typo.returncode == 2 and ran == set() and not list((tmp_path / "pipe").glob("*/stage.json"))
    assert "error: stages.quant (jobs.quantize): unknown config key 'max_textz'" in typo.stderr
    failed, ran, _ = pipeline(cluster, tmp_path, [], ["model=no-such-model"])  # fails only when it runs
    assert failed.returncode == 2 and ran == {"raw", "data", "quant"}
    assert "stage quant (jobs.quantize) failed (exit 2): error: model path not found: no-such-model" in failed.stderr
    assert len(stage_dirs(tmp_path, "raw")) == len(stage_dirs(tmp_path, "data")) == 1  # finished outputs kept
    assert not stage_dirs(tmp_path, "quant")

    fixed, ran, cached = pipeline(cluster, tmp_path, [], [])
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert ran == {"quant"} and cached == {"raw", "data"}
    assert "records in" in fixed.stdout and "total:" in fixed.stdout  # the closing summary
    first_data = json.loads(stage_dirs(tmp_path, "data")[0].read_text())

    forced, ran, cached = pipeline(cluster, tmp_path, [], [], "--from", "quant")  # the rest finished: skipped
    assert forced.returncode == 0 and ran == {"quant"} and cached == {"raw", "data"}

    changed, ran, cached = pipeline(cluster, tmp_path, ["filters.min_words=5"], [])
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert ran == {"data", "quant"} and cached == {"raw"}  # only what depends on the change
    assert len(stage_dirs(tmp_path, "data")) == 2  # the old output stays cached under its own key
    new_data = next(json.loads(p.read_text()) for p in stage_dirs(tmp_path, "data")
                    if json.loads(p.read_text())["key"] != first_data["key"])
    assert new_data["upstream"] == first_data["upstream"]  # same raw stage
    # the stable name follows the latest run: what the step-by-step commands read
    assert (tmp_path / "pipe" / "data").resolve().name == f"data-{new_data['key'][:12]}"
    assert (tmp_path / "pipe" / "data" / "train").is_dir()

    again, ran, cached = pipeline(cluster, tmp_path, ["filters.min_words=5"], [])
    assert again.returncode == 0 and ran == set() and cached == {"raw", "data", "quant"}


@pytest.mark.slow  # child processes
def test_independent_stages_run_at_once_with_parallel(tmp_path):
    spec = {"job": "demo_data", "overrides": ["n_dialogs=20", "n_tickets=2", "n_preferences=2", "n_prompts=2",
                                              "n_arithmetic=2"]}
    config = {"name": "p", "output_dir": str(tmp_path / "pipe"), "parallel": 2,
              "stages": {"a": spec, "b": {**spec, "overrides": [*spec["overrides"], "seed=1"]},
                         "c": {"job": "demo_data", "config": "${a}/absent.yaml"}}}  # fails, after a
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "jobs.pipeline", str(path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "stage c (jobs.demo_data) failed" in result.stderr
    a, b = (json.loads(next((tmp_path / "pipe").glob(f"{s}-*/stage.json")).read_text()) for s in "ab")
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]  # they overlapped
    assert not list((tmp_path / "pipe").glob("c-*/stage.json"))
