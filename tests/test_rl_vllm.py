"""RL rollouts on vLLM (the CPU build `make setup` installs): rollout actors with a vLLM engine load every
published version through vLLM's in-place reload, and each load is checked on a probe: the engine's log-probs
of a fixed sequence must be the learner's. Full and LoRA policies, tied and untied embeddings; a stale engine
is caught; a seeded GRPO run with bf16 rollouts and truncated importance sampling learns and reproduces."""
from __future__ import annotations

import json

import pytest
import ray
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow
VLLM = {"kv_cache_mb": 64, "max_model_len": 512}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _perturbed(model, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (p.dim() > 1 or "lora" in name):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


CASES = {"full-tied": ("tiny-vllm", None), "full-untied": ("tiny-vllm-untied", None), "lora": ("tiny-vllm", LORA)}


@pytest.fixture(scope="module")
def engines(ray_local):
    """The three cases' rollout actors, started together (an engine start is mostly one core's work)."""
    from app.models import resolve
    from app.rl.actors import RolloutActor
    return {case: RolloutActor.options(num_cpus=0).remote(str(resolve(alias)), 0, lora, "vllm", vllm=VLLM)
            for case, (alias, lora) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_vllm_rollouts_sample_the_synced_policy(engines, case):
    """After a sync the engine gives the learner's log-probs (probe and sampled tokens, to 1e-4 in float32),
    greedy answers are the learner's own, an end token closes its response; an engine still on the old
    version is refused by the probe check."""
    from app.models import resolve
    from app.rl.actors import _load_policy, policy_weights
    from app.rl.rollout import probe_logprobs, response_logprobs, weights_checksum
    from app.rl.sync import Published, SyncNotApplied, _check
    from app.sampler import sample
    alias, lora = CASES[case]
    policy, tok = _load_policy(str(resolve(alias)), 0, lora)
    actor = engines[case]
    probe = tok.apply_chat_template([{"role": "user", "content": "Where is my parcel? 我的包裹在哪里？"}],
                                    add_generation_prompt=True, return_dict=True)["input_ids"]
    for version, seed in ((1, 1), (2, 2)):
        before = ray.get(actor.probe.remote(probe))  # the engine, still on the previous version
        policy = _perturbed(policy, 0.5 if lora else 0.05, seed)
        policy.eval()
        state = policy_weights(policy, lora=bool(lora))
        pub = Published(version, None, weights_checksum(state), 0, probe, probe_logprobs(policy, probe), 1e-3)
        with pytest.raises(SyncNotApplied, match=f"policy v{version} loaded but not in effect"):
            _check({"version": version, "checksum": pub.checksum, "probe": before}, pub)
        status = ray.get(actor.load_weights.remote(version, state, pub.checksum, probe))
        assert _check(status, pub) < 1e-4
    prompts = [probe, probe[:5]]
    batch = ray.get(actor.generate.remote(prompts, 2, 10, 1.0, 1.0, 7, n=3))
    assert batch["sequences"].shape[0] == 6 and batch["group_size"] == 3 and batch["version"] == 2
    with torch.no_grad():
        learner = response_logprobs(policy, batch)[0]
    assert float((learner - batch["rollout_logprobs"]).abs().max()) < 1e-4
    greedy = ray.get(actor.generate.remote(prompts, 2, 8, 0.0, 1.0, 0))
    exact = sample(policy, prompts, 8, [tok.eos_token_id], pad_id=tok.pad_token_id)
    assert torch.equal(greedy["sequences"], exact["sequences"])
    again = ray.get(actor.generate.remote(prompts, 2, 10, 1.0, 1.0, 7, n=3))  # seeded: the same samples
    assert torch.equal(again["sequences"], batch["sequences"])
    ray.kill(actor)


def test_a_model_vllm_cannot_run_fails_at_start_in_one_line():
    from app.models import resolve
    from app.vllm_engine import EngineStartError, start_llm
    with pytest.raises(EngineStartError, match=r"head_dim 16.*set rollout_engine: hf"):
        start_llm(str(resolve("tiny")), 0, kv_cache_mb=64, max_model_len=256)


def test_grpo_on_vllm_bf16_rollouts_learns_with_checked_syncs(ray_local, prompts_file, tmp_path):
    """grpo_tiny.yaml on vLLM actors sampling in bfloat16, the learners in float32 with truncated importance
    sampling: every sync passes the probe check, the gap between sampler and learner is logged, reward
    rises; seeded, so its figures are pinned."""
    from app.config import load_config
    from app.rl.grpo import GRPOConfig, run
    out = tmp_path / "grpo"
    cfg = load_config(GRPOConfig, "jobs/configs/grpo_tiny.yaml", [
        f"prompts={prompts_file}", f"output_dir={out}", "policy=tiny-vllm", "rollout_engine=vllm",
        "rollout_precision=bfloat16", "vllm.kv_cache_mb=64", "vllm.max_model_len=512", "checkpoint_every=0",
        "colocate=false"])  # reference and reward each in its own actor (the tiny configs colocate them)
    assert cfg.tis() == 2.0 and cfg.sync_tolerance() == 0.25
    summary = run(cfg)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["policy_version"] for s in steps] == list(range(1, 9))
    assert all(s["sampled_versions"] == [s["policy_version"] - 1] for s in steps)
    assert all(0 < s["sync_probe_gap"] < 0.01 for s in steps)          # bf16 engine vs float32 learner
    assert all(1e-4 < s["sync_logprob_gap"] < 0.1 for s in steps)     # what TIS corrects
    assert all(0 <= s["tis_capped"] < 0.05 for s in steps)
    first = sum(s["reward_mean"] for s in steps[:2]) / 2
    last = sum(s["reward_mean"] for s in steps[-2:]) / 2
    assert last > first + 0.05, (first, last)
    assert summary["policy_version"] == 8
    # pinned (this seed, per-row seeded vLLM sampling): the first and last training-batch rewards
    assert steps[0]["reward_mean"] == pytest.approx(0.0051, abs=1e-3)
    # (vLLM's CPU bf16 kernels are not always bit-reproducible from run to run: 0.2021 and 0.2130 seen at step 8
    # with two rollout actors; 0.1109 twice with one)
    assert steps[-1]["reward_mean"] == pytest.approx(0.111, abs=0.02)
