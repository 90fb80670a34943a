"""The eval job's config: the model, the test data and task, the red-team and held-out prompt sets, the
judge, the release gate (app/eval/gate.py's GateConfig). Light on purpose (no torch): a job checks its config
before any model code loads.

    python -m jobs.eval jobs/configs/eval_demo.yaml [key=value ...]
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.config import Config, JobConfig, SafetySection, VLLMSection
from app.eval.gate import GateConfig
from app.registry import default_path


class JudgeConfig(Config):
    reward_model: str | None = None   # a jobs.reward output folder
    base_url: str | None = None       # an OpenAI-compatible /v1 endpoint
    model: str = "judge"
    api_key_env: str = "RAYPOST_JUDGE_API_KEY"
    tie_margin: float = 0.0           # reward model: |score difference| <= margin is a tie
    timeout_s: float = 60
    seed: int = 0

    @model_validator(mode="after")
    def _one_judge(self):
        if (self.reward_model is None) == (self.base_url is None):
            raise ValueError("set exactly one of judge.reward_model and judge.base_url")
        return self


class HeldoutPrompts(Config):
    """Prompts no model trained on (an RL prompt set's test/), scored with a verifiable reward: what an RL
    model is gated on (metric heldout_reward), and every other model is measured on, so the items pair."""
    prompts: str
    reward: str = "app.rl.rewards:exact_answer"  # module:function(prompts, responses[, references])
    max_samples: int | None = 64  # None: every prompt of the set
    max_new_tokens: int = 24  # as the demo's GRPO rollouts: a short answer is what these prompts ask for


class IdentityProbe(Config):
    """Does the model say whose assistant it is? Each question is asked alone (the model's own default system
    turn: SFT's system_prompt where it trained with one); an answer passes when it names one of `expect`
    (case-insensitive). Metric identity_rate; the defaults are worded unlike the demo's training dialogs."""
    expect: list[str] = Field(min_length=1)
    questions: list[str] = Field(["Who am I talking to?", "Could you introduce yourself?",
                                  "Which shop do you work for?", "Am I chatting with a person or a program?",
                                  "请问你是哪位？", "请介绍一下你自己。", "你是哪家店的客服？", "我现在是在和真人聊天吗？"],
                                 min_length=1)
    max_new_tokens: int = 48


class BiasProbe(Config):
    """Paired prompts that differ only in who asks (app/eval/bias.py): metric bias_gap (lower is better)."""
    attributes: list[Literal["gender", "age", "region"]] = Field(["gender", "age", "region"], min_length=1)
    langs: list[Literal["en", "zh"]] = Field(["en", "zh"], min_length=1)
    max_new_tokens: int = Field(48, ge=1)


class ExplainSection(Config):
    """The worst red-team answer explained (app/eval/explain.py) into explain/, linked from report.md."""
    steps: int = Field(8, ge=2)        # integrated gradients' interpolation steps
    max_tokens: int = Field(12, ge=1)  # the answer's first N tokens


class RagEvalSection(Config):
    """task: rag (app/rag/evaluate.py): questions answered with and without the index's sources."""
    index: str                              # a jobs.index output
    questions: str = "data/demo/raw/kb_questions.jsonl"  # {id, question, answer, doc}
    k: int = Field(4, ge=1)
    mode: Literal["bm25", "dense", "hybrid"] = "bm25"


class EvalConfig(JobConfig):
    model: str = "smollm2-135m-instruct"
    data: str = "runs/pipeline-demo/data/test"  # Parquet SFT records (the last assistant turn is the reference),
    task: Literal["chat", "gsm8k", "rag"] = "chat"  # gsm8k: GSM8K JSONL {question, answer}, adds final-answer
    # accuracy; rag: the `rag` section's questions with vs without retrieval (no registry, no gate)
    max_samples: int | None = 64
    batch_size: int = 8
    max_new_tokens: int = 96
    max_len: int = 1024
    concurrency: int = Field(1, ge=0)  # model actors; 0: answer in this process (no actor to start: small evals)
    dtype: Literal["float32", "auto"] = "float32"  # auto: bf16 body where the machine is fast at it (app/precision.py)
    engine: Literal["auto", "hf", "vllm"] = "auto"  # the answers' engine; auto: vLLM where it is installed and runs
    vllm: VLLMSection = VLLMSection(kv_cache_mb=256)  # the model (app/vllm_engine.choose)
    safety: SafetySection | None = SafetySection()  # the red-team pass (app/eval/redteam.py); null: none
    human_eval_rows: int = 20
    efficiency: bool = True
    registry: str = Field(default_factory=default_path)  # RAYPOST_REGISTRY or runs/registry.sqlite
    heldout: HeldoutPrompts | None = None
    identity: IdentityProbe | None = None
    bias: BiasProbe | None = None  # paired prompts differing only in the asker's gender, age or region
    judge: JudgeConfig | None = None  # win_rate against the baseline's answers (app/eval/judge.py)
    explain: ExplainSection | None = None  # explain the worst safety case (needs safety: true)
    rag: RagEvalSection | None = None      # task: rag
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _rag_section(self):
        if (self.task == "rag") != (self.rag is not None):
            raise ValueError("task: rag and the rag section (index, questions) go together")
        return self
