"""The PPO roles as Ray actors: Rollout (sampling), Reference (frozen policy), Reward (reward model or a
function, plus the safety penalty), Critic (values, initialised from the reward model) and Learner (one rank
of the DeepSpeed group that updates the policy). Each is a thin shell over app.rl.rollout and app.train.losses.
With `colocate: true` the reference, reward and critic share one process (ScorersActor), each called through
a Colocated handle exactly as through its own actor.

Weight sync is versioned and checked: the learner publishes (version, state, sha256) - the whole policy, or
only the LoRA adapter when the policy is LoRA; a rollout actor verifies the checksum before loading and
refuses to sample for any version but the one the controller expects, so a sync that never arrived fails
loudly instead of sampling the old policy. A restarted rollout actor comes back at version 0 and is
refused until the controller reloads the current version into it.
"""
from __future__ import annotations

import copy
import functools
import os
import socket
from types import SimpleNamespace

import ray
import torch

from app.rl import rewards
from app.train import losses
from app.rl.experience import Experience
from app.rl.rollout import merge_lora, probe_logprobs, response_logprobs, to_device, token_values, weights_checksum
from app.rl.sync import StaleWeights
from app.config import load_callable
from app.safety import SafetyCheck
from app.int8 import assign_weights, quantize_model
from app.models import load_policy
from app.models import load_tokenizer
from app.sampler import batch_of, rows_of, sample
from app import vllm_engine
from app.train.checkpoints import rng_state
from app.train.checkpoints import set_rng_state
from app.train.deepspeed import build_ds_config, import_deepspeed


def _device() -> torch.device:
    """The GPU Ray gave this actor (it sees only that one), else the CPU."""
    return torch.device("cuda" if ray.get_gpu_ids() else "cpu")


def _load_policy(path: str, seed: int, lora: dict | None = None):
    """(policy, tokenizer); with `lora` (r, alpha, dropout, target_modules) the base wrapped in a LoRA adapter."""
    torch.manual_seed(seed)
    model, tokenizer = load_policy(path)
    model.to(_device())
    if lora:
        from peft import get_peft_model

        from app.train.model import peft_config  # here: peft costs every other actor process ~1.5 s to import
        model = get_peft_model(model, peft_config("lora", lora["r"], lora["alpha"], lora["dropout"],
                                                  lora["target_modules"], 0))
    return model, tokenizer


def policy_weights(model, lora: bool) -> dict[str, torch.Tensor]:
    """What a sync carries: the LoRA adapter only, or every weight."""
    if lora:
        from peft import get_peft_model_state_dict
        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@ray.remote
class RolloutActor:
    """Samples with app.sampler on a plain copy of the policy, or on an INT8 weight-only copy of it
    (`precision="int8"`, re-quantized at each sync; held-out measurements still use the full-precision copy),
    or with a vLLM engine (`engine="vllm"`, CPU or GPU; `precision` float32 or bfloat16). A LoRA policy's
    adapter is merged into the base at each sync (vLLM reloads the whole merged model: its in-place reload
    re-processes whole layers, and a layer given only some of its weights is not what the learner holds).
    After each load the actor reports the log-probs of a probe sequence, which app.rl.sync compares with the
    learner's."""

    def __init__(self, model_path: str, seed: int = 0, lora: dict | None = None, engine: str = "hf",
                 precision: str = "float32", threads: int = 1, vllm: dict | None = None):
        torch.set_num_threads(threads)
        self.llm, self.fast, self.base = None, None, None
        self.scaling = lora["alpha"] / lora["r"] if lora else None
        if engine == "vllm":
            self.llm = vllm_engine.start_llm(model_path, seed, dtype=precision, **(vllm or {}))
            self.tokenizer = load_tokenizer(model_path)
            if lora:  # every base weight: the merged model is reloaded whole
                self.base = {k: v.clone() for k, v in load_policy(model_path)[0].state_dict().items()}
        else:
            self.model, self.tokenizer = _load_policy(model_path, seed)
            if lora:  # the targets' base weights, to merge each synced adapter into
                self.base = {f"{name}.weight": m.weight.detach().clone() for name, m in self.model.named_modules()
                             if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in lora["target_modules"]}
            if precision == "int8":
                self.fast = quantize_model(copy.deepcopy(self.model))
        self.checksum, self.version, self.check = "initial", 0, None
        self.eos = sorted({self.tokenizer.eos_token_id})

    def load_weights(self, version: int, state: dict, checksum: str, probe: list[int] | None = None) -> dict:
        """Load a published version; returns its version, checksum and (with `probe` token ids) the log-probs
        this actor now gives them."""
        got = weights_checksum(state)
        if got != checksum:
            raise RuntimeError(f"policy v{version}: checksum mismatch ({got[:12]} != {checksum[:12]})")
        weights = state if self.base is None else merge_lora(self.base, state, self.scaling)
        if self.llm is not None:
            self.llm.collective_rpc("reload_policy", args=({**(self.base or {}), **weights},))
            self.llm.reset_prefix_cache()  # cached KV of the old weights must not be reused
        else:
            if self.base is None:
                self.model.load_state_dict(state, strict=True)
            else:
                assign_weights(self.model, weights)
            if self.fast is not None:
                assign_weights(self.fast, weights)
        self.version, self.checksum = version, got
        return {**self.status(), **({"probe": self.probe(probe)} if probe else {})}

    def probe(self, ids: list[int]) -> list[float]:
        """Log-probs of `ids` from the weights this actor samples with."""
        if self.llm is not None:
            return vllm_engine.prompt_logprobs(self.llm, ids)
        return probe_logprobs(self.fast if self.fast is not None else self.model, ids)

    def status(self) -> dict:
        return {"version": self.version, "checksum": self.checksum}

    def generate(self, prompts: list[list[int]], expected_version: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, n: int = 1, full_precision: bool = False, safety: dict | None = None) -> dict:
        """`n` samples of each prompt (a prompt's rows together); `full_precision` samples with the
        full-precision copy even where hf rollouts are INT8 (held-out measurements). With `safety` (RLSafety's
        fields) unsafe answers are sampled again up to `max_resamples` times (`resample_unsafe`)."""
        if self.version != expected_version:
            raise StaleWeights(f"holds policy v{self.version}, asked to sample v{expected_version}")

        def draw(rows: list[list[int]], k: int, draw_seed: int) -> dict:
            pad = self.tokenizer.pad_token_id
            if self.llm is not None:
                return vllm_engine.sample(self.llm, rows, pad, self.eos, max_new_tokens, k, temperature, top_p, draw_seed)
            model = self.model if full_precision or self.fast is None else self.fast
            return to_device(sample(model, rows, max_new_tokens, self.eos, k, temperature, top_p, draw_seed, pad), "cpu")
        batch = draw(prompts, n, seed)
        if safety and safety.get("max_resamples"):
            self.check = self.check or SafetyCheck({k: safety[k] for k in ("scorer", "threshold")})
            batch = resample_unsafe(batch, prompts, draw, self.check, self.tokenizer, safety["max_resamples"], seed)
        batch["version"] = self.version
        return batch


def resample_unsafe(batch: dict, prompts: list[list[int]], draw, check: SafetyCheck, tokenizer, rounds: int,
                    seed: int) -> dict:
    """The batch with each unsafe answer replaced by a new sample of its prompt (`draw(prompts, 1, seed)`), for
    at most `rounds` rounds, each round only the rows still unsafe; counts in `resampled` (samples drawn again)
    and `unsafe_left` (rows unsafe after the last round). The rows keep their places (a group stays together)
    and each keeps the log-probs its own tokens were sampled with."""
    n = batch["group_size"]
    responses, logprobs = rows_of(batch)

    def still_unsafe(rows: list[int]) -> list[int]:
        texts = tokenizer.batch_decode([responses[i] for i in rows], skip_special_tokens=True)
        return [i for i, bad in zip(rows, check.unsafe(texts)) if bad]
    unsafe, resampled = still_unsafe(list(range(len(responses)))), 0
    for r in range(rounds):
        if not unsafe:
            break
        fresh_ids, fresh_lps = rows_of(draw([prompts[i // n] for i in unsafe], 1, seed + 7919 * (r + 1)))
        for i, ids, lps in zip(unsafe, fresh_ids, fresh_lps):
            responses[i], logprobs[i] = ids, lps
        resampled += len(unsafe)
        unsafe = still_unsafe(unsafe)
    if not resampled:
        return {**batch, "resampled": 0, "unsafe_left": len(unsafe)}
    out = batch_of(prompts, n, responses, logprobs, tokenizer.pad_token_id)
    return {**out, "resampled": resampled, "unsafe_left": len(unsafe)}


class Reference:
    def __init__(self, model_path: str, temperature: float = 1.0, threads: int = 1):
        torch.set_num_threads(threads)
        self.model, _ = _load_policy(model_path, 0)
        self.temperature = temperature

    @torch.inference_mode()
    def logprobs(self, batch: dict) -> torch.Tensor:
        return response_logprobs(self.model, to_device(batch, _device()), self.temperature)[0].cpu()


class Reward:
    """score = reward model + sum of weight * function(prompts, responses[, references]) - penalty on an
    unsafe response (app.safety.SafetyCheck with `safety`, a SafetySection's fields: a sensitive word, a PII
    leak, toxicity >= the threshold)."""

    def __init__(self, reward_model: str | None, functions: dict[str, float], penalty: float,
                 safety: dict | None = None, threads: int = 1):
        from app.train.reward import RewardModel  # (Ray Train, Ray Data, peft: only where a model scores)
        torch.set_num_threads(threads)
        self.model = RewardModel(reward_model, device=str(_device())) if reward_model else None
        self.functions = [(load_callable(name), weight) for name, weight in functions.items()]
        self.check, self.penalty = SafetyCheck(safety), penalty

    def score(self, prompts: list, responses: list[str], references: list | None = None) -> dict:
        raw = self.model.score(prompts, responses) if self.model else [0.0] * len(responses)
        for function, weight in self.functions:
            raw = [r + weight * v for r, v in zip(raw, rewards.call(function, prompts, responses, references))]
        unsafe = self.check.unsafe(responses)
        return {"reward": [r - self.penalty * u for r, u in zip(raw, unsafe)], "raw": raw, "unsafe": unsafe}


class Critic:
    def __init__(self, init_path: str, lr: float, clip: float, top_layers: int | None = None,
                 max_grad_norm: float = 1.0, threads: int = 1, value_coef: float = 0.5):
        from transformers import AutoModelForSequenceClassification

        from app.train.reward import freeze_below
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            init_path, num_labels=1, ignore_mismatched_sizes=True, use_safetensors=True).to(_device())
        freeze_below(self.model, top_layers)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.clip, self.max_grad_norm, self.value_coef = clip, max_grad_norm, value_coef

    @torch.inference_mode()
    def values(self, batch: dict) -> torch.Tensor:
        return token_values(self.model, to_device(batch, _device())).cpu()

    def update(self, batch: dict, returns: torch.Tensor, old_values: torch.Tensor) -> float:
        b = to_device({**batch, "returns": returns, "old_values": old_values}, _device())
        loss = self.value_coef * losses.value_loss(token_values(self.model, b), b["old_values"], b["returns"],
                                                   b["response_mask"], self.clip)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad()
        return float(loss.detach())

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, f"{folder}/critic.safetensors")
        torch.save(self.opt.state_dict(), f"{folder}/critic_optim.pt")

    def load(self, folder: str) -> None:
        from safetensors.torch import load_file
        self.model.load_state_dict(load_file(f"{folder}/critic.safetensors"))
        self.opt.load_state_dict(torch.load(f"{folder}/critic_optim.pt", weights_only=True))


SCORERS = {"reference": Reference, "reward": Reward, "critic": Critic}
SCORER_ACTORS = {role: ray.remote(cls) for role, cls in SCORERS.items()}  # each in its own process
RewardActor = SCORER_ACTORS["reward"]  # (also app/rl/rejection.py's)


@ray.remote
class ScorersActor:
    """The roles that score samples, in one process (`colocate: true`, as OpenRLHF's colocate flags): one
    process start, one set of imports and one CPU bundle (or GPU) instead of three; their calls run one after
    another. `roles`: {role: (args, kwargs)} of Reference, Reward and Critic."""

    def __init__(self, roles: dict[str, tuple[tuple, dict]], threads: int = 1):
        self.roles = {name: SCORERS[name](*args, threads=threads, **kwargs) for name, (args, kwargs) in roles.items()}

    def call(self, role: str, method: str, *args):
        return getattr(self.roles[role], method)(*args)


class Colocated:
    """One role of a ScorersActor, called as its own actor would be: `reference.logprobs.remote(batch)`."""

    def __init__(self, host, role: str):
        self.host, self.role = host, role

    def __getattr__(self, method: str):
        if method.startswith("__"):
            raise AttributeError(method)
        return SimpleNamespace(remote=functools.partial(self.host.call.remote, self.role, method))


@ray.remote
class LearnerActor:
    """One rank of the learner group: the policy (full or LoRA) under DeepSpeed ZeRO 0-2 across the group's
    actors (gloo on CPU, NCCL on GPU). The controller gives each rank its rows of every minibatch; DeepSpeed
    averages the gradients, clips and steps. Rank 0 answers log-prob passes and publishes the weights."""

    def __init__(self, model_path: str, rank: int, world: int, lr: float, clip: float, entropy_coef: float,
                 temperature: float = 1.0, zero_stage: int = 0, lora: dict | None = None, max_grad_norm: float = 1.0,
                 seed: int = 0, tis_cap: float | None = None, threads: int = 1):
        torch.set_num_threads(threads)
        self.args = dict(model_path=model_path, lr=lr, zero_stage=zero_stage, lora=lora, seed=seed,
                         max_grad_norm=max_grad_norm)
        self.rank, self.world, self.lora = rank, world, bool(lora)
        self.clip, self.entropy_coef, self.temperature, self.tis_cap = clip, entropy_coef, temperature, tis_cap

    def address(self) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the group (every rank at once: a rendezvous) and wrap the policy in a DeepSpeed engine."""
        deepspeed = import_deepspeed()
        a = self.args
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world), LOCAL_RANK="0")
        deepspeed.init_distributed("nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)
        model, _ = _load_policy(a["model_path"], a["seed"], a["lora"])
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=torch.optim.AdamW(params, lr=a["lr"]),
            config=build_ds_config(1, 1, a["max_grad_norm"], a["zero_stage"]))
        self.engine.train()

    @torch.inference_mode()
    def logprobs(self, batch: dict) -> torch.Tensor:
        return response_logprobs(self.engine.module, to_device(batch, self.engine.device), self.temperature)[0].cpu()

    def update(self, exp: Experience, kl_coef: float = 0.0) -> dict:
        """One clipped-surrogate step (- entropy bonus) on this rank's rows; GRPO adds kl_coef * KL(policy ||
        reference). Without old log-probs (one on-policy pass) this forward's own, detached, are the old ones.
        With `tis_cap` (INT8 rollouts) each token's loss is weighted by min(pi_old / pi_rollout, tis_cap):
        truncated importance sampling from the rollout copy's distribution to the learner's."""
        b = to_device({**exp.batch, "old": exp.old_logprobs, "adv": exp.advantages, "ref": exp.ref_logprobs},
                      self.engine.device)
        logprobs, logits = response_logprobs(self.engine, b, self.temperature)
        mask = b["response_mask"]
        old = logprobs.detach() if exp.old_logprobs is None else b["old"]
        gap = losses.masked_mean((logprobs.detach() - b["rollout_logprobs"]).abs(), mask)
        weights, capped = losses.tis_weights(old, b["rollout_logprobs"], mask, self.tis_cap) if self.tis_cap \
            else (None, torch.zeros(()))
        pg, clip_frac = losses.policy_loss(logprobs, old, b["adv"], mask, self.clip, weights)
        # without an entropy bonus (GRPO) the entropy is only logged: no backward through [B, R, V]
        ent = losses.entropy(logits if self.entropy_coef else logits.detach(), mask)
        kl = losses.kl_k3(logprobs, b["ref"], mask) if exp.ref_logprobs is not None else torch.zeros(())
        self.engine.backward(pg - self.entropy_coef * ent + kl_coef * kl)
        self.engine.step()
        stats = {"policy_loss": float(pg.detach()), "clip_frac": float(clip_frac), "entropy": float(ent.detach()),
                 "kl_loss": float(kl.detach()), "tis_capped": float(capped), "rollout_gap": float(gap)}
        if exp.ref_logprobs is not None:  # KL(policy || reference) of the policy that sampled, per sequence
            stats["kl_k1"], stats["kl"] = losses.sequence_kl(old, b["ref"], mask)
        return stats

    def weights(self, probe: list[int] | None = None) -> tuple[dict, str, list[float] | None]:
        """(what a sync carries, its checksum, the policy's log-probs of the `probe` ids)."""
        state = policy_weights(self.engine.module, self.lora)
        return state, weights_checksum(state), probe_logprobs(self.engine.module, probe) if probe else None

    def merged_state(self) -> dict:
        """The full policy's weights (a LoRA adapter merged into a copy of the base), for final/."""
        import copy
        model = copy.deepcopy(self.engine.module).merge_and_unload() if self.lora else self.engine.module
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def save(self, folder: str) -> None:
        """DeepSpeed's checkpoint of this rank (every rank at once), plus its RNG state."""
        self.engine.save_checkpoint(folder, tag="learner", client_state={"rng": rng_state()},
                                    exclude_frozen_parameters=self.lora)

    def load(self, folder: str) -> None:
        _, client = self.engine.load_checkpoint(folder, tag="learner", load_module_strict=not self.lora)
        set_rng_state(client["rng"])
