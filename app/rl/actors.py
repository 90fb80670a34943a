"""The PPO roles as Ray actors: Rollout (sampling), Reference (frozen policy), Reward (reward model or a
function, plus the safety penalty), Critic (values, initialised from the reward model) and Learner (one rank
of the DeepSpeed group that updates the policy). Each is a thin shell over app.rl.rollout and app.rl.losses.

Weight sync is versioned and checked: the learner publishes (version, state, sha256) - the whole policy, or
only the LoRA adapter when the policy is LoRA; a rollout actor verifies the checksum before loading and
refuses to sample for any version but the one the controller expects, so a sync that never arrived fails
loudly instead of sampling the old policy. A restarted rollout actor comes back at version 0 and is
refused until the controller reloads the current version into it.
"""
from __future__ import annotations

import os
import socket

import ray
import torch

from app.rl import losses, rewards
from app.rl.experience import Experience
from app.rl.rollout import response_logprobs, sample, to_device, token_values, weights_checksum
from app.rl.sync import StaleWeights
from app.config import load_callable
from app.data.pii import SensitiveWords
from app import safety
from app.models import load_policy
from app.models import load_tokenizer
from app.rl.rollout import sample_vllm
from app.rl.rollout import vllm_engine
from app.train.checkpoints import rng_state
from app.train.checkpoints import set_rng_state
from app.train.deepspeed import build_ds_config, import_deepspeed
from app.train.model import peft_config
from app.train.reward import RewardModel
from app.train.reward import freeze_below


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


def load_policy_weights(model, state: dict, lora: bool) -> None:
    if lora:
        from peft import set_peft_model_state_dict
        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise RuntimeError(f"adapter keys not in the policy: {result.unexpected_keys[:3]}")
    else:
        model.load_state_dict(state, strict=True)


@ray.remote
class RolloutActor:
    """Samples with HF `generate` (CPU, or the actor's GPU) or a vLLM engine (`engine="vllm"`, GPU)."""

    def __init__(self, model_path: str, seed: int = 0, lora: dict | None = None, engine: str = "hf",
                 threads: int = 1):
        torch.set_num_threads(threads)
        self.lora, self.llm = bool(lora), None
        if engine == "vllm":
            self.llm, self.tokenizer = vllm_engine(model_path, seed), load_tokenizer(model_path)
            self.checksum = "initial"
        else:
            self.model, self.tokenizer = _load_policy(model_path, seed, lora)
            self.checksum = weights_checksum(policy_weights(self.model, self.lora))
        self.eos = sorted({self.tokenizer.eos_token_id})
        self.version = 0

    def load_weights(self, version: int, state: dict, checksum: str) -> dict:
        got = weights_checksum(state)
        if got != checksum:
            raise RuntimeError(f"policy v{version}: checksum mismatch ({got[:12]} != {checksum[:12]})")
        if self.llm is not None:
            self.llm.collective_rpc("load_policy_state", args=(state,))
            self.llm.reset_prefix_cache()  # cached KV of the old weights must not be reused
        else:
            load_policy_weights(self.model, state, self.lora)
        self.version, self.checksum = version, got
        return self.status()

    def status(self) -> dict:
        return {"version": self.version, "checksum": self.checksum}

    def generate(self, prompts: list[list[int]], expected_version: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int) -> dict:
        if self.version != expected_version:
            raise StaleWeights(f"holds policy v{self.version}, asked to sample v{expected_version}")
        if self.llm is not None:
            batch = sample_vllm(self.llm, prompts, self.tokenizer.pad_token_id, self.eos, max_new_tokens,
                                temperature, top_p, seed)
        else:
            batch = to_device(sample(self.model, prompts, self.tokenizer.pad_token_id, self.eos, max_new_tokens,
                                     temperature, top_p, seed), "cpu")
        batch["version"] = self.version
        return batch


@ray.remote
class ReferenceActor:
    def __init__(self, model_path: str, temperature: float = 1.0, threads: int = 1):
        torch.set_num_threads(threads)
        self.model, _ = _load_policy(model_path, 0)
        self.temperature = temperature

    @torch.inference_mode()
    def logprobs(self, batch: dict) -> torch.Tensor:
        return response_logprobs(self.model, to_device(batch, _device()), self.temperature)[0].cpu()


@ray.remote
class RewardActor:
    """score = reward model + sum of weight * function(prompts, responses[, references]) - penalty on an
    unsafe response (app.safety.verdict: a sensitive word, a PII leak, toxicity >= the threshold)."""

    def __init__(self, reward_model: str | None, functions: dict[str, float], penalty: float,
                 toxicity_threshold: float, threads: int = 1):
        torch.set_num_threads(threads)
        self.model = RewardModel(reward_model, device=str(_device())) if reward_model else None
        self.functions = [(load_callable(name), weight) for name, weight in functions.items()]
        self.words = SensitiveWords.from_file()
        self.penalty, self.threshold = penalty, toxicity_threshold

    def score(self, prompts: list, responses: list[str], references: list | None = None) -> dict:
        raw = self.model.score(prompts, responses) if self.model else [0.0] * len(responses)
        for function, weight in self.functions:
            raw = [r + weight * v for r, v in zip(raw, rewards.call(function, prompts, responses, references))]
        unsafe = [not safety.verdict(r, self.words, threshold=self.threshold)["safe"] for r in responses]
        return {"reward": [r - self.penalty * u for r, u in zip(raw, unsafe)], "raw": raw, "unsafe": unsafe}


@ray.remote
class CriticActor:
    def __init__(self, init_path: str, lr: float, clip: float, top_layers: int | None = None,
                 max_grad_norm: float = 1.0, threads: int = 1):
        from transformers import AutoModelForSequenceClassification
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            init_path, num_labels=1, ignore_mismatched_sizes=True, use_safetensors=True).to(_device())
        freeze_below(self.model, top_layers)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.clip, self.max_grad_norm = clip, max_grad_norm

    @torch.inference_mode()
    def values(self, batch: dict) -> torch.Tensor:
        return token_values(self.model, to_device(batch, _device())).cpu()

    def update(self, batch: dict, returns: torch.Tensor, old_values: torch.Tensor) -> float:
        b = to_device({**batch, "returns": returns, "old_values": old_values}, _device())
        loss = losses.value_loss(token_values(self.model, b), b["old_values"], b["returns"], b["response_mask"],
                                 self.clip)
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


@ray.remote
class LearnerActor:
    """One rank of the learner group: the policy (full or LoRA) under DeepSpeed ZeRO 0-2 across the group's
    actors (gloo on CPU, NCCL on GPU). The controller gives each rank its rows of every minibatch; DeepSpeed
    averages the gradients, clips and steps. Rank 0 answers log-prob passes and publishes the weights."""

    def __init__(self, model_path: str, rank: int, world: int, lr: float, clip: float, entropy_coef: float,
                 temperature: float = 1.0, zero_stage: int = 0, lora: dict | None = None, max_grad_norm: float = 1.0,
                 seed: int = 0, threads: int = 1):
        torch.set_num_threads(threads)
        self.args = dict(model_path=model_path, lr=lr, zero_stage=zero_stage, lora=lora, seed=seed,
                         max_grad_norm=max_grad_norm)
        self.rank, self.world, self.lora = rank, world, bool(lora)
        self.clip, self.entropy_coef, self.temperature = clip, entropy_coef, temperature

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
        reference). Without old log-probs (one on-policy pass) this forward's own, detached, are the old ones."""
        b = to_device({**exp.batch, "old": exp.old_logprobs, "adv": exp.advantages, "ref": exp.ref_logprobs},
                      self.engine.device)
        logprobs, logits = response_logprobs(self.engine, b, self.temperature)
        mask = b["response_mask"]
        old = logprobs.detach() if exp.old_logprobs is None else b["old"]
        gap = losses.masked_mean((logprobs.detach() - b["rollout_logprobs"]).abs(), mask)
        pg, clip_frac = losses.policy_loss(logprobs, old, b["adv"], mask, self.clip)
        ent = losses.entropy(logits, mask)
        kl = losses.kl_k3(logprobs, b["ref"], mask) if exp.ref_logprobs is not None else torch.zeros(())
        self.engine.backward(pg - self.entropy_coef * ent + kl_coef * kl)
        self.engine.step()
        return {"policy_loss": float(pg.detach()), "clip_frac": float(clip_frac), "entropy": float(ent.detach()),
                "kl_loss": float(kl.detach()), "rollout_gap": float(gap)}

    def weights(self) -> tuple[dict, str]:
        state = policy_weights(self.engine.module, self.lora)
        return state, weights_checksum(state)

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
