"""The RL jobs' configs: what PPO, GRPO and on-policy distillation share (RLConfig: policy, prompts,
rewards, roles, sampling, learners with SFT's optim.* and scaling.* names) and each algorithm's part. Light on purpose (pydantic, no torch): a
job checks its config before any model code loads.

    python -m jobs.ppo jobs/configs/ppo_demo.yaml [key=value ...]
    python -m jobs.grpo jobs/configs/grpo_demo.yaml [key=value ...]
    python -m jobs.distill jobs/configs/distill_demo.yaml [key=value ...]
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from app.config import Config, JobConfig, SafetySection, VLLMSection
from app.rl.sync import SamplingPlan
from app.train.config import LoraSection


class HeldoutConfig(Config):
    prompts: str                                 # JSONL or a data stage folder (its test/): never trained on
    every: int = Field(0, ge=0)                  # steps between measurements; 0: at the start and the end only
    max_samples: int = Field(64, ge=2)
    max_new_tokens: int | None = None            # default: the training max_new_tokens


class KLConfig(Config):
    init: float = 0.05
    target: float | None = None   # None: fixed coefficient; else adaptive towards this KL
    horizon: int = 10000


class RLSafety(SafetySection):
    """An unsafe sample (app.safety: a sensitive word, a PII leak, toxicity >= threshold by `scorer`): its rollout
    actor samples that prompt again, up to `max_resamples` times, and returns the first safe answer (seed 000
    §3.3: rejection sampling of high-risk replies); one still unsafe loses `penalty` from its reward and, with
    `unsafe: reject`, is dropped from the update, so the policy never trains on its tokens."""
    max_resamples: int = Field(0, ge=0)
    penalty: float = 1.0
    unsafe: Literal["penalize", "reject"] = "penalize"


class RLOptim(Config):
    """The learners' optimizer (torch AdamW under DeepSpeed): SFT's optim.* names."""
    lr: float = 1e-5
    grad_clip: float = 1.0


class RLScaling(Config):
    """The learner group: SFT's scaling.* names."""
    learners: int = Field(1, ge=1)       # DeepSpeed ranks of the learner group
    zero_stage: int = Field(0, ge=0, le=2)


class RLConfig(JobConfig):
    """What PPO and GRPO share; each algorithm's config adds its own part."""
    algorithm: ClassVar[str]
    uses_critic: ClassVar[bool]
    needs_reward: ClassVar[bool] = True  # distillation learns from its teacher; a reward only measures
    policy: str = "runs/pipeline-demo/sft/final"
    reward_model: str | None = "runs/reward-demo/final"
    # module:function(prompts, responses[, references]) -> list[float], or {name: weight, ...}; added to the model
    reward_function: str | dict[str, float] | None = None
    prompts: str = "runs/pipeline-demo/data_prompts/train"
    steps: int = Field(8, ge=1)
    rollout_actors: int = Field(2, ge=1)
    prompts_per_actor: int = Field(4, ge=1)
    group_size: int = Field(1, ge=1)     # samples per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    epochs: int = Field(4, ge=1)         # K passes over the step's minibatches
    optim: RLOptim = RLOptim()
    clip: float = 0.2
    entropy_coef: float = 0.01
    kl: KLConfig = KLConfig()            # PPO: the penalty in the reward; GRPO: the KL term in the loss
    safety: RLSafety = RLSafety()        # seed 000 §3.3: unsafe samples resampled, penalised or rejected
    lora: LoraSection | None = None      # LoRA policy: only the adapter trains and travels at each sync
    scaling: RLScaling = RLScaling()
    overlap: bool = False                # sample step t+1 while the learners train on step t
    max_restarts: int = Field(3, ge=0)   # per rollout actor
    checkpoint_every: int = Field(1, ge=0)  # steps; 0: never
    resume: bool = True
    wandb: bool = True                   # offline unless WANDB_MODE says otherwise
    tensorboard: bool = False
    rollout_engine: Literal["auto", "hf", "vllm"] = "auto"  # auto: vLLM wherever it is installed (CPU too)
    vllm: VLLMSection = VLLMSection()    # the rollout engines' KV cache and context
    # int8 (hf engine): sample from an INT8 weight-only copy of the policy, re-quantized at each sync;
    # bfloat16 (vllm engine): the engine computes in bf16. Both: the learners correct for the cheaper sampler
    # with truncated importance sampling (tis_cap)
    rollout_precision: Literal["float32", "bfloat16", "int8"] = "float32"
    tis_cap: float | None = Field(None, gt=1)  # default: 2 with int8/bf16 rollouts, off (ratio 1) with float32
    # the largest mean |log-prob gap| per token between a rollout engine and the learner on the probe after a
    # sync; past it the sync did not take effect and the step fails. Default: 1e-3 float32, 0.25 bf16/int8
    # (the sampler's own rounding: SmolLM2's INT8 copy is 0.12 per token off the float32 learner with the
    # same weights; so in low precision the check catches a load that did nothing or part of its job on a
    # policy that has moved, and a one-step-stale engine only in float32)
    sync_check_tolerance: float | None = Field(None, gt=0)
    gpus: dict[Literal["rollout", "reference", "reward", "critic", "learner"], float] = {}  # per actor
    threads: dict[Literal["rollout", "reference", "reward", "critic", "learner"], int] = {}  # torch threads; 1
    cpus_per_actor: float = 0.3
    # reference, reward and critic in one actor process (ScorersActor): one start and one bundle instead of
    # three, their calls one after another; on CPU, or to share one GPU among them
    colocate: bool = False
    sync_timeout_s: float = 300
    heldout: HeldoutConfig | None = None  # prompts never trained on, scored at the start, every N steps, the end

    @model_validator(mode="after")
    def _rows_for_every_learner(self):
        if self.prompts_per_actor < self.scaling.learners:
            raise ValueError(f"prompts_per_actor ({self.prompts_per_actor}) must be >= scaling.learners "
                             f"({self.scaling.learners}): every learner rank trains on rows of each batch")
        if self.engine() == "vllm" and self.rollout_precision == "int8":
            raise ValueError("rollout_precision int8 is for the hf rollout engine; with rollout_engine vllm use "
                             "float32 or bfloat16")
        if self.engine() == "hf" and self.rollout_precision == "bfloat16":
            raise ValueError("rollout_precision bfloat16 is for the vllm rollout engine (rollout_engine: vllm; "
                             "it is not installed here, or rollout_engine says hf)")
        return self

    def reference(self) -> str:
        """The model the reference role loads: the starting policy (the KL anchor of PPO and GRPO)."""
        return self.policy

    def sampling_plan(self) -> SamplingPlan:
        return SamplingPlan(self.rollout_actors, self.prompts_per_actor, self.group_size, self.max_new_tokens,
                            self.temperature, self.top_p, self.seed, self.max_restarts, self.sync_timeout_s,
                            self.safety.model_dump() if self.safety.max_resamples else None)

    def tis(self) -> float | None:
        """The truncated importance sampling cap the learners apply, or None (no correction)."""
        return self.tis_cap if self.tis_cap is not None else None if self.rollout_precision == "float32" else 2.0

    def sync_tolerance(self) -> float:
        if self.sync_check_tolerance is not None:
            return self.sync_check_tolerance
        return 1e-3 if self.rollout_precision == "float32" else 0.25

    def reward_functions(self) -> dict[str, float]:
        f = self.reward_function
        return {} if f is None else {f: 1.0} if isinstance(f, str) else dict(f)

    def engine(self) -> str:
        from app.vllm_engine import choose
        return choose(self.rollout_engine, self.policy, "rollout_engine")


class PPOConfig(RLConfig):
    algorithm = "ppo"
    uses_critic = True
    critic_init: str | None = None       # default: the reward model, else the policy
    critic_lr: float = 1e-5
    critic_top_layers: int | None = None  # train only the critic's last N layers + head (None: all)
    value_clip: float = 0.2
    value_coef: float = Field(0.5, gt=0)  # the critic's loss weight (seed 000: c1 = 0.5); the critic has its own
                                          # optimizer, so with Adam it acts mainly through critic grad clipping
    gamma: float = 1.0
    lam: float = 0.95


class GRPOConfig(RLConfig):
    algorithm = "grpo"
    uses_critic = False
    reward_model: str | None = None
    reward_function: str | dict[str, float] | None = "app.rl.rewards:gsm8k"
    prompts: str = "runs/pipeline-demo/data_math/train"
    group_size: int = Field(4, ge=2)
    epochs: int = Field(1, ge=1)          # DeepSeekMath's GRPO: one update per batch (mu = 1)
    entropy_coef: float = 0.0
    kl: KLConfig = KLConfig(init=0.04)    # the coefficient of the KL term in the loss

    @model_validator(mode="after")
    def _whole_groups(self):
        if self.rollout_actors * self.prompts_per_actor * self.group_size < 2:
            raise ValueError("a GRPO step needs at least one group of 2 samples")
        return self


class OnPolicyDistillConfig(RLConfig):
    """On-policy distillation (app/rl/distill.py): the student (`policy`) samples, the teacher in the reference
    role scores each sampled token, and the per-token reverse KL log pi_student - log pi_teacher is the
    negative advantage. A reward, when set, is only measured (training batches and held-out prompts)."""
    algorithm = "distill"
    uses_critic = False
    needs_reward = False
    teacher: str = "runs/pipeline-demo/sft/final"
    policy: str = "runs/compress-demo/distill/final"
    reward_model: str | None = None
    reward_function: str | dict[str, float] | None = None
    prompts: str = "runs/pipeline-demo/data_math/train"
    temperature: float = 1.0              # the student samples, and both score, at this temperature
    epochs: int = Field(1, ge=1)          # one on-policy update per batch
    entropy_coef: float = 0.0

    def reference(self) -> str:
        return self.teacher


class RejectionConfig(JobConfig):
    """jobs.rejection_sample (app/rl/rejection.py): best-of-k answers of a policy as SFT records."""
    policy: str = "runs/pipeline-demo/sft/final"
    prompts: str = "runs/pipeline-demo/data_prompts/train"
    reward_model: str | None = None
    reward_function: str | dict[str, float] | None = None
    k: int = Field(4, ge=2)                 # answers per prompt
    temperature: float = Field(1.0, gt=0)
    top_p: float = 1.0
    max_new_tokens: int = 96
    min_reward: float | None = None         # a best answer below it gives no record
    safety: SafetySection = SafetySection()  # app/safety.py: an unsafe answer is never kept
    limit: int | None = None                # the first N prompts only
    batch_size: int = Field(8, ge=1)        # prompts per rollout call
    rollout_workers: int = Field(1, ge=1)
    cpus_per_actor: float = 0.3             # Ray's CPU share per actor (threads: 1 each), as RL's

    @model_validator(mode="after")
    def has_reward(self):
        if not (self.reward_model or self.reward_function):
            raise ValueError("set reward_model (a jobs.reward output) and/or reward_function (module:function)")
        return self

    reward_functions = RLConfig.reward_functions
