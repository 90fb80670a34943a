"""Actor-based PPO on a real local Ray: checked weight sync, stale-version refusal, reward rising on a toy
reward (tests.rl_plugins.newline_share) with the KL bounded."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import ray
import torch


def test_rollout_actor_refuses_stale_versions_and_bad_checksums(ray_local):
    from app.rl.actors import RolloutActor
    from app.rl.sync import StaleWeights
    from app.rl.rollout import weights_checksum
    actor = RolloutActor.options(num_cpus=0).remote("tiny")
    with pytest.raises(StaleWeights, match="holds policy v0"):
        ray.get(actor.generate.remote([[1, 2, 3]], 1, 4, 1.0, 1.0, 0))
    from app.models import load_policy
    state = load_policy("tiny")[0].state_dict()
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        ray.get(actor.load_weights.remote(1, state, "0" * 64))
    status = ray.get(actor.load_weights.remote(1, state, weights_checksum(state)))
    assert status == {"version": 1, "checksum": weights_checksum(state)}
    batch = ray.get(actor.generate.remote([[1, 2, 3], [4, 5]], 1, 4, 1.0, 1.0, 0))
    assert batch["version"] == 1 and batch["sequences"].shape == (2, 3 + 4)
    assert batch["response_mask"].shape == batch["rollout_logprobs"].shape == (2, 4)
    ray.kill(actor)


def test_lora_rollouts_merge_each_adapter_and_int8_copies_stay_close(ray_local):
    """A LoRA sync is merged into the rollout actor's plain model: its greedy answers equal the peft policy's
    own. With precision int8 the actor samples from a re-quantized copy: the learner's log-probs of those
    tokens differ from the sampler's (what truncated importance sampling corrects), but only a little;
    held-out answers (full_precision) still come from the exact policy."""
    from app.rl.actors import RolloutActor, _load_policy, policy_weights
    from app.train.losses import tis_weights
    from app.rl.rollout import response_logprobs, weights_checksum
    from app.sampler import sample
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    policy, tok = _load_policy("tiny", 0, lora)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    state = policy_weights(policy, lora=True)
    prompts, eos = [[1, 2, 3], [4, 5, 6, 7]], [tok.eos_token_id]
    exact = sample(policy, prompts, 6, eos, pad_id=tok.pad_token_id)
    actor = RolloutActor.options(num_cpus=0).remote("tiny", 0, lora, "hf", "int8")
    ray.get(actor.load_weights.remote(1, state, weights_checksum(state)))
    held = ray.get(actor.generate.remote(prompts, 1, 6, 0.0, 1.0, 0, full_precision=True))
    assert torch.equal(held["sequences"], exact["sequences"])  # the merged full-precision copy
    for full_precision in (True, False):
        batch = ray.get(actor.generate.remote(prompts, 1, 6, 1.0, 1.0, 3, n=4, full_precision=full_precision))
        assert batch["sequences"].shape[0] == 8 and batch["group_size"] == 4
        with torch.no_grad():
            learner = response_logprobs(policy, batch)[0]
        gap = float((learner - batch["rollout_logprobs"]).abs().max())
        _, capped = tis_weights(learner, batch["rollout_logprobs"], batch["response_mask"])
        assert float(capped) == 0.0
        assert gap < 1e-4 if full_precision else 1e-4 < gap < 0.1, (full_precision, gap)
    ray.kill(actor)


@pytest.fixture(scope="module")
def toy_run(ray_local, prompts_file, tmp_path_factory):
    """The seeded 8-step PPO run of ppo_tiny.yaml: (cfg, summary, its metrics.jsonl rows)."""
    from app.config import load_config
    from app.rl.ppo import PPOConfig, run
    out = tmp_path_factory.mktemp("ppo")
    cfg = load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", [f"prompts={prompts_file}", f"output_dir={out}",
                                                                "checkpoint_every=0"])  # (resume: its own test)
    return cfg, run(cfg), _steps(out)


@pytest.mark.slow
def test_ppo_raises_toy_reward_with_versioned_sync(toy_run):
    from app.models import load_policy
    from app.rl.rollout import weights_checksum
    cfg, summary, steps = toy_run
    assert [s["policy_version"] for s in steps] == list(range(1, cfg.steps + 1))
    assert len({s["checksum"] for s in steps}) == cfg.steps           # every sync carried new weights
    assert all(s["sync_logprob_gap"] < 1e-4 for s in steps)            # rollouts sampled the trained policy
    first = sum(s["reward_mean"] for s in steps[:2]) / 2
    last = sum(s["reward_mean"] for s in steps[-2:]) / 2
    assert last > first + 0.05 and max(s["kl"] for s in steps) < 10
    assert (Path(summary["final"]).parent / "ppo_curve.png").exists() and summary["policy_version"] == cfg.steps
    # the exported model is the last policy the rollout actors were given, weight for weight
    assert weights_checksum(load_policy(summary["final"])[0].state_dict()) == summary["checksum"]
    assert ray.available_resources().get("CPU", 0) >= 1.5  # actors and placement group released
    from ray.util.state import list_actors  # colocate: reference, reward and critic were one actor's
    hosts = list_actors(ray.get_runtime_context().gcs_address, filters=[("name", "=", "ppo-tiny-scorers")],
                        detail=True)  # (the session's Ray by address: test_submit's cluster may run beside it)
    assert hosts and {h.class_name for h in hosts} == {"ScorersActor"}


def _steps(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# vLLM rollout actors where vLLM is installed (make setup), else app.sampler's: the same assertions hold
VLLM_ROLLOUTS = ["policy=tiny-vllm", "rollout_engine=vllm", "vllm.kv_cache_mb=64", "vllm.max_model_len=512"] \
    if importlib.util.find_spec("vllm") else []


@pytest.mark.slow
def test_lora_learner_group_survives_a_killed_rollout_actor(ray_local, prompts_file, tmp_path):
    """LoRA policy on two DeepSpeed (ZeRO-2) learner ranks, adapter-only sync into vLLM rollout engines (merged
    there, checked on the probe); a rollout actor is killed mid-run: it restarts (a new engine), is reloaded
    and re-samples its chunk; every prompt is used exactly once per pass."""
    import threading
    import time
    from app.config import load_config
    from app.rl.ppo import PPOConfig, run
    out = tmp_path / "ppo"
    cfg = load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", [
        f"prompts={prompts_file}", f"output_dir={out}", "name=kill", "steps=3", "scaling.learners=2", "scaling.zero_stage=2",
        "rollout_actors=1", "prompts_per_actor=8",  # one engine: the killed one comes back as the only sampler
        "lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}", "optim.lr=1e-3", "checkpoint_every=0",
        *VLLM_ROLLOUTS])
    result: list = []
    worker = threading.Thread(target=lambda: result.append(run(cfg)))
    worker.start()
    while worker.is_alive() and not ((out / "metrics.jsonl").exists() and _steps(out)):
        time.sleep(0.2)
    victim = ray.get_actor("ppo-kill-rollout-0")
    ray.kill(victim, no_restart=False)
    worker.join(timeout=600)
    assert result, "the run did not finish"
    from ray.util.state import list_actors
    [state] = list_actors(ray.get_runtime_context().gcs_address, filters=[("actor_id", "=", victim._actor_id.hex())],
                          detail=True)
    assert state.num_restarts >= 1  # it came back (then the controller or the next sync reloaded it)
    steps = _steps(out)
    assert [s["policy_version"] for s in steps] == [1, 2, 3]
    assert len({s["checksum"] for s in steps}) == 3
    assert all(s["sampled_versions"] == [s["policy_version"] - 1] for s in steps)  # never a stale sample
    for n, s in enumerate(steps):  # the step's 8 prompts of the 16, each once a pass: none lost or repeated
        assert sorted(s["prompt_ids"]) == sorted(f"p{(8 * n + i) % 16}" for i in range(8))
    assert all(s["sync_mb"] < 0.1 for s in steps)  # only the adapter travels (the full tiny policy: 26 MB)
    assert all(s["sync_probe_gap"] < 1e-4 for s in steps)  # the engines hold the merged policy
    from app.models import load_policy
    assert load_policy(result[0]["final"])[0].config.num_hidden_layers == 2  # merged, plain HF directory


@pytest.mark.slow
def test_resume_continues_at_the_checkpointed_step_exactly(toy_run, prompts_file, tmp_path):
    """Stopped after step 1, the same command with steps=2 resumes there and ends on the weights the
    uninterrupted run (toy_run: the same seeded config, 8 steps) published at step 2."""
    from app.config import load_config
    from app.rl.ppo import PPOConfig, run
    _, straight, straight_steps = toy_run
    args = [f"prompts={prompts_file}", f"output_dir={tmp_path / 'b'}"]
    run(load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", args + ["steps=1"]))
    resumed = run(load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", args + ["steps=2"]))
    assert resumed["resumed_from"] == 1 and straight["resumed_from"] is None
    assert [s["step"] for s in _steps(tmp_path / "b")] == [1, 2]
    assert resumed["checksum"][:12] == straight_steps[1]["checksum"]  # same weights as the uninterrupted run


def test_ppo_configs_parse_and_bad_keys_are_named():
    from pathlib import Path
    from app.config import ConfigError, load_config
    from app.rl.ppo import PPOConfig
    for path in sorted(Path("jobs/configs").glob("ppo_*.yaml")):
        load_config(PPOConfig, path)
    gpu = load_config(PPOConfig, "jobs/configs/ppo_8b_gpu.yaml")
    assert gpu.engine() == "vllm" and gpu.gpus["learner"] == 1
    with pytest.raises(ConfigError, match="gpus"):
        load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", ["gpus={actor: 1}"])
    with pytest.raises(ConfigError, match="rollout_precision bfloat16 is for the vllm rollout engine"):
        load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", ["rollout_precision=bfloat16"])
    with pytest.raises(ConfigError, match="int8 is for the hf rollout engine"):
        load_config(PPOConfig, "jobs/configs/ppo_8b_gpu.yaml", ["rollout_precision=int8"])
    with pytest.raises(ConfigError, match="must be >= scaling.learners"):
        load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", ["scaling.learners=8"])


def test_sampler_resamples_the_chunk_of_an_actor_killed_mid_generation(ray_local, prompts_file):
    """Killed with its generate call in flight: the actor restarts at v0, is reloaded with the published
    version and samples the same chunk again with the same seed."""
    from app.config import load_config
    from app.models import load_tokenizer
    from app.rl.actors import LearnerActor, RolloutActor
    from app.rl.controller import _prompts
    from app.rl.sync import Sampler, publish, sync
    from app.rl.ppo import PPOConfig
    cfg = load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", [f"prompts={prompts_file}", "max_new_tokens=6"])
    data, _ = _prompts(str(prompts_file), load_tokenizer("tiny"))
    rollouts = [RolloutActor.options(num_cpus=0, max_restarts=2).remote("tiny", 0) for _ in range(2)]
    learner = LearnerActor.options(num_cpus=0).remote("tiny", 0, 1, 1e-4, 0.2, 0.0)
    ray.get(learner.setup.remote("127.0.0.1", ray.get(learner.address.remote())[1]))
    pub = publish(learner, 3, 60)
    sync(rollouts, pub, 60, 2)
    sampler = Sampler(cfg.sampling_plan(), rollouts, data)
    reference = sampler.collect(sampler.launch(1, 3), pub)
    pending = sampler.launch(1, 3)
    ray.kill(rollouts[0], no_restart=False)
    batches = sampler.collect(pending, pub)
    assert sampler.restarts == 1 and [b["version"] for b in batches] == [3, 3]
    assert ray.get(rollouts[0].status.remote()) == {"version": 3, "checksum": pub.checksum}
    for again, first in zip(batches, reference):  # the same prompts, the same samples
        assert torch.equal(again["sequences"], first["sequences"])
    for actor in rollouts + [learner]:
        ray.kill(actor)
