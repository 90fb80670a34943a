"""The release gate's decisions (app/eval/gate.py) on planted per-item results and a real registry file: which
baseline, which keys, promoted or not, and the one-line refusals. Pure: no model, no Ray."""
import pytest

from app.config import ConfigError, UserError, load_config
from app.eval.evaluate import EvalConfig
from app.eval.gate import DEFAULT_KEYS, GateConfig, decide, find_baseline
from app.registry import Registry


def items(rouge: list[float], passes: list[float]) -> list[dict]:
    return ([{"id": f"t{i:03d}", "set": "test", "rougeL": r} for i, r in enumerate(rouge)]
            + [{"id": f"heldout/m{i:03d}", "set": "heldout", "heldout_reward": p} for i, p in enumerate(passes)])


def registered(reg: Registry, items_: list[dict], keys, promote=True) -> dict:
    """A version as jobs.eval leaves it: registered with its config and verdict, promoted if it passed."""
    version = reg.register("v", "model", {}, {"gate": {"keys": keys}}, verdict={"keys": keys} if keys else {})
    if promote:
        reg.promote(version)
    return reg.get(version)


N = 64
SOURCE = items([0.5] * N, [1.0] * 32 + [0.0] * 32)
ONE_FLIP = items([0.5] * N, [1.0] * 31 + [0.0] * 33)  # one held-out item lost: what the demo's INT8 did


def test_the_same_results_pass_and_a_planted_regression_is_blocked(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    base = registered(reg, SOURCE, DEFAULT_KEYS)
    same = decide(GateConfig(keys=["rougeL", "heldout_reward"]), SOURCE, base, SOURCE, reg, None)
    assert same["passed"] and {r["verdict"] for r in same["rows"]} == {"no significant change"}
    worse = items([0.3] * N, [1.0] * 32 + [0.0] * 32)
    blocked = decide(GateConfig(keys=["rougeL"]), worse, base, SOURCE, reg, None)
    row = blocked["rows"][0]
    assert not blocked["passed"] and row["verdict"] == "REGRESSION" and row["p_value"] < 0.001
    assert not decide(GateConfig(mode="improvement", keys=["rougeL"]), SOURCE, base, SOURCE, reg, None)["passed"]


def test_keys_baseline_gates_a_variant_where_its_source_was_judged(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    cfg = GateConfig(mode="non_inferiority", keys="baseline")
    # Its source was promoted on ROUGE-L alone: one lost pass/fail item is reported, not a key.
    source = registered(reg, SOURCE, ["rougeL"])
    decision = decide(cfg, ONE_FLIP, source, SOURCE, reg, None)
    assert decision["keys"] == ["rougeL"] and decision["passed"], decision["why"]
    # A source promoted on the held-out reward holds its variant to it: at n=64 one flip is not non-inferior.
    source = registered(reg, SOURCE, ["rougeL", "heldout_reward"])
    decision = decide(cfg, ONE_FLIP, source, SOURCE, reg, None)
    row = next(r for r in decision["rows"] if r["metric"] == "heldout_reward")
    assert not decision["passed"] and row["verdict"] == "inconclusive" and row["ci_low"] < -0.025
    # ...and a variant of that variant inherits the keys its verdict recorded.
    assert decide(cfg, SOURCE, {**source, "config": {}}, SOURCE, reg, None)["keys"] == ["rougeL", "heldout_reward"]
    with pytest.raises(UserError, match="version 3 records no gate keys"):
        decide(cfg, SOURCE, registered(reg, SOURCE, None), SOURCE, reg, None)
    assert decide(cfg, SOURCE, None, None, Registry(tmp_path / "new.sqlite"), None)["keys"] == DEFAULT_KEYS


def test_no_gate_never_replaces_a_promoted_version_and_bad_input_is_one_clear_line(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    assert find_baseline(reg, "latest-promoted") is None and find_baseline(reg, None) is None
    first = decide(GateConfig(), SOURCE, None, None, reg, None)
    assert first["passed"] and "nothing promoted yet" in first["why"]
    base = registered(reg, SOURCE, DEFAULT_KEYS)
    ungated = decide(GateConfig(baseline=None), SOURCE, None, None, reg, None)
    assert not ungated["passed"] and f"never promoted over version {base['id']}" in ungated["why"]
    with pytest.raises(UserError, match="not in"):
        find_baseline(reg, "99")
    with pytest.raises(UserError, match="different test items"):
        decide(GateConfig(keys=["rougeL"]), items([0.5] * 10, []), base, SOURCE, reg, None)
    with pytest.raises(UserError, match="evaluated on other data"):
        decide(GateConfig(), SOURCE, {**base, "data_sha256": "a" * 64}, SOURCE, reg, "b" * 64)
    for bad, message in (("gate.keys=[ttft_ms]", "ttft_ms is not a metric the gate can pair"),
                         ("gate.keys=[]", "gate.keys is empty"), ("gate.kyes=[rougeL]", "kyes")):
        with pytest.raises(ConfigError, match=message):
            load_config(EvalConfig, "jobs/configs/eval_demo.yaml", [bad])
