"""The offline trainers' configs: the sections app/train/loop.py reads (optim, train, eval, checkpoint,
scaling), shared by SFT (app/train/sft.py), DPO (app/train/dpo.py) and the reward model (app/train/reward.py),
and each trainer's config. Light on purpose (pydantic only): a job checks its config before it imports torch,
so a bad key fails in a fraction of a second.

    python -m jobs.sft jobs/configs/sft_demo.yaml [key=value ...]
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from app.config import Config, JobConfig


class DataSection(Config):
    path: str = "runs/pipeline-demo/data"  # the data stage's output dir (train/ and val/ Parquet inside)
    max_len: int = 512  # tokens per sample; longer chats lose their oldest turns (app/chat.py)
    packing: bool = False  # pack samples into max_len rows; position ids reset, no cross-sample attention
    replay_path: str | None = None  # general-domain SFT records mixed in against forgetting
    replay_share: float = 0.0  # share of replay records in the training set
    max_train_samples: int | None = None
    max_val_samples: int | None = 256


class LoraSection(Config):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = 0.1
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class PromptTuningSection(Config):
    num_virtual_tokens: int = 20


class OptimSection(Config):
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 10
    grad_clip: float = 1.0
    grad_accum: int = 1


class TrainSection(Config):
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; None = epochs over the data
    micro_batch_size: int = 4  # per worker
    # fp16 only on GPU (dynamic loss scaling); auto: bf16 where this machine is fast at it (app/precision.py)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    gradient_checkpointing: bool = False
    dropout: float | None = None  # overrides the model's attention dropout when set
    log_every: int = 5


class EvalSection(Config):
    every: int = 20  # optimizer steps
    patience: int | None = 3  # evaluations without improvement before stopping; None = never stop early


class CheckpointSection(Config):
    every: int = 20
    keep: int = 2  # Ray keeps the K best by validation loss (the last K without a val set), and the latest


class ScalingSection(Config):
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1  # also the worker's torch thread count (Ray sets OMP_NUM_THREADS from it)
    # auto: 0 on one worker or for an adapter method (LoRA, IA3, prompt tuning: their optimizer states are a few
    # MB, and ZeRO-2's partitioned gradient buckets cost SFT throughput on one CPU worker for nothing:
    # benchmarks/train_throughput.py), 2 for full fine-tuning on several workers or with offload (which needs a
    # stage). The run records the stage used.
    zero_stage: int | Literal["auto"] = "auto"
    offload: bool = False  # ZeRO optimizer (and, at stage 3, parameter) offload to CPU
    max_failures: int = 2  # worker group restarts from the last checkpoint before the run fails

    @field_validator("zero_stage")
    @classmethod
    def known_stage(cls, v):
        if v not in (0, 1, 2, 3, "auto"):
            raise ValueError("must be 0, 1, 2, 3 or auto")
        return v


class TrainerConfig(JobConfig):
    """What every offline trainer shares: the starting model and the loop's sections."""
    model: str = "smollm2-135m-instruct"
    trust_remote_code: bool = False
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    scaling: ScalingSection = ScalingSection()
    wandb: bool = True  # offline unless WANDB_MODE says otherwise
    tensorboard: bool = True

    @model_validator(mode="after")
    def choose_zero_stage(self):
        if self.scaling.zero_stage == "auto":
            full = getattr(self, "method", "full") == "full"
            self.scaling.zero_stage = 2 if self.scaling.offload or (full and self.scaling.num_workers > 1) else 0
        return self


class DistillSection(Config):
    """Logit distillation (seed 002): the loss mixes forward KL to a frozen teacher's token distribution at a
    temperature (times T^2, Hinton et al.) with the usual next-token loss; both on assistant tokens."""
    teacher: str | None = None  # a model dir or alias; None: plain SFT
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the KL term; 1 - alpha on the next-token loss


class SFTEvalSection(EvalSection):
    generate: int = 0  # val rows each worker answers (greedy) at every checkpoint: val_rougeL, val_bleu
    max_new_tokens: int = 64


class SFTConfig(TrainerConfig):
    # chat: loss on assistant tokens of chat-rendered dialogs; causal_lm: continued pretraining on raw
    # documents (the data stage's `text` records), loss on every token, each document ending in EOS
    objective: Literal["chat", "causal_lm"] = "chat"
    eval: SFTEvalSection = SFTEvalSection()
    distill: DistillSection = DistillSection()
    init_from: str | None = None  # an earlier run's output dir (its final/): two-stage fine-tuning
    # The assistant's system turn wherever a conversation brings none: in training, and (saved in the exported
    # tokenizer's chat template: app.chat.with_system_prompt) in RL, evaluation and serving of this model
    system_prompt: str | None = None
    # ia3: learned scales on the modules peft lists for the model type
    method: Literal["full", "lora", "qlora", "prompt_tuning", "ia3"] = "lora"
    lora: LoraSection = LoraSection()
    prompt_tuning: PromptTuningSection = PromptTuningSection()
    data: DataSection = DataSection()

    @model_validator(mode="after")
    def consistent(self):
        if self.method == "prompt_tuning" and self.data.packing:
            raise ValueError("packing cannot be combined with prompt_tuning (virtual tokens break packed rows)")
        if not 0 <= self.data.replay_share < 1:
            raise ValueError("data.replay_share must be in [0, 1)")
        if self.objective == "causal_lm" and (self.eval.generate or self.method == "prompt_tuning"):
            raise ValueError("objective=causal_lm trains on raw documents: no eval.generate (no replies to "
                             "answer) and no prompt_tuning")
        if self.distill.teacher and (self.data.packing or self.method == "prompt_tuning"):
            raise ValueError("distill.teacher needs unpacked rows and no prompt_tuning (teacher and student must "
                             "see the same positions)")
        if self.eval.generate and self.scaling.zero_stage == 3:
            raise ValueError("eval.generate needs scaling.zero_stage < 3 (ZeRO-3 workers must run the same "
                             "forwards; greedy answers end at different lengths)")
        return self


class PairData(Config):
    """The pairs a trainer reads: a data stage output (input.kind=preference), {prompt, chosen, rejected} JSONL,
    or HH-RLHF (.jsonl.gz)."""
    path: str = "runs/pipeline-demo/data_prefs/train"
    val_share: float = 0.1   # of a file's pairs; a data stage output's train/ validates on its val/
    max_len: int = 512
    max_train_pairs: int | None = None
    max_val_pairs: int | None = 64


class DPOSection(Config):
    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    reference: str | None = None   # the frozen reference model; default: the model training starts from


class DPOConfig(TrainerConfig):
    model: str = "runs/pipeline-demo/sft/final"
    init_from: str | None = None
    method: Literal["full", "lora", "qlora"] = "lora"
    lora: LoraSection = LoraSection(dropout=0.0)
    data: PairData = PairData()
    dpo: DPOSection = DPOSection()
    optim: OptimSection = OptimSection(lr=5e-5)


class RewardConfig(TrainerConfig):
    model: str = "smollm2-135m-instruct"   # base or SFT model (a spec or runs/sft-<name>/final)
    data: PairData = PairData(max_len=256, max_val_pairs=None)
    heads: dict[str, float] = {"preference": 1.0}
    train_top_layers: int | None = None   # train only the last N transformer layers + the heads (None: all)
    optim: OptimSection = OptimSection(lr=2e-5, schedule="constant", warmup_steps=0)


class SchedulerSection(Config):
    type: Literal["asha", "fifo"] = "asha"   # fifo: every trial runs to the end
    grace_period: int = Field(4, ge=1)      # optimizer steps every trial gets before it can be stopped
    reduction_factor: int = Field(2, ge=2)


class SweepConfig(JobConfig):
    base: str = "jobs/configs/sft_demo.yaml"   # the SFT config every trial starts from
    overrides: list[str] = []                  # key=value applied to the base for every trial
    space: dict[str, Any] = {"lora.r": [8, 16], "optim.lr": "loguniform(1e-4, 1e-3)"}
    search: Literal["grid", "random", "optuna"] = "random"
    num_samples: int = Field(4, ge=1)          # trials (grid: repeats of the grid)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    scheduler: SchedulerSection = SchedulerSection()
    max_concurrent_trials: int = Field(2, ge=1)
    trial_cpus: float = Field(0.1, gt=0)       # the trial process itself; its SFT workers take scaling.*
    resume: bool = True
