"""The PPO roles as Ray actors: Rollout (sampling), Reference (frozen policy), Reward (reward model or a
function, plus the safety penalty), Critic (values, initialised from the reward model) and Learner (the
policy update). Each is a thin shell over app.rl.rollout and app.rl.losses.

Weight sync is versioned and checked: the learner publishes (version, state, sha256); a rollout actor
verifies the checksum before loading and refuses to sample for any version but the one the controller
expects, so a sync that never arrived fails loudly instead of sampling the old policy.
"""
from __future__ import annotations

import ray
import torch

from app.rl import losses
from app.rl.rollout import response_logprobs, sample, token_values, weights_checksum


class StaleWeights(RuntimeError):
    """A rollout actor was asked to sample for a policy version it does not hold."""


def _load_policy(path: str, seed: int):
    from app.models import load_policy
    torch.manual_seed(seed)
    return load_policy(path)


@ray.remote
class RolloutActor:
    def __init__(self, model_path: str, seed: int = 0, threads: int = 1):
        torch.set_num_threads(threads)
        self.model, self.tokenizer = _load_policy(model_path, seed)
        self.eos = sorted({self.tokenizer.eos_token_id})
        self.version, self.checksum = 0, weights_checksum(self.model.state_dict())

    def load_weights(self, version: int, state: dict, checksum: str) -> dict:
        got = weights_checksum(state)
        if got != checksum:
            raise RuntimeError(f"policy v{version}: checksum mismatch ({got[:12]} != {checksum[:12]})")
        self.model.load_state_dict(state, strict=True)
        self.version, self.checksum = version, got
        return self.status()

    def status(self) -> dict:
        return {"version": self.version, "checksum": self.checksum}

    def generate(self, prompts: list[list[int]], expected_version: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int) -> dict:
        if self.version != expected_version:
            raise StaleWeights(f"holds policy v{self.version}, asked to sample v{expected_version}")
        batch = sample(self.model, prompts, self.tokenizer.pad_token_id, self.eos, max_new_tokens, temperature,
                       top_p, seed)
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
        return response_logprobs(self.model, batch, self.temperature)[0]


@ray.remote
class RewardActor:
    """score = reward model (or a `module:function(prompts, responses) -> list[float]`) - penalty on a
    sensitive-word hit or a toxicity score >= the threshold."""

    def __init__(self, reward_model: str | None, function: str | None, penalty: float, toxicity_threshold: float):
        from app.config import load_callable
        from app.data.pii import SensitiveWords
        from app.rl.reward import RewardModel
        self.model = RewardModel(reward_model) if reward_model else None
        self.function = load_callable(function) if function else None
        self.words = SensitiveWords.from_file()
        self.penalty, self.threshold = penalty, toxicity_threshold

    def score(self, prompts: list, responses: list[str]) -> dict:
        from app.eval.safety import toxicity
        raw = self.model.score(prompts, responses) if self.model else list(self.function(prompts, responses))
        unsafe = [bool(self.words.find(r)) or toxicity(r) >= self.threshold for r in responses]
        return {"reward": [r - self.penalty * u for r, u in zip(raw, unsafe)], "raw": raw, "unsafe": unsafe}


def _step(opt, params, loss: torch.Tensor, max_grad_norm: float) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    opt.zero_grad()


@ray.remote
class CriticActor:
    def __init__(self, init_path: str, lr: float, clip: float, max_grad_norm: float = 1.0, threads: int = 1):
        from transformers import AutoModelForSequenceClassification
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.model = AutoModelForSequenceClassification.from_pretrained(init_path, num_labels=1,
                                                                        ignore_mismatched_sizes=True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.clip, self.max_grad_norm = clip, max_grad_norm

    @torch.inference_mode()
    def values(self, batch: dict) -> torch.Tensor:
        return token_values(self.model, batch)

    def update(self, batch: dict, returns: torch.Tensor, old_values: torch.Tensor) -> float:
        loss = losses.value_loss(token_values(self.model, batch), old_values, returns, batch["response_mask"],
                                 self.clip)
        _step(self.opt, self.params, loss, self.max_grad_norm)
        return float(loss.detach())

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


@ray.remote
class LearnerActor:
    def __init__(self, model_path: str, lr: float, clip: float, entropy_coef: float, temperature: float = 1.0,
                 max_grad_norm: float = 1.0, seed: int = 0, threads: int = 1):
        torch.set_num_threads(threads)
        self.temperature = temperature
        self.model, _ = _load_policy(model_path, seed)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.clip, self.entropy_coef, self.max_grad_norm = clip, entropy_coef, max_grad_norm

    @torch.inference_mode()
    def logprobs(self, batch: dict) -> torch.Tensor:
        return response_logprobs(self.model, batch, self.temperature)[0]

    def update(self, batch: dict, old_logprobs: torch.Tensor, advantages: torch.Tensor) -> dict:
        logprobs, logits = response_logprobs(self.model, batch, self.temperature)
        mask = batch["response_mask"]
        pg, clip_frac = losses.policy_loss(logprobs, old_logprobs, advantages, mask, self.clip)
        ent = losses.entropy(logits, mask)
        _step(self.opt, self.params, pg - self.entropy_coef * ent, self.max_grad_norm)
        return {"policy_loss": float(pg.detach()), "clip_frac": float(clip_frac), "entropy": float(ent.detach())}

    def weights(self) -> tuple[dict, str]:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return state, weights_checksum(state)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
